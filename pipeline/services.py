"""Start, stop and health-check the MLflow tracking server and the Prefect server the pipeline uses.

Both servers run as detached child processes with a pid file and a log file under a state folder,
bound to 127.0.0.1 unless a host is configured (``--host`` / ``SERVICES_BIND_HOST``). Starting is
idempotent: a server whose pid file names a live process that answers its health URL is reused.

``ensure_tracking_server`` is what the study uses when several cells log at once: SQLite cannot
take many concurrent writers safely, so a local ``sqlite:///`` tracking URI is put behind one
``mlflow server`` (a single writer) and the cells log over HTTP instead.

Command line (used by ``scripts/services.sh`` and ``python -m pipeline services``)::

    python -m pipeline.services up|down|status [--root DIR] [--host H] [--only mlflow|prefect]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

DEFAULT_HOST = "127.0.0.1"  # never listen on other interfaces unless the user asks for it
DEFAULT_PORTS = {"mlflow": 5000, "prefect": 4200}  # the tools' own defaults
HEALTH_PATHS = {"mlflow": "/health", "prefect": "/api/health"}
# Measured on 2 cores: MLflow healthy after ~16 s, Prefect after ~20 s on a new database
# (shared INFRA notes); allow generous head-room for a loaded CI machine.
START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Server:
    """One server process: ``name`` is ``mlflow`` or ``prefect``; its files live in ``state_dir``."""

    name: str
    state_dir: Path
    host: str = DEFAULT_HOST
    port: int = 0
    backend_uri: str | None = None  # mlflow only: the backend store (default: sqlite in state_dir)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def url(self) -> str:
        """Base URL clients use (``MLFLOW_TRACKING_URI``; Prefect's API is ``url + '/api'``)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + HEALTH_PATHS[self.name]

    def command(self) -> list[str]:
        """The argv that starts the server (no shell; every value is a separate argument).

        MLflow: the backend is ``backend_uri`` (default: the repository's store, the one ``dvc repro``
        and the CLI write without a server, ``pipeline.tracking.default_tracking_uri``). Artifacts stay
        where a direct SQLite client puts them (``<db folder>/artifacts``, ``--default-artifact-root``)
        and are not proxied (``--no-serve-artifacts``), so runs logged through the server and runs
        logged straight into the file have the same artifact locations and the UI shows both.
        """
        if self.name == "mlflow":
            from pipeline.tracking import default_artifact_root, default_tracking_uri

            backend = self.backend_uri or default_tracking_uri()
            cmd = [_tool("mlflow"), "server", "--backend-store-uri", backend]
            artifacts = default_artifact_root(backend)
            if artifacts:
                cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
            else:
                cmd += ["--artifacts-destination", str(self.state_dir / "artifacts")]
            return cmd + ["--host", self.host, "--port", str(self.port), "--workers", "1"]
        if self.name == "prefect":
            return [_tool("prefect"), "server", "start", "--host", self.host, "--port", str(self.port)]
        raise ValueError(f"unknown server {self.name!r}")

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
        if self.name == "mlflow":
            # Otherwise the server forks 8 job-runner processes (~2 GB RSS; INFRA notes).
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        else:
            # The UI calls the API at PREFECT_UI_API_URL (default 127.0.0.1:4200): give it this server's port.
            env.update(PREFECT_HOME=str(self.state_dir / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       PREFECT_UI_API_URL=self.url + "/api", PREFECT_API_URL=self.url + "/api")
        return env


def _tool(name: str) -> str:
    """The console script ``name`` of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    raise UserError(f"{name} is not installed beside {sys.executable}; run scripts/install.sh")


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (local URL we built)
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (a dead child of ours is reaped first, so it reads as gone)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(server: Server, timeout: float = START_TIMEOUT_S) -> bool:
    """Start ``server`` unless it already runs; wait until healthy. Returns True when started now.

    Raises UserError when the port is held by another process or the server does not come up
    (the message names the log file).
    """
    started = launch(server)
    wait(server, timeout)
    return started


def launch(server: Server) -> bool:
    """Spawn ``server`` detached unless its pid file names a live process; do not wait. True if spawned."""
    server.state_dir.mkdir(parents=True, exist_ok=True)
    if read_pid(server.pid_file) is not None:
        return False
    if port_in_use(server.host, server.port):
        raise UserError(
            f"port {server.port} on {server.host} is already in use by another process; "
            f"stop it or choose another port for the {server.name} server")
    log = open(server.log_file, "ab")  # noqa: SIM115 (handed to the child)
    try:
        proc = subprocess.Popen(server.command(), env=server.environment(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=server.state_dir)
    finally:
        log.close()
    tmp = server.pid_file.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(server.pid_file)
    return True


def wait(server: Server, timeout: float = START_TIMEOUT_S) -> None:
    """Block until ``server`` answers its health URL; stop it and raise UserError if it does not."""
    pid = read_pid(server.pid_file)
    if pid is None or not _wait_healthy(server, pid, timeout):
        stop(server)
        raise UserError(f"{server.name} server did not become healthy at {server.health_url} within "
                        f"{timeout:.0f} s; see {server.log_file}")
    if server.name == "mlflow":
        _warm_up_mlflow(server.url)


def _wait_healthy(server: Server, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(server.health_url):
            return True
        if not pid_alive(pid):
            return False
        time.sleep(0.25)
    return False


def _warm_up_mlflow(url: str) -> None:
    """The first API request initialises the store lazily; do it once here, not inside a test's timing."""
    req = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search", data=b'{"max_results": 1}',
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=60).close()  # noqa: S310
    except (urllib.error.URLError, OSError):
        pass


def stop(server: Server, timeout: float = 20.0) -> bool:
    """SIGTERM the server's process group (the server and its workers), SIGKILL after ``timeout``."""
    pid = read_pid(server.pid_file)
    if pid is None:
        server.pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
        _reap(pid)
    if pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.2)
        _reap(pid)
    server.pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: its pid is the group id
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------------------------------
# Tracking server for concurrent cells
# --------------------------------------------------------------------------------------------

def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return Path(tracking_uri[len(prefix):])
    return None


def tracking_server_for(tracking_uri: str, host: str = DEFAULT_HOST) -> Server:
    """The server that fronts the SQLite store at ``tracking_uri`` (state beside the database)."""
    db = sqlite_path(tracking_uri)
    if db is None:
        raise ValueError(f"not a local sqlite tracking URI: {tracking_uri}")
    db = db.resolve()
    state = db.parent / f".{db.name}.server"
    port = 0
    info = state / "server.json"
    if info.exists():
        try:
            port = int(json.loads(info.read_text())["port"])
        except (OSError, ValueError, KeyError):
            port = 0
    return Server("mlflow", state, host=host, port=port, backend_uri=f"sqlite:///{db}")


def ensure_tracking_server(tracking_uri: str, *, concurrency: int, host: str = DEFAULT_HOST) -> tuple[str, Server | None]:
    """Return ``(uri_for_clients, server_started_now_or_None)``.

    With ``concurrency > 1`` and a local ``sqlite:///`` URI, start (or reuse) one ``mlflow server``
    over that database and return its HTTP URI; otherwise return ``tracking_uri`` unchanged.
    The caller stops a server returned as started (``stop(server)``), or uses ``tracking_server``.
    """
    if concurrency <= 1 or sqlite_path(tracking_uri) is None:
        return tracking_uri, None
    server = tracking_server_for(tracking_uri, host)
    if server.port and read_pid(server.pid_file) is not None:
        start(server)  # reuse: waits until healthy
        return server.url, None
    server = Server(server.name, server.state_dir, host, free_port(host), server.backend_uri)
    server.state_dir.mkdir(parents=True, exist_ok=True)
    (server.state_dir / "server.json").write_text(json.dumps({"port": server.port, "backend": server.backend_uri}))
    started = start(server)
    return server.url, (server if started else None)


@contextmanager
def tracking_server(tracking_uri: str, *, concurrency: int, host: str = DEFAULT_HOST) -> Iterator[str]:
    """Context manager around ``ensure_tracking_server``: stops the server it started on exit."""
    uri, started = ensure_tracking_server(tracking_uri, concurrency=concurrency, host=host)
    try:
        yield uri
    finally:
        if started is not None:
            stop(started)


# --------------------------------------------------------------------------------------------
# The two long-lived servers of a services root (scripts/services.sh)
# --------------------------------------------------------------------------------------------

def default_root() -> Path:
    return Path(os.environ.get("SERVICES_ROOT", Path.cwd() / ".ci-state"))


def standard_servers(root: Path, host: str | None = None) -> dict[str, Server]:
    """The MLflow and Prefect servers of a services root, ports from MLFLOW_PORT / PREFECT_PORT.

    The MLflow server serves the study's own store (``pipeline.tracking.backend_store_uri``: the
    repository's ``mlruns/mlflow.db`` unless ``MLFLOW_BACKEND_STORE_URI`` names another), never a
    store of its own in the state folder: runs written by ``dvc repro`` without a server and runs
    logged through it are the same runs.
    """
    host = host or os.environ.get("SERVICES_BIND_HOST", DEFAULT_HOST)
    from pipeline.tracking import backend_store_uri

    return {
        name: Server(name, root / name, host=host, port=int(os.environ.get(f"{name.upper()}_PORT", port)),
                     backend_uri=backend_store_uri() if name == "mlflow" else None)
        for name, port in DEFAULT_PORTS.items()
    }


def _select(servers: dict[str, Server], only: str | None) -> list[Server]:
    return [servers[only]] if only else list(servers.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.services", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_action(args.action, Path(args.root) if args.root else default_root(), args.host, args.only)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--root", help="state folder (default: $SERVICES_ROOT or ./.ci-state)")
    parser.add_argument("--host", help="address to bind (default: $SERVICES_BIND_HOST or 127.0.0.1)")
    parser.add_argument("--only", choices=sorted(DEFAULT_PORTS), help="act on one server only")


def run_action(action: str, root: Path, host: str | None = None, only: str | None = None) -> int:
    servers = _select(standard_servers(root, host), only)
    if action == "up":
        # Spawn both, then wait: the two start-ups overlap (~20 s instead of ~36 s, INFRA notes).
        t0 = time.monotonic()
        spawned = {server.name: launch(server) for server in servers}
        for server in servers:
            wait(server)
            print(f"{server.name}: {'started' if spawned[server.name] else 'already running'} at {server.url} "
                  f"({time.monotonic() - t0:.1f} s)")
        return 0
    if action == "down":
        # Prefect first: flow-serving processes are stopped by scripts/services.sh before this.
        for server in sorted(servers, key=lambda s: s.name != "prefect"):
            print(f"{server.name}: {'stopped' if stop(server) else 'not running'}")
        return 0
    code = 0
    for server in servers:
        pid = read_pid(server.pid_file)
        ok = pid is not None and healthy(server.health_url)
        print(f"{server.name}: {'up' if ok else 'down'} {server.url}" + (f" pid {pid}" if pid else ""))
        code |= 0 if ok else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
