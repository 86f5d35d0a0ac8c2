"""Bad-input matrix (issue 7): each case runs the real CLI in a subprocess and expects a clear message
naming the culprit, exit code 2, and nothing launched or half-written (no run folder, no MLflow run,
no SLURM job).

Kinds covered: params.yaml (unknown key, wrong type, out-of-range value, unknown backbone, unknown
dataset, unknown inference strategy, unknown matching, fixed matching with Q != K, YAML syntax);
data (missing folder, corrupt image, label out of range, label size mismatch, panoptic PNG/JSON
mismatch); checkpoints (wrong architecture, not a checkpoint, missing file).

Issue 15 (failure modes beyond that matrix), one section per class at the end of this file: foreign
output folders (data synth/make/prepare, train --output-dir), checkpoints without a .sha256 and
announced restarts, duplicate keys/entries (params.yaml, local.yaml, run configs, panoptic JSON),
plan-time cross-references (rows, columns, metric keys, tables), liveness in `status`, OS errors
(full disk, a folder in the way), paths relative to the params file, ignored input (labels without
images, PNGs without annotations, images without annotations, all-ignore labels, extra predictions)
and the recorded failure reason. The killed-study orphans case is tests/test_orphans.py (slow).
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
def twins(make_twin) -> dict[str, Path]:
    """Prepared twins: ADE20K (semantic, 5 classes) and COCO panoptic (6 classes)."""
    return {name: make_twin(name, num_images=8, num_classes=k, seed=1) for name, k in (("ade20k", 5), ("coco_panoptic", 6))}


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


# ==================================================================================================
# Issue 15: nothing lost, nothing counted twice, no silent wrong number. One or more cases per class,
# each through the real CLI: exit code, the `error:` / `warning:` line naming the culprit, and the
# files that must not have been deleted, overwritten or left half-written.

def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "my_download.tar").write_bytes(b"user data, not ours" * 10)
    (path / "notes.txt").write_text("keep me\n")
    return _tree(path)


# -- class 1: no command deletes or overwrites a folder it did not create ---------------------------

@pytest.mark.parametrize("action", ["synth", "make", "make-raw", "prepare"])
def test_foreign_output_folder_is_refused(action, twins, tmp_path):
    victim = tmp_path / "victim"
    before = _user_folder(victim)
    twin = ["--dataset", "ade20k", "--num-images", "4", "--image-size", "32x32"]
    args = {"synth": ["data", "synth", *twin, "--out", str(victim)],
            "make": ["data", "make", *twin, "--out", str(victim)],
            "make-raw": ["data", "make", *twin, "--out", str(tmp_path / "new"), "--raw", str(victim)],
            "prepare": ["data", "prepare", "--dataset", "ade20k", "--raw",
                        str(twins["ade20k"].parent.parent / "raw" / "ade20k"), "--out", str(victim)]}[action]
    assert_refused(cli(args, REPO), str(victim), "marker")
    assert _tree(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temp folder, no --out made


def test_train_into_a_foreign_folder_is_refused(twins, tmp_path):
    victim = tmp_path / "victim"
    before = _user_folder(victim)
    cfg = run_config(tmp_path / "cfg.yaml", twins["ade20k"], tmp_path / "unused")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = cli(["train", "--config", str(cfg), "--output-dir", str(victim)], REPO, env)
    assert_refused(proc, str(victim), "holds no run")
    assert _tree(victim) == before
    assert no_mlflow_runs(tmp_path / "mlflow.db")


def test_twin_class_boxes_not_a_boolean_is_refused(tmp_path):
    """params.yaml data.<dataset>.class_boxes: "yes" (a string) is named with its file, before any twin is written."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["coco_panoptic"]["class_boxes"] = "yes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    proc = cli(["data", "make", "--dataset", "coco_panoptic", "--params", str(tmp_path / "params.yaml"),
                "--out", str(tmp_path / "twin")], REPO)
    assert_refused(proc, "params.yaml: data.coco_panoptic.class_boxes", "'yes'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_own_output_folder_is_replaced(tmp_path):
    """The marker is what makes a re-run legal: `data make` over its own twin succeeds (and stays a twin)."""
    out = tmp_path / "twin"
    args = ["data", "make", "--dataset", "ade20k", "--num-images", "4", "--image-size", "32x32", "--out", str(out)]
    for _ in range(2):
        proc = cli(args, REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "SYNTHETIC.json").is_file() and (out / "PREPARED.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin"]


# -- class 2: a missing .sha256 is not a failed check; a restart is announced -----------------------

@pytest.fixture(scope="module")
def trained_run(twins, tmp_path_factory) -> Path:
    """One finished 2-iteration training run folder (config + run), copied by the tests that break it."""
    base = tmp_path_factory.mktemp("trained")
    cfg = run_config(base / "cfg.yaml", twins["ade20k"], base / "run")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = cli(["train", "--config", str(cfg)], REPO, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base


def _copy_run(trained_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run / "run", out)
    cfg = tmp_path / "cfg.yaml"
    raw = yaml.safe_load((trained_run / "cfg.yaml").read_text())
    raw["run"]["output_dir"] = str(out)  # same MLflow store: the copied folder names its run there
    cfg.write_text(yaml.safe_dump(raw))
    return cfg, out


@pytest.mark.slow  # trains a 2-iteration run (module fixture), then retrains / resumes it
def test_checkpoint_without_sidecar_is_kept_and_rehash_restores_it(trained_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cfg, out = _copy_run(trained_run, tmp_path)
    ckpts = out / "checkpoints"
    for digest in ckpts.glob("*.sha256"):  # the folder was copied with *.pt only
        digest.unlink()
    before = _tree(out)
    proc = cli(["train", "--config", str(cfg)], REPO, env)
    assert_refused(proc, "last.pt", "sha256", "checkpoint rehash")
    assert _tree(out) == before  # nothing retrained, nothing overwritten
    proc = cli(["evaluate", "--config", str(cfg)], REPO, env)
    assert_refused(proc, "final.pt", "checkpoint rehash")
    assert _tree(out) == before
    proc = cli(["checkpoint", "rehash", str(out)], REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("written") == len(list(ckpts.glob("*.pt"))) >= 2
    proc = cli(["train", "--config", str(cfg)], REPO, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {k: v for k, v in _tree(out).items() if k.endswith(".pt")} == \
        {k: v for k, v in before.items() if k.endswith(".pt")}


@pytest.mark.slow  # trains a 2-iteration run (module fixture), then retrains / resumes it
def test_restart_from_scratch_is_announced(trained_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cfg, out = _copy_run(trained_run, tmp_path)
    (out / "status.json").unlink()  # an unfinished run: it must resume or say it starts over
    (out / "metrics.json").unlink()
    for name in ("last.pt", "prev.pt", "final.pt"):
        if (out / "checkpoints" / name).exists():
            (out / "checkpoints" / name).write_bytes(b"torn")  # fails its (present) sha256
    proc = cli(["train", "--config", str(cfg)], REPO, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [line for line in proc.stderr.splitlines() if "starting over from iteration 0" in line]
    assert warned and "last.pt" in warned[0], proc.stderr[-2000:]


# -- class 3: duplicated input is refused, naming the duplicate -------------------------------------

def test_duplicate_key_in_params_yaml(tmp_path, run_cli):
    text = (REPO / "params.yaml").read_text()
    assert "\n  retries: " in text
    (tmp_path / "params.yaml").write_text(text.replace("\n  retries: ", "\n  retries: 5\n  retries: ", 1))
    proc = run_cli("study", "--params", "params.yaml", "--executor", "debug", cwd=tmp_path)
    assert_refused(proc, "params.yaml:", "duplicate key 'retries'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_duplicate_key_in_local_yaml(tmp_path, run_cli):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "local.yaml").write_text("executor:\n  slurm:\n    partition: a\n    partition: b\n")
    proc = run_cli("grid", "list", "--params", "params.yaml", cwd=tmp_path)
    assert_refused(proc, "local.yaml:4", "duplicate key 'partition'")


def test_duplicate_key_in_run_config(twins, tmp_path):
    cfg = run_config(tmp_path / "cfg.yaml", twins["ade20k"], tmp_path / "run")
    cfg.write_text(cfg.read_text() + "solver:\n  max_iter: 99\n")  # a second top-level `solver:`
    train = cli(["train", "--config", str(cfg)], REPO)
    assert_refused(train, "cfg.yaml", "duplicate key 'solver'")
    assert not (tmp_path / "run").exists()


def _pan_json(root: Path) -> Path:
    return root / "annotations" / "panoptic_train2017.json"


def _dup_annotation(data):
    data["annotations"].append(dict(data["annotations"][0]))
    return f"image id {data['annotations'][0]['image_id']!r} has two annotations"


def _dup_image(data):
    data["images"].append(dict(data["images"][0]))
    return f"image id {data['images'][0]['id']!r} is listed twice"


def _dup_segment(data):
    ann = next(a for a in data["annotations"] if a["segments_info"])
    ann["segments_info"].append(dict(ann["segments_info"][0]))
    return f"segment id {ann['segments_info'][0]['id']} is listed twice"


def _dup_category(data):
    data["categories"].append(dict(data["categories"][0]))
    return f"category id {data['categories'][0]['id']!r} is listed twice"


PANOPTIC_DUPLICATES = {"annotation": _dup_annotation, "image": _dup_image, "segment": _dup_segment,
                       "category": _dup_category}


@pytest.mark.parametrize("case", sorted(PANOPTIC_DUPLICATES))
def test_panoptic_json_duplicates(case, twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    path = _pan_json(root)
    data = json.loads(path.read_text())
    culprit = PANOPTIC_DUPLICATES[case](data)
    path.write_text(json.dumps(data))
    proc = cli(["data", "validate", "--dataset", "coco_panoptic", "--root", str(root)], REPO)
    assert_refused(proc, path.name, culprit)


def test_train_refuses_panoptic_image_annotated_twice(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    path = _pan_json(root)
    data = json.loads(path.read_text())
    culprit = _dup_annotation(data)
    path.write_text(json.dumps(data))
    train_refused(tmp_path, root, culprit, dataset="coco_panoptic")


def test_duplicate_key_in_panoptic_json(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    path = _pan_json(root)
    path.write_text(path.read_text().replace('"images":', '"images": [], "images":', 1))
    proc = cli(["data", "validate", "--dataset", "coco_panoptic", "--root", str(root)], REPO)
    assert_refused(proc, path.name, "duplicate key 'images'")


# -- class 4: cross-references are checked at plan time --------------------------------------------

CROSS_REFERENCES = {
    "row_not_in_paper_numbers": (lambda p: p["grid"]["table4"]["cells"][3].update(row="(b) MaskFormr-bipartite"),
                                 ["grid.table4.cells[3].row", "MaskFormr-bipartite", "paper_numbers.csv"]),
    "column_not_a_paper_metric": (lambda p: p["grid"]["table4"].update(columns={"mIoU": "val/mIoU", "PQst": "val/PQSt"}),
                                  ["grid.table4.columns", "'PQst'"]),
    "metric_key_not_produced": (lambda p: p["grid"]["table4"].update(columns={"mIoU": "val/mIOU", "PQSt": "val/PQSt"}),
                                ["grid.table4.columns", "val/mIOU"]),
    "table_not_in_paper_numbers": (lambda p: p["grid"].update(table9=p["grid"]["table4"]),
                                   ["grid.table9", "paper_numbers.csv"]),
    "row_column_given_twice": (lambda p: p["grid"]["table4"]["cells"].append(dict(p["grid"]["table4"]["cells"][3])),
                               ["grid.table4.cells[", "(b) MaskFormer-bipartite", "already given"]),
}


@pytest.mark.parametrize("case", sorted(CROSS_REFERENCES))
def test_cross_reference_typo_is_refused_before_any_cell(case, tmp_path, run_cli):
    mutate, culprits = CROSS_REFERENCES[case]
    work = _study_dir(tmp_path, mutate)
    commands = [["study", "--params", "params.yaml", "--executor", "debug"]]
    if case == "metric_key_not_produced":  # the same check guards every command that reads the grid
        commands += [["grid", "list", "--params", "params.yaml"], ["tables", "--params", "params.yaml"]]
    for args in commands:
        assert_refused(run_cli(*args, cwd=work), *culprits)
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml"]


# -- class 5: `status` checks liveness before saying running ----------------------------------------

def _project(tmp_path: Path, tables=("table7",)) -> Path:
    """A project folder: params.yaml with relative runs_root/data_root (the defaults) and a few cells."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["grid"] = {t: dict(raw["grid"][t], cells=raw["grid"][t]["cells"][:3]) for t in tables}
    assert raw["study"].get("runs_root", "runs") == "runs"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return proj


def _run_dirs(proj: Path, monkeypatch) -> list[Path]:
    from pipeline.grid import expand
    from pipeline.params import load_params

    monkeypatch.chdir(proj)
    grid = expand(load_params("params.yaml"))
    monkeypatch.chdir(REPO)
    return [proj / u.run_dir for u in grid.train.values()]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_running_with_dead_process_is_not_running(tmp_path, monkeypatch, run_cli):
    import socket

    proj = _project(tmp_path)
    dead, alive = _run_dirs(proj, monkeypatch)[:2]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for run_dir, pid in ((dead, _dead_pid()), (alive, sleeper.pid)):
            run_dir.mkdir(parents=True)
            (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": pid,
                                                             "host": socket.gethostname()}))
        proc = run_cli("status", "--json", "--params", "params.yaml", cwd=proj)
        assert proc.returncode == 0, proc.stderr
        cells = {c["cell_id"]: c for c in json.loads(proc.stdout)}
        assert cells[dead.name]["state"] == "interrupted"
        assert f"process {json.loads((dead / 'status.json').read_text())['pid']}" in cells[dead.name]["reason"]
        assert cells[alive.name]["state"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_status_running_with_finished_slurm_job_is_not_running(tmp_path, monkeypatch, run_cli, services):
    proj = _project(tmp_path)
    run_dir = _run_dirs(proj, monkeypatch)[0]
    run_dir.mkdir(parents=True)
    # A job id the cluster does not know (finished and purged, or never there): squeue lists nothing.
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "slurm_job_id": "987654321"}))
    proc = run_cli("status", "--json", "--params", "params.yaml", cwd=proj, env=services.subprocess_env())
    assert proc.returncode == 0, proc.stderr
    cell = next(c for c in json.loads(proc.stdout) if c["cell_id"] == run_dir.name)
    assert cell["state"] == "interrupted" and "SLURM job 987654321" in cell["reason"], cell


# -- class 6: OS errors are one line naming the path, with no temp file left -------------------------

def _limit_file_size(limit: int):
    def preexec():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_tables_on_a_full_disk(tmp_path, run_cli):
    proj = _project(tmp_path)
    assert run_cli("grid", "plan", "--params", "params.yaml", cwd=proj).returncode == 0  # what `study` writes first
    proc = subprocess.run([sys.executable, "-m", "pipeline", "tables", "--params", "params.yaml"], cwd=proj,
                          capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(64))
    assert_refused(proc, str(Path("reports") / "tables"), "File too large")
    leftovers = [p.name for p in (proj / "reports").rglob("*") if p.is_file()]
    assert not [n for n in leftovers if n.endswith(".tmp") or n.startswith(".")], leftovers


def test_tables_where_a_table_is_a_folder(tmp_path, run_cli):
    """os.replace fails after the temp file was written: the temp file must go too."""
    proj = _project(tmp_path)
    assert run_cli("grid", "plan", "--params", "params.yaml", cwd=proj).returncode == 0  # what `study` writes first
    blocker = proj / "reports" / "tables" / "table7.csv"
    (blocker / "inside").mkdir(parents=True)
    proc = run_cli("tables", "--params", "params.yaml", cwd=proj)
    assert_refused(proc, "table7.csv")
    assert [p.name for p in (proj / "reports" / "tables").iterdir() if p.name.startswith(".")] == []
    assert (blocker / "inside").is_dir()


# -- class 7: relative paths in params resolve against the params file's folder ----------------------

def test_commands_from_another_folder_behave_as_from_the_project(tmp_path, monkeypatch, run_cli):
    proj = _project(tmp_path)
    for run_dir in _run_dirs(proj, monkeypatch):
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"val/mIoU": 41.5, "val/PQSt": 20.0}))
        (run_dir / "status.json").write_text(json.dumps({"status": "done"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = str(proj / "params.yaml")
    plan = run_cli("grid", "plan", "--params", params, cwd=elsewhere)  # the study's plan, as `study` writes it
    assert plan.returncode == 0 and (proj / "reports" / "study" / "plan.json").is_file(), plan.stderr
    here = run_cli("status", "--json", "--params", "params.yaml", cwd=proj)
    there = run_cli("status", "--json", "--params", params, cwd=elsewhere)
    assert here.returncode == there.returncode == 0, there.stderr
    states = [(c["cell_id"], c["state"]) for c in json.loads(there.stdout)]
    assert states == [(c["cell_id"], c["state"]) for c in json.loads(here.stdout)]
    assert sum(s == "done" for _, s in states) >= 1
    proc = run_cli("tables", "--params", params, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    table = (proj / "reports" / "tables" / "table7.csv").read_text()
    assert "41.5" in table
    assert list(elsewhere.iterdir()) == []  # nothing written where the command was run


# -- class 8: ignored or suspicious input is an error or a counted warning ---------------------------

def test_label_without_image(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    image = sorted((root / "images" / "training").glob("*.jpg"))[0]
    image.unlink()
    proc = cli(["data", "validate", "--dataset", "ade20k", "--root", str(root)], REPO)
    assert_refused(proc, image.stem + ".png", "label without an image")
    train_refused(tmp_path, root, image.stem + ".png")


def test_panoptic_png_without_annotation(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    stray = root / "panoptic_train2017" / "stray.png"
    stray.write_bytes(next((root / "panoptic_train2017").glob("*.png")).read_bytes())
    proc = cli(["data", "validate", "--dataset", "coco_panoptic", "--root", str(root)], REPO)
    assert_refused(proc, "stray.png", "no annotation")


def test_panoptic_image_without_annotation_is_counted(twins, tmp_path):
    root = copy_twin(twins["coco_panoptic"], tmp_path / "data")
    path = _pan_json(root)
    data = json.loads(path.read_text())
    gone = data["annotations"].pop()
    path.write_text(json.dumps(data))
    (root / "panoptic_train2017" / gone["file_name"]).unlink()
    proc = cli(["data", "validate", "--dataset", "coco_panoptic", "--root", str(root)], REPO)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warning and f"1 of {len(data['images'])} images have no annotation" in warning[0], proc.stderr


def _all_ignore(labels: list[Path]) -> None:
    for label in labels:
        arr = np.array(Image.open(label))
        Image.fromarray(np.full_like(arr, 255)).save(label)


def test_labels_all_ignore_counted_then_refused(twins, tmp_path):
    root = copy_twin(twins["ade20k"], tmp_path / "data")
    labels = sorted((root / "annotations_detectron2" / "training").glob("*.png"))
    _all_ignore(labels[:2])
    proc = cli(["data", "validate", "--dataset", "ade20k", "--root", str(root)], REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"2 of {len(labels)} train labels are all ignore" in proc.stderr, proc.stderr
    _all_ignore(labels)
    proc = cli(["data", "validate", "--dataset", "ade20k", "--root", str(root)], REPO)
    assert_refused(proc, f"all {len(labels)} train labels are all ignore")
    train_refused(tmp_path, root, "all ignore")


def test_extra_prediction_files_are_counted(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    for stem in ("a", "b"):
        Image.fromarray(label).save(gt / f"{stem}.png")
        Image.fromarray(label).save(pred / f"{stem}.png")
    Image.fromarray(label).save(pred / "zzz_not_in_gt.png")
    proc = cli(["evaluate-semantic", "--gt-folder", str(gt), "--pred-folder", str(pred), "--num-classes", "3",
                "--ignore-label", "255", "--workers", "1"], REPO)
    assert proc.returncode == 0, proc.stderr
    assert "1 prediction file(s) without a GT file are not scored" in proc.stderr
    assert "zzz_not_in_gt" in proc.stderr


def test_extra_panoptic_prediction_pngs_are_counted(twins, tmp_path):
    import shutil

    root = twins["coco_panoptic"]
    gt_json, gt_dir = root / "annotations" / "panoptic_val2017.json", root / "panoptic_val2017"
    pred_dir = tmp_path / "pred"
    shutil.copytree(gt_dir, pred_dir)  # the ground truth as the prediction (PQ 100), plus a stray PNG
    shutil.copy(next(pred_dir.glob("*.png")), pred_dir / "zzz_not_listed.png")
    proc = cli(["evaluate-panoptic", "--gt-json", str(gt_json), "--gt-folder", str(gt_dir), "--pred-json", str(gt_json),
                "--pred-folder", str(pred_dir), "--workers", "1"], REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 PNG(s) not named by" in proc.stderr and "zzz_not_listed.png" in proc.stderr, proc.stderr


# -- a failed cell's recorded reason is the exception's message, not a log line ---------------------

def chatty_failing_cell(config) -> dict:
    """Stand-in cell (imported by the study job): logs a line, then fails with a two-line message."""
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").write_text(json.dumps({"status": "running"}))
    print("iteration 3: loss 1.23 (a progress line, not the cause)", file=sys.stderr)
    raise ValueError("the first line names the real cause: data.root is wrong\nsecond line: details")


def test_failure_reason_is_the_exception_message(tmp_path, run_cli):
    proj = _project(tmp_path)
    proc = run_cli("study", "--params", "params.yaml", "--executor", "debug", "--retries", "0", "--table", "table7",
                   "--cell-fn", "tests.test_bad_input:chatty_failing_cell", cwd=proj,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = proj / "reports" / "study" / "cells.json"
    assert summary.is_file(), proc.stderr[-3000:]
    failed = [c for c in json.loads(summary.read_text())["cells"] if c["status"] == "failed"]
    assert failed, summary.read_text()
    for c in failed:  # training cells: the message itself; evaluation variants: their training's message
        assert "ValueError: the first line names the real cause" in c["reason"], c
        assert c["kind"] == "eval" or c["reason"].startswith("ValueError: the first line"), c


def test_explicit_output_file_is_never_replaced_silently(tmp_path):
    """Class 1 for single files: `--out` / `--output` of an existing file (the user's, or an earlier run's) is
    refused naming it and left byte for byte; `--overwrite` replaces it; a folder is refused even then."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    Image.fromarray(label).save(gt / "a.png")
    Image.fromarray(label).save(pred / "a.png")
    mine = tmp_path / "results.json"
    mine.write_text("my notes, not metrics\n")
    base = ["evaluate-semantic", "--gt-folder", str(gt), "--pred-folder", str(pred), "--num-classes", "3",
            "--ignore-label", "255", "--workers", "1", "--out", str(mine)]
    assert_refused(cli(base, REPO), str(mine), "--overwrite")
    assert mine.read_text() == "my notes, not metrics\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "pred", "results.json"]  # no temp file
    proc = cli(base + ["--overwrite"], REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(mine.read_text())["mIoU"] == 100.0
    assert_refused(cli(base[:-1] + [str(gt), "--overwrite"], REPO), str(gt), "folder")
    for cmd in (["model-stats-table", "--params", str(REPO / "params.yaml"), "--params-only", "--out", str(mine)],
                ["evaluate", "--config", str(tmp_path / "none.yaml"), "--output", str(mine)]):
        assert_refused(cli(cmd, REPO), str(mine))  # refused before the params, config or data are read
