"""One result hash (pipeline.config.result_hash): cell ids, the resume check and the MLflow tags read one key
list; the plan resolves the metadata defaults and the job checks the data on disk agrees (issue 11)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from maskformer_core.data.metadata import get_metadata
from pipeline.config import RESULT_FREE_KEYS, flatten, parse_config, result_hash, training_keys_differ
from pipeline.errors import UserError
from pipeline.grid import expand, resolve_cell
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", environ={})


def _cell(params, table="table2", row="MaskFormer ADE20K"):
    return next(c for c in params.grid[table].cells if c.row == row)


def _ids(params, profile="smoke", **kw):
    tcfg, _, tid, _ = resolve_cell(params, profile, kw.pop("cell", None) or _cell(params), 0, where="test", **kw)
    return tcfg, tid


def test_the_cell_id_is_the_slug_plus_the_configs_own_result_hash(params):
    grid = expand(params, "smoke", ["table2", "table7"])
    for unit in grid.train.values():
        assert unit.train_id.endswith("-" + result_hash(unit.config, "train"))
        assert unit.config["run"]["output_dir"].endswith(unit.train_id)
    variants = [e for e in grid.evals.values() if e.is_variant]
    assert variants
    for unit in variants:
        assert unit.eval_id.endswith("-" + result_hash(unit.config, "eval"))
        assert result_hash(unit.config, "train") == result_hash(grid.train[unit.train_id].config, "train")


def test_data_version_and_world_size_change_the_id(params):
    base, tid = _ids(params, data_versions={"ade20k": "aaaa"})
    _, other_data = _ids(params, data_versions={"ade20k": "bbbb"})
    assert base["data"]["version"] == "aaaa" and other_data != tid
    wide = params.model_copy(deep=True)
    wide.profiles["smoke"].gpus = {"default": 2}  # same total batch (2), 1 image per process instead of 2
    two, tid2 = _ids(wide, data_versions={"ade20k": "aaaa"})
    assert two["run"]["num_gpus"] == 2 and tid2 != tid
    assert training_keys_differ(base, two) == ["run.num_gpus"]  # resume refuses what the hash tells apart


def test_a_moved_weights_file_keeps_the_id_and_resumes_another_file_does_not(params):
    cfg = parse_config(_ids(params, data_versions={"ade20k": "v"})[0]).to_dict()
    moved, other, hub = copy.deepcopy(cfg), copy.deepcopy(cfg), copy.deepcopy(cfg)
    cfg["model"]["pretrained"] = "data/weights/R-50.pkl"
    moved["model"]["pretrained"] = "/scratch/me/R-50.pkl"
    other["model"]["pretrained"] = "data/weights/R-101.pkl"
    hub["model"]["pretrained"] = "hub:resnet50.a1_in1k"
    assert result_hash(moved) == result_hash(cfg) and training_keys_differ(cfg, moved) == []
    for changed in (other, hub):
        assert result_hash(changed) != result_hash(cfg)
        assert training_keys_differ(cfg, changed) == ["model.pretrained"]


def test_the_resume_check_and_the_hash_read_the_same_keys(params):
    """Changing any single key moves the train hash exactly when the resume check names it."""
    cfg = parse_config(_ids(params, data_versions={"ade20k": "v"})[0]).to_dict()
    for key, value in flatten(cfg).items():
        changed = copy.deepcopy(cfg)
        node = changed
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            continue  # a value of another type may not validate; numbers and strings cover every section
        node[leaf] = value + 1 if isinstance(value, (int, float)) else value + "x"
        try:
            parse_config(changed)
        except UserError:
            continue
        differs = result_hash(changed) != result_hash(cfg)
        assert differs == bool(training_keys_differ(cfg, changed)), key
        assert differs != any(key == k or key.startswith(k + ".") for k in RESULT_FREE_KEYS) or key.startswith("test."), key


def test_the_plan_holds_the_metadata_defaults_without_prepared_data(params, tmp_path):
    """data roots that do not exist yet: the official metadata, or the twin params.yaml describes."""
    real = params.model_copy(deep=True)
    real.profiles["paper"].data_root = str(tmp_path / "nowhere")
    tcfg, _ = _ids(real, "paper")
    official = get_metadata("ade20k")
    assert tcfg["model"]["num_classes"] == official.num_classes == 150
    assert (tcfg["data"]["train_split"], tcfg["data"]["val_split"]) == (official.train_split, official.test_split)
    assert tcfg["test"]["tta_sizes"] == list(official.tta_sizes) and tcfg["test"]["strategy"] == "semantic"
    twin = params.model_copy(deep=True)
    twin.profiles["smoke"].data_root = str(tmp_path / "nowhere")
    assert _ids(twin)[0]["model"]["num_classes"] == params.data["ade20k"]["num_classes"]


def test_the_job_refuses_data_that_disagrees_with_the_plan(twin_root, tmp_path):
    """The plan said K = 8 (params.yaml twin size); the twin on disk has 5 classes: an error naming the key."""
    from pipeline.engine import check_data

    cfg = parse_config({"model": {"backbone": "SmokeR18", "num_classes": 8},
                        "data": {"dataset": "ade20k", "root": str(twin_root)},
                        "run": {"output_dir": str(tmp_path / "run"), "tracking": False}})
    with pytest.raises(UserError, match=r"model\.num_classes=8 .* has 5 classes"):
        check_data(cfg)
    bad_split = parse_config({"model": {"backbone": "SmokeR18"},
                              "data": {"dataset": "ade20k", "root": str(twin_root), "val_split": "valid"},
                              "run": {"output_dir": str(tmp_path / "run"), "tracking": False}})
    with pytest.raises(UserError, match=r"data\.val_split='valid' is not a split of ade20k"):
        check_data(bad_split)
    assert not (tmp_path / "run").exists()
