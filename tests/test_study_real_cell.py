"""The production cell path under orchestration: `pipeline.engine:run_cell` inside `CellJob` (thread settings,
linking the trained checkpoint into an evaluation-only variant's folder) submitted through submitit, for a
training cell and its evaluation-only variant (table1 "MaskFormer R50" and its multi-scale + flip row),
locally and on SLURM. The metrics each job recorded must equal a direct in-process `run_cell` of the same config.

Tiny on purpose: a 4-class ADE20K twin of 8 images of 32x48, 3 iterations, 2 validation images.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline.config import parse_config
from pipeline.engine import run_cell
from pipeline.executor import CellExecutor
from pipeline.study import plan_study, run_unit
from tests._study_helpers import write_params

REAL_CELL = "pipeline.engine:run_cell"
TINY = dict(
    input={"crop": [32, 32], "short_sizes": [32], "max_size": 64, "test_short_size": 32, "test_max_size": 64,
           "tta_sizes": [32], "tta_max_size": 64, "num_workers": 0},
    solver={"ims_per_batch": 2, "max_iter": 3, "warmup_iters": 0, "warmup_factor": 1.0, "base_lr": 5.0e-4,
            "backbone_multiplier": 1.0},
    test={"max_images": 2, "fps_images": 1, "fps_warmup": 0},
    run={"eval_period": 0, "checkpoint_period": 100, "log_period": 1, "device": "cpu", "threads": 1},
    # the paper's 100 queries (smoke's 20 is for its 120+ iterations): after 3 iterations the 20-query model
    # gets no pixel of the 2 validation images right (pACC 0), which would prove nothing here
    default_queries=100,
)


@pytest.fixture(scope="module")
def twin_data(make_twin) -> Path:
    """The data root holding the ADE20K twin (``<root>/ade20k``)."""
    return make_twin("ade20k", num_images=8, num_classes=4, image_size=(32, 48)).parent


def _plan(tmp: Path, data_root: Path, **extra):
    params_path = write_params(tmp, {"table1": slice(0, 2)}, data_root=str(data_root), **TINY)
    if extra:
        raw = yaml.safe_load(params_path.read_text())
        raw["executor"]["slurm"].update(extra)
        params_path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    plan = plan_study(params_path=params_path, cell_fn=REAL_CELL, reports_dir=tmp / "reports")
    assert len(plan.train_ids()) == 1 and len(plan.variant_ids()) == 1
    return plan


def _results(metrics: dict) -> dict:
    """What a cell measured (not how fast it ran)."""
    return {k: v for k, v in metrics.items() if k.startswith(("val", "analysis/"))}


@pytest.fixture(scope="module")
def direct(twin_data, tmp_path_factory):
    """The same two cells run in-process, each in a fresh folder (the variant trains there itself)."""
    tmp = tmp_path_factory.mktemp("direct")
    plan = _plan(tmp, twin_data)
    out = {}
    for kind, uid in (("train", plan.train_ids()[0]), ("variant", plan.variant_ids()[0])):
        unit = plan.grid.train[uid] if kind == "train" else plan.grid.evals[uid]
        raw = json.loads(json.dumps(unit.config))
        raw["run"]["output_dir"] = str(tmp / kind)
        raw["run"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"  # MLFLOW_TRACKING_URI still wins when set
        out[kind] = run_cell(parse_config(raw))
    return out


def _run_study(plan, kind: str) -> dict:
    ex = CellExecutor(plan.params, kind, cell_fn=plan.cell_fn, threads=1)
    outcomes = {uid: run_unit(plan, ex, uid) for uid in plan.train_ids() + plan.variant_ids()}
    assert all(o["status"] == "done" and not o["skipped"] for o in outcomes.values()), outcomes
    train = Path(plan.grid.train[plan.train_ids()[0]].run_dir)
    variant = Path(plan.grid.evals[plan.variant_ids()[0]].run_dir)
    # The variant evaluated the trained weights: its checkpoint is the training cell's file (hard link).
    assert os.path.samefile(train / "checkpoints" / "final.pt", variant / "checkpoints" / "final.pt")
    assert not (variant / "train_log.jsonl").exists()  # it did not train again
    cfg_variant = yaml.safe_load((variant / "config.yaml").read_text())
    assert cfg_variant["test"]["tta"] is True
    return {"train": json.loads((train / "metrics.json").read_text()),
            "variant": json.loads((variant / "metrics.json").read_text()),
            "job": json.loads((train / "cell.json").read_text())["job_id"]}


def _check_against_direct(got: dict, direct: dict) -> None:
    for kind in ("train", "variant"):
        assert _results(got[kind]) == _results(direct[kind]), kind
        assert 0.0 < got[kind]["val/mIoU"] <= 100.0  # a measured value, not an empty result
    assert got["train"]["train/iterations"] == 3
    # The variant evaluated the trained weights: its single-scale numbers are the training cell's, and it
    # adds the multi-scale + flip ones (official test_time_augmentation.py).
    single = {k: v for k, v in _results(got["variant"]).items() if not k.startswith("val_ms/")}
    assert single == _results(got["train"])
    assert 0.0 < got["variant"]["val_ms/mIoU"] <= 100.0 and "val_ms/mIoU" not in got["train"]


@pytest.mark.slow
def test_real_cell_and_its_variant_through_the_local_executor(twin_data, direct, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    got = _run_study(_plan(tmp_path, twin_data), "local")
    assert got["job"].isdigit()  # a local submitit job = a child process id
    _check_against_direct(got, direct)


@pytest.mark.slow
@pytest.mark.services
def test_real_cell_and_its_variant_on_slurm(twin_data, direct, tmp_path, services_env):
    from tests.test_slurm import _require_slurm

    _require_slurm(dict(os.environ))
    plan = _plan(tmp_path, twin_data, gpus_per_node=0, mem_gb=1, cpus_per_task=1, timeout_min=10)
    got = _run_study(plan, "slurm")
    assert got["job"].split("_")[0].isdigit()  # a SLURM job id
    _check_against_direct(got, direct)
