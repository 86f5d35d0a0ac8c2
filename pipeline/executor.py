"""submitit executors for study cells: local subprocesses by default, SLURM job arrays on a cluster.

Every cell runs as `CellJob(cell_fn)(config_dict)` in its own process: the job re-validates the
RunConfig, (for evaluation-only variants) links the trained checkpoint into its run folder, and calls
the engine's `run_cell(config)`. `CellJob` is a `submitit.helpers.Checkpointable`: on SLURM preemption
or timeout submitit calls `checkpoint()`, which resubmits the same call; the engine resumes from the
checkpoints in the run folder. The SLURM command line is built by submitit from typed parameters only
(no shell strings from user values).
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

# INFRA.md trap: import submitit at module top with SUBMITIT_LOG_LEVEL=NOCONFIG (importing it inside a
# Prefect task reconfigured logging and deadlocked the process).
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
import submitit  # noqa: E402
import submitit.helpers  # noqa: E402

from pipeline.errors import UserError  # noqa: E402
from pipeline.params import Params  # noqa: E402
from pipeline.runfolder import FAILURE_FILE  # noqa: E402


JOB_NAME_MAX = 100  # SLURM accepts longer names; squeue/sacct columns show far fewer characters


def job_name(name: str) -> str:
    """A scheduler-safe job name: characters outside `[A-Za-z0-9_.-]` become `_`, at most JOB_NAME_MAX long.

    The cell name is user data (params.yaml); submitit writes the name into the sbatch script, where a
    newline would start a new `#SBATCH` line. An empty result becomes `cell`.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:JOB_NAME_MAX].strip("._-")
    return cleaned or "cell"


def import_callable(path: str) -> Callable[..., Any]:
    """'package.module:function' -> the function; UserError naming the path when it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"cell function {path!r}: module {exc.name!r} not found") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"cell function {path!r}: {module_name} has no callable {attr!r}")
    return fn


def link_checkpoint(train_dir: str | Path, eval_dir: str | Path) -> None:
    """Put the trained checkpoints (`last.pt`, `final.pt` + `.sha256`) into an evaluation-only variant's folder.

    Hard links when possible (no copy), else copies. The engine resumes from `last.pt`, finds training
    finished (iteration = max_iter; `test:` keys are result-free for its config check) and only
    evaluates with the variant's `test:` section.
    """
    src = Path(train_dir) / "checkpoints"
    dst = Path(eval_dir) / "checkpoints"
    final = src / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{final}: the training cell has no final checkpoint")
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "last.pt.sha256", "final.pt", "final.pt.sha256"):
        if not (src / name).is_file() or (dst / name).exists():
            continue
        tmp = dst / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src / name, tmp)
            except OSError:
                shutil.copy2(src / name, tmp)
            os.replace(tmp, dst / name)
        finally:
            tmp.unlink(missing_ok=True)  # a failed copy (disk full) leaves no temp file


from pipeline.reaper import children as _children  # noqa: E402 - child pids via /proc


def stop_job(job: Any) -> None:
    """Ask a running cell job to stop: SIGTERM reaches the cell, which saves `last.pt` and exits 75.

    Local jobs: SIGTERM to submitit's controller process, which forwards it to the cell process
    (`LocalJob.cancel()` would send SIGINT, which the local cells ignore, see `_LOCAL_SETUP`). SLURM
    jobs: `scancel` (SIGTERM to the job steps, SIGKILL after the cluster's KillWait). Never raises.
    """
    process = getattr(job, "_process", None)
    try:
        if process is not None:
            if process.poll() is None:
                # The local job's process is the `sh -c` of `_LOCAL_SETUP`; its child is the controller.
                for pid in _children(process.pid) or [process.pid]:
                    os.kill(pid, signal.SIGTERM)
        elif not job.done():
            job.cancel(check=False)
    except Exception:  # noqa: BLE001 - best effort during shutdown; the job may just have finished
        pass


# Local cell processes ignore SIGINT: they share the terminal's process group, so a Ctrl-C would kill
# them mid-iteration; the study instead stops them with SIGTERM (checkpoint, exit 75, `stop_job`).
# Python keeps a signal ignored at start-up ignored, so the shell's `trap` reaches the cell process.
_LOCAL_SETUP = ["trap '' INT"]




def current_job_id() -> str | None:
    """The submitit job id of this process (None outside a submitit job)."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return None


def record_failure(run_dir: str | Path, exc: BaseException) -> None:
    """`<run_dir>/failure.json`: {"job_id", "reason": "<Type>: <message>"} of the exception that ended the job.

    The study records this as the cell's reason (not the last line of a log); the folder is the cell's
    run folder, which the study makes for every submitted cell anyway (cell.json). Never raises (the
    job's own exception is what matters).
    """
    run_dir = Path(run_dir)
    try:
        from pipeline.config import atomic_write_text
        import json

        text = json.dumps({"job_id": current_job_id(), "reason": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n"
        atomic_write_text(run_dir / FAILURE_FILE, text)
    except Exception:  # noqa: BLE001 - a read-only folder must not hide the job's own error
        pass


class CellJob(submitit.helpers.Checkpointable):
    """The callable submitted for one cell: `CellJob(cell_fn, threads, init_from)(config_dict) -> metrics`.

    `requeue`: whether `checkpoint()` (submitit's preemption/time-limit hook) asks for a requeue
    (`executor.slurm.requeue_on_preemption`). `snapshot`: the study's code snapshot folder, recorded in
    the job's environment (`MASKFORMER_CODE_SNAPSHOT`) for status.json and the MLflow tags.
    """

    def __init__(self, cell_fn: str, threads: int | None = None, init_from: str | None = None,
                 requeue: bool = True, snapshot: str | None = None) -> None:
        self.cell_fn = cell_fn
        self.threads = threads
        self.init_from = init_from
        self.requeue = requeue
        self.snapshot = snapshot
        self.workdir = os.getcwd() if snapshot else None

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        if getattr(self, "snapshot", None):
            # The job started in the snapshot (sbatch --chdir), so `python -m submitit...` put it first on
            # sys.path and every import comes from it; relative paths of the config mean the study's folder.
            os.environ["MASKFORMER_CODE_SNAPSHOT"] = str(self.snapshot)
            if getattr(self, "workdir", None):
                os.chdir(self.workdir)
        env = submitit.JobEnvironment() if "SUBMITIT_EXECUTOR" in os.environ else None
        if env is not None and env.num_tasks > 1:
            # One process per GPU (SLURM tasks): MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from
            # submitit's helper; CUDA_VISIBLE_DEVICES is left alone (the engine takes GPU local_rank).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            from pipeline.distributed import resolve_master_addr

            os.environ["MASTER_ADDR"] = resolve_master_addr(os.environ["MASTER_ADDR"])
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = str(self.threads)
            try:
                import torch

                torch.set_num_threads(self.threads)
            except ImportError:
                pass
        try:
            if self.init_from and (env is None or env.global_rank == 0):
                link_checkpoint(self.init_from, config["run"]["output_dir"])
            from pipeline.config import parse_config

            cfg = parse_config(config, source=f"cell {config['run'].get('run_name', '?')}")
            fn = import_callable(self.cell_fn)
            result = fn(cfg)
        except Exception as exc:
            record_failure(config["run"]["output_dir"], exc)
            raise
        return dict(result) if isinstance(result, dict) else {"result": result}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """Requeue on preemption/timeout with the same arguments; the engine resumes from its checkpoints.

        The engine has saved `last.pt` before this runs (it catches submitit's signal first, see
        pipeline.engine.preempt_signals). None (no requeue) when `requeue_on_preemption` is false.
        """
        if not getattr(self, "requeue", True):
            return None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def job_result(job: Any) -> Any:
    """The cell's result: rank 0's for a multi-task (one process per GPU) job, whose every task returns
    the same metrics (the engine broadcasts them); `job.result()` refuses jobs with sub-tasks."""
    return job.results()[0]


def slurm_layout(world_size: int, gpus_per_node: int, device: str) -> dict[str, int]:
    """SLURM geometry of one cell: one task (process) per GPU, as many nodes as the world size needs.

    `{"nodes", "tasks_per_node", "gpus_per_node"}`; CPU cells (device cpu: rehearsal) ask for no GPU but
    keep the same processes per node; `gpus_per_node` 0 (CPU-only nodes) puts all processes on one node.
    A world size that does not fill whole nodes is an error.
    """
    per_node = min(world_size, gpus_per_node) if gpus_per_node else world_size
    if world_size % per_node:
        raise UserError(f"run.num_gpus={world_size} does not fill whole nodes of executor.slurm.gpus_per_node="
                        f"{gpus_per_node} GPUs: use a multiple of {gpus_per_node} or at most {gpus_per_node}")
    return {"nodes": world_size // per_node, "tasks_per_node": per_node,
            "gpus_per_node": 0 if device == "cpu" or not gpus_per_node else per_node}


def sbatch_header(executor: "CellExecutor", config: dict[str, Any], name: str, count: int, folder: Path) -> str:
    """The `#SBATCH` lines submitit would write for an array of `count` cells like `config`, built by the
    same code as a real submission (`CellExecutor._executor`: the profile's resources, the cell's world
    size -> nodes x tasks); nothing is submitted and nothing is created (`study --dry-run`)."""
    from submitit.slurm.slurm import _make_sbatch_string

    with tempfile.TemporaryDirectory() as tmp:
        ex = executor._executor(Path(tmp), config, name)
        params = dict(ex._executor.parameters)
    if count > 1:
        params["map_count"] = count
    text = _make_sbatch_string(command="<cell>", folder=folder, **params)
    return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))


class CellExecutor:
    """Submits cells through submitit. `kind` is 'local' (subprocesses), 'slurm' or 'debug' (in-process)."""

    def __init__(
        self, params: Params, kind: str, *, cell_fn: str, threads: int | None = None, profile: str | None = None
    ) -> None:
        if kind not in ("local", "slurm", "debug"):
            raise UserError(f"executor {kind!r}: expected local, slurm or debug")
        import_callable(cell_fn)  # fail before anything is submitted
        from pipeline.params import slurm_resources

        self.cell_fn = cell_fn
        self.params = params
        self.kind = kind
        self.threads = threads
        self.snapshot: str | None = None  # set by the study (pipeline.snapshot) for SLURM runs
        # executor.slurm with the profile's resources (profiles.<p>.slurm): smoke asks for a CPU and minutes.
        self.slurm = slurm_resources(params, profile)
        if kind == "slurm":
            self._check_slurm()

    def _check_slurm(self) -> None:
        if shutil.which("sbatch") is None:
            raise UserError("executor slurm: `sbatch` not found on PATH (is this a SLURM login node?)")

    def _executor(self, folder: Path, config: dict[str, Any], name: str) -> submitit.Executor:
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "slurm":
            s = self.slurm
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_num_timeout)
            layout = slurm_layout(int(config["run"].get("num_gpus", 1)), s.gpus_per_node,
                                  str(config["run"].get("device", "auto")))
            kwargs: dict[str, Any] = dict(
                name=job_name(name),
                timeout_min=s.timeout_min,
                nodes=layout["nodes"],
                tasks_per_node=layout["tasks_per_node"],
                gpus_per_node=layout["gpus_per_node"],
                cpus_per_task=s.cpus_per_task,
                mem_gb=s.mem_gb,
                slurm_array_parallelism=s.array_parallelism,
                slurm_signal_delay_s=s.signal_delay_s,
            )
            for key in ("partition", "account", "qos", "constraint", "exclude", "exclusive"):
                if getattr(s, key) is not None:
                    kwargs[f"slurm_{key}"] = getattr(s, key)
            setup = list(s.setup)
            if self.snapshot:  # a (requeued) job imports the study's code snapshot, not the live tree
                setup.append(f"export PYTHONPATH={shlex.quote(str(self.snapshot))}${{PYTHONPATH:+:$PYTHONPATH}}")
            if setup:
                kwargs["slurm_setup"] = setup
            if s.srun_args:
                kwargs["slurm_srun_args"] = s.srun_args
            extra_sbatch = dict(s.additional_parameters)
            if self.snapshot:  # the job starts in the snapshot: its code is first on sys.path (CellJob)
                extra_sbatch["chdir"] = str(self.snapshot)
            if extra_sbatch:
                kwargs["slurm_additional_parameters"] = extra_sbatch
            kwargs.update({f"slurm_{k}": v for k, v in s.extra.items()})
            ex.update_parameters(**kwargs)
            return ex
        ex = submitit.AutoExecutor(folder=folder, cluster=self.kind)
        ex.update_parameters(timeout_min=self.params.executor.local.timeout_min, name=job_name(name))
        if self.kind == "local":
            ex.update_parameters(local_setup=_LOCAL_SETUP)
        return ex

    def _job(self, init_from: str | None) -> CellJob:
        return CellJob(self.cell_fn, self.threads, init_from,
                       requeue=self.slurm.requeue_on_preemption, snapshot=self.snapshot)

    def submit(self, unit_config: dict[str, Any], *, log_folder: Path, init_from: str | None = None,
               name: str | None = None) -> submitit.Job:
        """One cell as one job; logs under `log_folder` (unique per study run). `name`: the job name."""
        ex = self._executor(log_folder, unit_config, name or unit_config["run"].get("run_name", "cell"))
        return ex.submit(self._job(init_from), unit_config)

    def submit_array(
        self, configs: list[dict[str, Any]], *, log_folder: Path, init_from: list[str | None] | None = None,
        name: str = "maskformer-study",
    ) -> list[submitit.Job]:
        """Many cells as one SLURM job array (`executor.batch()`); one folder for the array's logs.

        The cells must share a SLURM geometry (world size, device): the study groups them so."""
        if not configs:
            return []
        init_from = init_from or [None] * len(configs)
        ex = self._executor(log_folder, configs[0], name)
        jobs: list[submitit.Job] = []
        with ex.batch():
            for cfg, src in zip(configs, init_from):
                jobs.append(ex.submit(self._job(src), cfg))
        return jobs
