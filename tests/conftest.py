"""Shared pytest fixtures: the live test services (scripts/services.env), the CLI in a subprocess, Chromium.

Fixtures
- ``services`` (session): the SLURM / Prefect / MLflow services started by ``scripts/services.sh up``.
  Attributes ``env`` (dict of the exported variables), ``mlflow_uri``, ``prefect_api_url``,
  ``slurm_conf``, ``root``; ``subprocess_env(**extra)`` gives ``os.environ`` + those variables for a
  child process. A test that uses it is marked ``services`` automatically. When the services are
  down the test is skipped, or fails when ``REQUIRE_SERVICES=1`` (set by scripts/test.sh, so CI
  never silently skips).
- ``services_env`` (function): like ``services`` but also puts the variables into ``os.environ``
  for the test (monkeypatched, restored afterwards).
- ``run_cli``: ``run_cli(*args, cwd=..., env=..., timeout=...)`` runs ``python -m pipeline ARGS`` in a
  subprocess and returns the ``CompletedProcess`` (text stdout/stderr).
- ``make_twin`` (session): ``make_twin(dataset="ade20k", *, num_images=12, num_classes=5,
  image_size=(48, 64), seed=0) -> Path``, a synthetic twin written in the official download layout by
  ``maskformer_core.data.synth.synthesize`` and prepared by ``maskformer_core.data.prepare.prepare``; the
  path is ``<tmp>/data/<dataset>``, so ``.parent`` is a data root (the download layout is in
  ``<tmp>/raw/<dataset>``). Built once per session and set of
  arguments; tests only read it (copy it before changing anything).
- ``twin_root`` (session): ``make_twin("ade20k")``, the prepared 5-class ADE20K twin (12 images of 48x64)
  the training tests share.
- ``chromium``: path of the headless Chromium binary (skip / fail like ``services``); a test that uses it
  is marked ``browser`` automatically.

The suite runs one private Prefect server (``_suite_prefect_server``, autouse): PREFECT_API_URL points at it
for every test and its subprocesses, so a study does not start Prefect's ephemeral server each time;
``MASKFORMER_TESTS_PREFECT=ephemeral`` turns it off.

Hypothesis runs derandomised (profile ``ci``: the examples follow from the test's code, so a CI failure
reproduces); ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples locally.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "scripts" / "services.env"

# The suite never writes into the Prefect database a user's UI shows: a private PREFECT_HOME (the
# ephemeral server's database lives there) and no API URL inherited from a sourced services.env.
# Tests of the live services get theirs from the ``services`` / ``services_env`` fixtures.
_PRIVATE_HOMES = [tempfile.mkdtemp(prefix="maskformer-tests-prefect-"), tempfile.mkdtemp(prefix="maskformer-tests-mlflow-")]
atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _PRIVATE_HOMES])  # the suite leaves none behind
os.environ["PREFECT_HOME"] = _PRIVATE_HOMES[0]
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_UI_API_URL", None)
# The Prefect API of the suite: one private server (``prefect server start``, its database under the
# private PREFECT_HOME) for the whole session, launched when the session starts and exported as
# PREFECT_API_URL before the first test (``_suite_prefect_server``). Without it every study run -- each
# `pipeline study` subprocess, each in-process flow -- starts Prefect's ephemeral server, ~15 s on a loaded
# 2-core machine against ~1 s with a running server. Tests of the ephemeral path (a study killed or
# interrupted, a fresh-clone `dvc repro`) drop PREFECT_API_URL from their child's environment;
# ``services`` / ``services_env`` tests point it at the services' server instead.
_SUITE_PREFECT = None
# Likewise MLflow: runs of tests that do not choose a store (flows' study runs, cells) go to a private
# store, never the repository's mlruns/ or the user's server.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_PRIVATE_HOMES[1]}/mlflow.db"


def _required() -> bool:
    return os.environ.get("REQUIRE_SERVICES") == "1"


def _unavailable(reason: str):
    if _required():
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def parse_env_file(path: Path) -> dict[str, str]:
    """``export KEY=VALUE`` lines of a services.env file (no shell evaluation)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        key, value = line[len("export "):].split("=", 1)
        env[key.strip()] = value.strip().strip("'\"")
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (local URL from services.env)
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Services:
    """The live services of one ``scripts/services.sh up``."""

    env: dict[str, str]
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.env["SERVICES_ROOT"])

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def prefect_api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def slurm_conf(self) -> str:
        return self.env["SLURM_CONF"]

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def services() -> Services:
    if not ENV_FILE.exists():
        _unavailable(f"{ENV_FILE} not found; start the services: bash scripts/services.sh up")
    svc = Services(parse_env_file(ENV_FILE))
    problems = []
    if not _answers(svc.mlflow_uri + "/health"):
        problems.append(f"MLflow at {svc.mlflow_uri}")
    if not _answers(svc.prefect_api_url + "/health"):
        problems.append(f"Prefect at {svc.prefect_api_url}")
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        problems.append("SLURM (sinfo not installed)")
    else:
        out = subprocess.run([sinfo, "-h", "-o", "%T"], env=svc.subprocess_env(), capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0 or not any(s in out.stdout for s in ("idle", "mix", "alloc")):
            problems.append(f"SLURM ({out.stdout.strip() or out.stderr.strip()})")
    if problems:
        _unavailable("services not answering: " + ", ".join(problems) + "; run: bash scripts/services.sh up")
    return svc


def pytest_sessionstart(session):
    """Launch the suite's Prefect server (not waited for here: it comes up while the tests are collected)."""
    global _SUITE_PREFECT
    if os.environ.get("MASKFORMER_TESTS_PREFECT") == "ephemeral":  # opt out: every study on its own ephemeral server
        return
    from pipeline import services as svc

    _SUITE_PREFECT = svc.Server("prefect", Path(_PRIVATE_HOMES[0]) / "suite-server", port=svc.free_port())
    svc.launch(_SUITE_PREFECT)


def pytest_sessionfinish(session, exitstatus):
    if _SUITE_PREFECT is not None:
        from pipeline import services as svc

        svc.stop(_SUITE_PREFECT)


@pytest.fixture(scope="session", autouse=True)
def _suite_prefect_server():
    """PREFECT_API_URL = the suite's private Prefect server, healthy, for every test and its subprocesses."""
    if _SUITE_PREFECT is None:
        yield None
        return
    from pipeline import services as svc

    svc.wait(_SUITE_PREFECT)
    os.environ["PREFECT_API_URL"] = _SUITE_PREFECT.url + "/api"
    yield _SUITE_PREFECT
    os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def services_env(services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    for key, value in services.env.items():
        monkeypatch.setenv(key, value)
    return services


@pytest.fixture
def run_cli():
    def run(*args: str, cwd: str | Path = REPO, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def make_twin(tmp_path_factory: pytest.TempPathFactory):
    # The data package is imported here, not at the top: conftest is loaded by every test, most of which
    # never build a twin.
    from maskformer_core.data.prepare import prepare
    from maskformer_core.data.synth import synthesize

    built: dict[tuple, Path] = {}

    def make(dataset: str = "ade20k", *, num_images: int = 12, num_classes: int = 5,
             image_size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
        key = (dataset, num_images, num_classes, tuple(image_size), seed)
        if key not in built:
            base = tmp_path_factory.mktemp(f"twin_{dataset}")
            synthesize(dataset, base / "raw" / dataset, num_images=num_images, num_classes=num_classes,
                       image_size=tuple(image_size), seed=seed)
            prepare(dataset, base / "raw" / dataset, base / "data" / dataset, progress=False)
            built[key] = base / "data" / dataset
        return built[key]

    return make


@pytest.fixture(scope="session")
def twin_root(make_twin) -> Path:
    return make_twin("ade20k")


@pytest.fixture(scope="session")
def chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    _unavailable("headless Chromium not installed (scripts/services.sh up installs it)")


def pytest_collection_modifyitems(config, items):
    """Tests that use the live services carry the ``services`` marker, Chromium tests the ``browser`` marker
    (so ``-m 'not services and not browser'`` works)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if {"services", "services_env"} & names:
            item.add_marker(pytest.mark.services)
        if "chromium" in names:
            item.add_marker(pytest.mark.browser)
