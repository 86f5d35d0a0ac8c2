"""Security checks (issue 7): no unpickling of arbitrary objects, safe YAML, servers on 127.0.0.1 only,
no shell strings built from user values when submitting jobs.

Every "attack" here tries to create a marker file; the test asserts the file never appears.
"""
from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import services

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("pipeline", "flows", "maskformer_core")


class _Evil:
    """Unpickling this runs `touch <marker>` (the classic pickle payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cli(args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _tiny_config(path: Path, out: Path, **model) -> Path:
    raw = {"model": {"backbone": "SmokeR18", "hidden_dim": 32, "mask_dim": 32, "conv_dim": 32, "dim_feedforward": 64,
                     "nheads": 4, "num_queries": 10, "dec_layers": 1, **model},
           "data": {"dataset": "ade20k", "root": str(path.parent / "data"), "crop_size": [32, 32], "num_workers": 0},
           "solver": {"max_iter": 2, "ims_per_batch": 2},
           "run": {"output_dir": str(out), "tracking": False, "device": "cpu"}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def twin(make_twin) -> Path:
    return make_twin("ade20k", num_images=6, num_classes=4, seed=2)


# ------------------------------------------------------------------------------------ pickles

def test_malicious_checkpoint_is_refused_not_executed(tmp_path, twin):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker), "iteration": 1}, evil)
    (tmp_path / "data").symlink_to(twin)
    cfg = _tiny_config(tmp_path / "cfg.yaml", tmp_path / "run")
    proc = _cli(["evaluate", "--config", cfg, "--checkpoint", evil, "--output", tmp_path / "m.json"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(evil) in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pretrained_weights_are_refused(tmp_path, twin, suffix):
    """`model.pretrained` accepts a local detectron2 .pkl or torch file: neither may execute code."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / f"backbone{suffix}"
    with open(evil, "wb") as fh:
        pickle.dump({"model": {"stem.conv1.weight": _Evil(marker)}}, fh)
    (tmp_path / "data").symlink_to(twin)
    cfg = _tiny_config(tmp_path / "cfg.yaml", tmp_path / "run", pretrained=str(evil))
    proc = _cli(["train", "--config", cfg])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert evil.name in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_loading_code_never_unpickles_freely():
    """Every torch.load in the project passes weights_only=True; no bare pickle.load / pickle.loads."""
    offenders = []
    for where, name, node in _calls():
        if name in ("torch.load",):
            kw = {k.arg: k.value for k in node.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                offenders.append(f"{where} torch.load without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "yaml.load", "yaml.unsafe_load"):
            offenders.append(f"{where} {name}")
    assert offenders == []


# --------------------------------------------------------------------------------------- YAML

PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']"


def test_yaml_object_tag_in_params_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    text = (REPO / "params.yaml").read_text()
    text = text.replace("  retry_delay_s: 2", "  retry_delay_s: " + PAYLOAD.format(marker=marker), 1)
    (tmp_path / "params.yaml").write_text(text)
    proc = _cli(["study", "--params", "params.yaml", "--executor", "debug"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "params.yaml" in proc.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_yaml_object_tag_in_run_config_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  backbone: {PAYLOAD.format(marker=marker)}\nrun:\n  output_dir: {tmp_path / 'run'}\n")
    proc = _cli(["train", "--config", cfg])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cfg.yaml" in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ servers

def _listening() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket (IPv4 and IPv6) from /proc/net."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if width == 8:
                addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "::" if set(addr_hex) == {"0"} else addr_hex
            found.append((addr, int(port_hex, 16)))
    return found


def _bound_to_loopback(port: int) -> bool:
    addrs = {a for a, p in _listening() if p == port}
    return bool(addrs) and all(a.startswith("127.") for a in addrs)


def test_services_listen_on_loopback_only(services):
    for url in (services.mlflow_uri, services.prefect_api_url):
        port = int(re.search(r":(\d+)", url.split("//", 1)[1]).group(1))
        assert _bound_to_loopback(port), (url, [a for a in _listening() if a[1] == port])
    assert _bound_to_loopback(int(os.environ.get("MARIADB_PORT", 3307)))


@pytest.mark.slow
def test_tracking_server_started_by_the_pipeline_is_loopback_only(tmp_path):
    with services.tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}", concurrency=2) as uri:
        port = int(uri.rsplit(":", 1)[1])
        assert _bound_to_loopback(port)


def test_server_default_host_and_command_have_no_shell():
    server = services.Server("mlflow", Path("/tmp/x"), port=1234)
    assert server.host == "127.0.0.1"
    cmd = server.command()
    assert isinstance(cmd, list) and cmd[cmd.index("--host") + 1] == "127.0.0.1"


# ------------------------------------------------------------------------------ shell strings

def _sources():
    for d in SOURCE_DIRS:
        yield from sorted((REPO / d).rglob("*.py"))


def _call_name(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _calls():
    """("file:line", dotted callee name, ast.Call) for every call in the project's sources."""
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(REPO)}:{node.lineno}", _call_name(node.func), node


def test_no_shell_strings_in_pipeline_code():
    """No os.system/os.popen, no shell=True, and no subprocess call given a single command string."""
    offenders = []
    for where, name, node in _calls():
        if name in ("os.system", "os.popen", "commands.getoutput", "subprocess.getoutput",
                    "subprocess.getstatusoutput"):
            offenders.append(f"{where} {name}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                offenders.append(f"{where} shell={ast.unparse(kw.value)}")
        if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            offenders.append(f"{where} {name} with a command string")
    assert offenders == []


NASTY = "c'; touch {m}; $(touch {m}) `touch {m}` | tee {m} && echo \"x\" #SBATCH --wrap='touch {m}'"
# A newline early (SLURM job names are cut to 60 characters) makes a new line of the sbatch script.
NASTY_NEWLINE = "c'\ntouch {m}\n#SBATCH --wrap='touch {m}'"


def _cell_config(out: Path, name: str) -> dict:
    from pipeline.config import parse_config

    return parse_config({
        "model": {"backbone": "SmokeR18", "num_queries": 20},
        "data": {"dataset": "ade20k", "root": str(out / "nodata")},
        "run": {"output_dir": str(out), "run_name": name, "seed": 0, "tracking": False},
    }).model_dump(mode="json")


@pytest.mark.parametrize("kind,nasty", [
    ("local", NASTY), ("local", NASTY_NEWLINE),
    pytest.param("slurm", NASTY, marks=[pytest.mark.slow, pytest.mark.services]),
    pytest.param("slurm", NASTY_NEWLINE, marks=[pytest.mark.slow, pytest.mark.services]),
], ids=["local", "local-newline", "slurm", "slurm-newline"])
def test_cell_named_with_shell_metacharacters_does_nothing_bad(tmp_path, kind, nasty, request, monkeypatch):
    """A cell whose name and folder carry shell syntax runs as data, through submitit, with no side effects."""
    from pipeline.executor import CellExecutor
    from pipeline.params import load_params

    if kind == "slurm":
        svc = request.getfixturevalue("services")
        for key, value in svc.env.items():
            monkeypatch.setenv(key, value)
        # The paper's 8-GPU / 64 GB request does not fit the single test node (2 fake GPUs).
        for key, value in (("GPUS_PER_NODE", "1"), ("CPUS_PER_TASK", "1"), ("MEM_GB", "1"), ("TIMEOUT_MIN", "10")):
            monkeypatch.setenv(f"MASKFORMER_SLURM_{key}", value)
    marker = tmp_path / "PWNED"
    name = nasty.format(m=marker)
    out = tmp_path / "runs" / "cell; touch PWNED2 $(id)"
    monkeypatch.chdir(tmp_path)
    ex = CellExecutor(load_params(REPO / "params.yaml"), kind, cell_fn="tests.study_cells:config_cell", threads=1)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job process imports tests.study_cells
    try:
        job = ex.submit(_cell_config(out, name), log_folder=tmp_path / "logs")
        result = job.result()
    finally:
        assert not marker.exists() and not (tmp_path / "PWNED2").exists()  # even when submission fails
    assert result["val/mIoU"] == 30.0 + 20 / 10.0  # the stand-in cell ran with the config as data
    assert (out / "metrics.json").is_file()
    assert not marker.exists() and not (tmp_path / "PWNED2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "runs"]


def test_job_names_are_sanitised_for_the_scheduler():
    """Cell names reach sbatch's --job-name: only [A-Za-z0-9_.-], at most 100 characters."""
    from pipeline.executor import job_name

    assert job_name("ade20k-maskformer-R50-q100-s0") == "ade20k-maskformer-R50-q100-s0"
    assert job_name("c'\ntouch x\n#SBATCH --wrap") == "c__touch_x__SBATCH_--wrap"
    assert job_name("\n;\n") == "cell"
    assert len(job_name("a" * 500)) == 100
