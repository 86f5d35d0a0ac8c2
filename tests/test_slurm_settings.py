"""Every submitit SLURM setting from params / local.yaml / MASKFORMER_SLURM_*, checked by name, and the
geometry of a cell's job: one task per GPU, as many nodes as its world size needs (issue 13)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]


def _cfg(world: int, device: str = "cuda") -> dict:
    return {"data": {"dataset": "coco_panoptic"}, "run": {"num_gpus": world, "device": device, "run_name": "c"}}


def test_unknown_names_are_errors_naming_them(tmp_path):
    with pytest.raises(UserError, match="MASKFORMER_SLURM_PARTITON: unknown SLURM setting 'partiton'"):
        load_params(REPO / "params.yaml", environ={"MASKFORMER_SLURM_PARTITON": "gpu"})
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "local.yaml").write_text("executor:\n  slurm:\n    extra: {mail_usr: me}\n")
    with pytest.raises(UserError, match="unknown or managed submitit SLURM parameter 'mail_usr'"):
        load_params(tmp_path / "params.yaml", environ={})
    (tmp_path / "local.yaml").write_text("executor:\n  slurm:\n    extra: {nodes: 3}\n")  # the executor sets it
    with pytest.raises(UserError, match="'nodes'"):
        load_params(tmp_path / "params.yaml", environ={})


def test_settings_reach_the_sbatch_script_and_the_world_size_sets_nodes_and_tasks(tmp_path):
    import submitit.slurm.slurm as ss

    from pipeline.executor import CellExecutor, slurm_layout

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "local.yaml").write_text(
        "executor:\n  slurm:\n    partition: gpu\n    account: proj\n    constraint: volta32gb\n"
        "    setup: ['module load cuda/12.1']\n    extra: {mail_user: me@example.org}\n")
    params = load_params(tmp_path / "params.yaml", environ={
        "MASKFORMER_SLURM_QOS": "high", "MASKFORMER_SLURM_SIGNAL_DELAY_S": "120",
        "MASKFORMER_SLURM_MAX_NUM_TIMEOUT": "5", "MASKFORMER_SLURM_EXCLUSIVE": "true"})
    ex = CellExecutor(params, "slurm", cell_fn="pipeline.engine:run_cell")
    auto = ex._executor(tmp_path / "logs", _cfg(64), "table3-coco_panoptic-c")
    assert auto._executor.max_num_timeout == 5
    text = ss._make_sbatch_string(command="true", folder=tmp_path, **auto._executor.parameters)
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--constraint=volta32gb", "--exclusive",
                 "--mail-user=me@example.org", "--signal=USR2@120", "--nodes=8", "--ntasks-per-node=8",
                 "--gpus-per-node=8", "--job-name=table3-coco_panoptic-c", "module load cuda/12.1"):
        assert line in text, line
    assert slurm_layout(8, 8, "cuda") == {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8}
    assert slurm_layout(8, 2, "cpu") == {"nodes": 4, "tasks_per_node": 2, "gpus_per_node": 0}
    assert slurm_layout(1, 8, "cuda") == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1}  # single_gpu
    with pytest.raises(UserError, match="run.num_gpus=12 does not fill whole nodes"):
        slurm_layout(12, 8, "cuda")


def test_engine_stops_on_submitits_signal(monkeypatch):
    """USR2 (submitit's default) and SIGTERM stop training at an iteration boundary; SUBMITIT_PREEMPT_SIGNAL moves it."""
    import signal

    from pipeline.trainer import preempt_signals

    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert {signal.SIGUSR2, signal.SIGTERM} <= set(preempt_signals())
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "SIGURG")
    assert signal.SIGURG in preempt_signals() and signal.SIGTERM in preempt_signals()
