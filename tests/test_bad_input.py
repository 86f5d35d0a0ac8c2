"""Bad-input matrix (issue 7): each case runs the real CLI in a subprocess and expects a clear message
naming the culprit, exit code 2, and nothing launched or half-written (no run folder, no MLflow run,
no SLURM job).

Kinds covered: params.yaml (unknown key, wrong type, out-of-range value, unknown backbone, unknown
dataset, unknown inference strategy, unknown matching, fixed matching with Q != K, YAML syntax);
data (missing folder, corrupt image, label out of range, label size mismatch, panoptic PNG/JSON
mismatch); checkpoints (wrong architecture, not a checkpoint, missing file).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- helpers

def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def assert_refused(proc: subprocess.CompletedProcess, *culprits: str) -> None:
    """Exit 2 and one `error:` line naming every culprit, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr[-2000:]
    for culprit in culprits:
        assert culprit in errors[-1], f"{culprit!r} not named in: {errors[-1]}"


def no_mlflow_runs(db: Path) -> bool:
    if not db.exists():
        return True
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from runs").fetchone()[0] == 0
        except sqlite3.OperationalError:  # no schema: nothing was ever logged
            return True


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """Prepared twins: ADE20K (semantic, 5 classes) and COCO panoptic (6 classes)."""
    from maskformer_core.data.prepare import prepare
    from maskformer_core.data.synth import synthesize

    base = tmp_path_factory.mktemp("bad_input_twins")
    out = {}
    for name, k in (("ade20k", 5), ("coco_panoptic", 6)):
        synthesize(name, base / "raw" / name, num_images=8, num_classes=k, image_size=(48, 64), seed=1)
        prepare(name, base / "raw" / name, base / "prepared" / name, progress=False)
        out[name] = base / "prepared" / name
    return out


def copy_twin(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def run_config(path: Path, root: Path, out: Path, dataset: str = "ade20k", **model) -> Path:
    raw = {
        "model": {"backbone": "SmokeR18", "hidden_dim": 32, "mask_dim": 32, "conv_dim": 32, "dim_feedforward": 64,
                  "nheads": 4, "num_queries": 10, "dec_layers": 1, **model},
        "data": {"dataset": dataset, "root": str(root), "crop_size": [32, 32], "short_sizes": [32],
                 "max_size": 128, "test_short_size": 32, "test_max_size": 128, "num_workers": 0},
        "solver": {"max_iter": 2, "ims_per_batch": 2},
        "test": {"max_images": 2, "fps_images": 1, "fps_warmup": 0},
        "run": {"output_dir": str(out), "log_period": 1, "checkpoint_period": 100, "tracking": True,
                "tracking_uri": f"sqlite:///{path.parent / 'mlflow.db'}", "device": "cpu", "threads": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def train_refused(tmp_path: Path, root: Path, *culprits: str, dataset: str = "ade20k") -> None:
    out = tmp_path / "run"
    cfg = run_config(tmp_path / "cfg.yaml", root, out, dataset=dataset)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    assert_refused(cli(["train", "--config", str(cfg)], REPO, env), *culprits)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert no_mlflow_runs(tmp_path / "mlflow.db")


# ------------------------------------------------------------------------------- params.yaml

def _cell(params: dict, table: str, row: str) -> dict:
    return next(c for c in params["grid"][table]["cells"] if c["row"] == row)


PARAMS_CASES = {
    "unknown_key": (lambda p: p["study"].update(retires=2), ["study.retires", "unknown key"]),
    "wrong_type": (lambda p: p["study"].update(retries="twice"), ["study.retries", "integer"]),
    "out_of_range": (lambda p: p["study"].update(retries=-1), ["study.retries", "greater than or equal to 0"]),
    "unknown_backbone": (lambda p: _cell(p, "table4", "(b) MaskFormer-bipartite").update(backbone="R152"),
                         ["grid.table4.cells[3]", "R152"]),
    "unknown_dataset": (lambda p: _cell(p, "table4", "(b) MaskFormer-bipartite").update(dataset="imagenet"),
                        ["grid.table4.cells[3]", "imagenet"]),
    "unknown_strategy": (lambda p: _cell(p, "table4", "(b) MaskFormer-bipartite").update(inference="magic"),
                         ["grid.table4.cells[3].inference"]),
    "unknown_matching": (lambda p: _cell(p, "table4", "(b) MaskFormer-bipartite").update(matching="greedy"),
                         ["grid.table4.cells[3].matching"]),
    "fixed_matching_q_ne_k": (lambda p: _cell(p, "table4", "(a) MaskFormer-fixed").update(queries=100),
                              ["grid.table4.cells[1]", "fixed"]),
}


def _study_dir(tmp_path: Path, mutate) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return tmp_path


def _slurm_jobs_from(env: dict[str, str], workdir: Path) -> list[str]:
    """SLURM jobs of the last hour submitted from ``workdir`` (other tests may submit meanwhile)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,WorkDir", "-S", "now-1hour"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if str(workdir) in line]


@pytest.mark.parametrize("case", sorted(PARAMS_CASES))
def test_bad_params_launch_nothing(case, tmp_path, services):
    """`python -m pipeline study --executor slurm` with a broken params.yaml: no SLURM job, no folder, no run."""
    mutate, culprits = PARAMS_CASES[case]
    work = _study_dir(tmp_path, mutate)
    env = services.subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    proc = cli(["study", "--params", "params.yaml", "--table", "table4", "--executor", "slurm"], work, env)
    assert_refused(proc, *culprits)
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml"]  # no runs/, reports/, mlruns/, .submitit/
    assert _slurm_jobs_from(env, work) == []


def test_params_yaml_syntax_error_names_file(tmp_path, run_cli):
    (tmp_path / "params.yaml").write_text("study:\n  profile: smoke\n   retries: [1\n")
    proc = run_cli("study", "--params", "params.yaml", "--executor", "debug", cwd=tmp_path)
    assert_refused(proc, "params.yaml", "YAML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# --------------------------------------------------------------------------------------- data

def test_missing_data_folder(tmp_path):
    train_refused(tmp_path, tmp_path / "no_such_dataset", "no_such_dataset")


def test_corrupt_image(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    victim = sorted((root / "images" / "training").glob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 3)
    train_refused(tmp_path, root, victim.name)


def _bad_label(root: Path) -> Path:
    label = sorted((root / "annotations_detectron2" / "training").glob("*.png"))[0]
    arr = np.array(Image.open(label))
    arr[0, 0] = 77  # 5-class twin: valid values are 0..4 and the ignore label 255
    Image.fromarray(arr).save(label)
    return label


def _resized_label(root: Path) -> Path:
    label = sorted((root / "annotations_detectron2" / "training").glob("*.png"))[0]
    Image.open(label).resize((40, 30), Image.NEAREST).save(label)
    return label


def _dropped_segment(root: Path) -> tuple[str, int]:
    json_file = root / "annotations" / "panoptic_train2017.json"
    data = json.loads(json_file.read_text())
    ann = data["annotations"][0]
    dropped = ann["segments_info"].pop()  # the PNG still paints this segment
    json_file.write_text(json.dumps(data))
    return Path(ann["file_name"]).stem, dropped["id"]


def test_label_out_of_range(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    label = _bad_label(root)
    assert_refused(cli(["data", "validate", "--dataset", "ade20k", "--root", str(root)], REPO), label.name, "77")


def test_label_size_mismatch(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    label = _resized_label(root)
    assert_refused(cli(["data", "validate", "--dataset", "ade20k", "--root", str(root)], REPO), label.name, "40x30")


def test_panoptic_png_json_mismatch(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    stem, seg_id = _dropped_segment(root)
    proc = cli(["data", "validate", "--dataset", "coco_panoptic", "--root", str(root)], REPO)
    assert_refused(proc, stem, str(seg_id))


# `train` runs the dataset validation (train and val splits) before it creates anything: bad labels
# are refused by file name, with no run folder and no MLflow run left behind.


def test_train_refuses_label_out_of_range(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    label = _bad_label(root)
    train_refused(tmp_path, root, label.name, "77")


def test_train_refuses_label_size_mismatch(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    label = _resized_label(root)
    train_refused(tmp_path, root, label.name, "40x30")


def test_train_refuses_panoptic_mismatch(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    stem, _ = _dropped_segment(root)
    train_refused(tmp_path, root, stem, dataset="coco_panoptic")


# -------------------------------------------------------------------------------- checkpoints

def _evaluate_refused(tmp_path: Path, twins, checkpoint: Path, *culprits: str) -> None:
    out = tmp_path / "eval"
    cfg = run_config(tmp_path / "cfg.yaml", twins["ade20k"], out)
    output = tmp_path / "metrics.json"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = cli(["evaluate", "--config", str(cfg), "--checkpoint", str(checkpoint), "--output", str(output)], REPO, env)
    assert_refused(proc, *culprits)
    assert not output.exists() and not (out / "metrics.json").exists()
    assert no_mlflow_runs(tmp_path / "mlflow.db")


def test_checkpoint_of_another_architecture(twins, tmp_path):
    """A real checkpoint written by training a different model (per-pixel baseline) is refused by name."""
    other = tmp_path / "other"
    (tmp_path / "other_cfg").mkdir()
    cfg = run_config(tmp_path / "other_cfg" / "other.yaml", twins["ade20k"], other, arch="per_pixel")
    proc = cli(["train", "--config", str(cfg)], REPO, {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = other / "checkpoints" / "final.pt"
    _evaluate_refused(tmp_path, twins, ckpt, str(ckpt), "arch")


def test_not_a_checkpoint(twins, tmp_path):
    fake = tmp_path / "weights.pt"
    fake.write_text("these are not the weights you are looking for\n")
    _evaluate_refused(tmp_path, twins, fake, str(fake))


def test_missing_checkpoint(twins, tmp_path):
    _evaluate_refused(tmp_path, twins, tmp_path / "nope.pt", "nope.pt")


def test_torch_tensor_file_is_not_a_checkpoint(twins, tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)  # loads with weights_only, but is no checkpoint dict
    _evaluate_refused(tmp_path, twins, path, str(path))
