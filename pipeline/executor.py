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
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

# INFRA.md trap: import submitit at module top with SUBMITIT_LOG_LEVEL=NOCONFIG (importing it inside a
# Prefect task reconfigured logging and deadlocked the process).
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
import submitit  # noqa: E402
import submitit.helpers  # noqa: E402

from pipeline.errors import UserError  # noqa: E402
from pipeline.params import Params  # noqa: E402


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
            os.link(src / name, tmp)
        except OSError:
            shutil.copy2(src / name, tmp)
        os.replace(tmp, dst / name)


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc); [] when unknown."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


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


class CellJob(submitit.helpers.Checkpointable):
    """The callable submitted for one cell: `CellJob(cell_fn, threads, init_from)(config_dict) -> metrics`."""

    def __init__(self, cell_fn: str, threads: int | None = None, init_from: str | None = None) -> None:
        self.cell_fn = cell_fn
        self.threads = threads
        self.init_from = init_from

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = str(self.threads)
            try:
                import torch

                torch.set_num_threads(self.threads)
            except ImportError:
                pass
        if self.init_from:
            link_checkpoint(self.init_from, config["run"]["output_dir"])
        from pipeline.config import parse_config

        cfg = parse_config(config, source=f"cell {config['run'].get('run_name', '?')}")
        fn = import_callable(self.cell_fn)
        result = fn(cfg)
        return dict(result) if isinstance(result, dict) else {"result": result}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue on preemption/timeout with the same arguments; the engine resumes from its checkpoints."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def sbatch_header(s: Any, dataset: str, name: str, count: int, folder: Path) -> str:
    """The `#SBATCH` lines submitit writes for an array of `count` cells of `dataset` with the SLURM
    resources `s` (`pipeline.params.slurm_resources`); nothing is submitted (`study --dry-run`)."""
    from submitit.slurm.slurm import _make_sbatch_string

    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(job_name=job_name(name), time=s.timeout_min,
                         gpus_per_node=s.gpus_by_dataset.get(dataset, s.gpus_per_node),
                         ntasks_per_node=s.tasks_per_node, cpus_per_task=s.cpus_per_task, mem=f"{s.mem_gb}GB",
                         array_parallelism=s.array_parallelism,
                         **({"partition": s.partition} if s.partition else {}),
                         **({"account": s.account} if s.account else {}))
    params = dict(ex.parameters)
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
        # executor.slurm with the profile's resources (profiles.<p>.slurm): smoke asks for a CPU and minutes.
        self.slurm = slurm_resources(params, profile)
        if kind == "slurm":
            self._check_slurm()

    def _check_slurm(self) -> None:
        if shutil.which("sbatch") is None:
            raise UserError("executor slurm: `sbatch` not found on PATH (is this a SLURM login node?)")

    def _executor(self, folder: Path, dataset: str | None, name: str) -> submitit.Executor:
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "slurm":
            s = self.slurm
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            gpus = s.gpus_by_dataset.get(dataset, s.gpus_per_node) if dataset else s.gpus_per_node
            kwargs: dict[str, Any] = dict(
                name=job_name(name),
                timeout_min=s.timeout_min,
                gpus_per_node=gpus,
                tasks_per_node=s.tasks_per_node,
                cpus_per_task=s.cpus_per_task,
                mem_gb=s.mem_gb,
                slurm_array_parallelism=s.array_parallelism,
            )
            if s.partition:
                kwargs["slurm_partition"] = s.partition
            if s.account:
                kwargs["slurm_account"] = s.account
            ex.update_parameters(**kwargs)
            return ex
        ex = submitit.AutoExecutor(folder=folder, cluster=self.kind)
        ex.update_parameters(timeout_min=self.params.executor.local.timeout_min, name=job_name(name))
        if self.kind == "local":
            ex.update_parameters(local_setup=_LOCAL_SETUP)
        return ex

    def submit(self, unit_config: dict[str, Any], *, log_folder: Path, init_from: str | None = None) -> submitit.Job:
        """One cell as one job; logs under `log_folder` (unique per study run)."""
        dataset = unit_config["data"]["dataset"]
        ex = self._executor(log_folder, dataset, unit_config["run"].get("run_name", "cell"))
        return ex.submit(CellJob(self.cell_fn, self.threads, init_from), unit_config)

    def submit_array(
        self, configs: list[dict[str, Any]], *, log_folder: Path, init_from: list[str | None] | None = None
    ) -> list[submitit.Job]:
        """Many cells as one SLURM job array (`executor.batch()`); one folder for the array's logs."""
        if not configs:
            return []
        init_from = init_from or [None] * len(configs)
        ex = self._executor(log_folder, configs[0]["data"]["dataset"], "maskformer-study")
        jobs: list[submitit.Job] = []
        with ex.batch():
            for cfg, src in zip(configs, init_from):
                jobs.append(ex.submit(CellJob(self.cell_fn, self.threads, src), cfg))
        return jobs
