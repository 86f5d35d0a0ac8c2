"""The default (smoke) study's panoptic settings: per-task solver overrides, K = 4 panoptic twins, the COCO twin's class boxes."""
from __future__ import annotations

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.grid import expand
from pipeline.params import load_params
from tests._study_helpers import REPO, write_params


def test_panoptic_cells_train_longer_semantic_cells_do_not(tmp_path):
    params = load_params(write_params(tmp_path, {"table5": slice(1, 2), "table4": slice(0, 2)}), environ={})
    smoke = params.profiles["smoke"]
    grid = expand(params, "smoke")
    iters = {u.config["data"]["dataset"]: u.config["solver"]["max_iter"] for u in grid.train.values()}
    assert iters == {"coco_panoptic": smoke.solver_by_task["panoptic"].max_iter, "ade20k": smoke.solver.max_iter}
    assert iters["coco_panoptic"] > iters["ade20k"]
    # everything else of the panoptic solver is the profile's (lr, batch, warmup)
    pan = next(u.config["solver"] for u in grid.train.values() if u.config["data"]["dataset"] == "coco_panoptic")
    assert (pan["base_lr"], pan["ims_per_batch"], pan["warmup_iters"]) == (
        smoke.solver.base_lr, smoke.solver.ims_per_batch, smoke.solver.warmup_iters)


def test_default_queries_only_replace_the_papers_default(tmp_path):
    params = load_params(write_params(tmp_path, {"table6": slice(0, 7), "table2": slice(2, 3)}), environ={})
    assert params.profiles["smoke"].default_queries == 20
    grid = expand(params, "smoke")
    rows = {r.row: r for r in grid.rows}
    queries = {row: grid.evals[r.eval_ids[0]].config["model"]["num_queries"] for row, r in rows.items()}
    assert queries["MaskFormer ADE20K"] == 20  # Table 2's main model: the paper's default 100 -> 20
    assert [queries[f"Q{q} ADE20K"] for q in (20, 50, 100, 150, 300, 1000)] == [20, 50, 100, 150, 300, 1000]
    assert queries["PerPixelBaseline+ ADE20K"] == grid.evals[rows["PerPixelBaseline+ ADE20K"].eval_ids[0]].config[
        "model"]["num_classes"]  # Q = K rows keep K
    assert rows["MaskFormer ADE20K"].eval_ids == rows["Q20 ADE20K"].eval_ids  # one run, not two


def test_shipped_panoptic_twins_are_k4_and_keep_the_papers_thresholds():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["data"]["coco_panoptic"]["num_classes"] == raw["data"]["ade20k_panoptic"]["num_classes"] == 4
    assert "test" not in raw["profiles"]["smoke"] or not {"object_mask_threshold", "overlap_threshold"} & set(
        raw["profiles"]["smoke"]["test"])


def test_unknown_task_in_solver_by_task_is_an_error(tmp_path):
    path = write_params(tmp_path, {"table5": slice(0, 1)})
    raw = yaml.safe_load(path.read_text())
    raw["profiles"]["smoke"]["solver_by_task"] = {"instance": {"max_iter": 10}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    with pytest.raises(UserError, match=r"profiles\.smoke\.solver_by_task"):
        load_params(path, environ={})



def test_queries_by_matching_apply_to_the_box_matched_cell_only(tmp_path):
    path = write_params(tmp_path, {"table5": slice(0, 2)})
    raw = yaml.safe_load(path.read_text())
    raw["profiles"]["smoke"]["queries_by_matching"] = {"box": 7}
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    params = load_params(path, environ={})
    grid = expand(params, "smoke")
    queries = {u.config["loss"]["matching"]: u.config["model"]["num_queries"] for u in grid.train.values()}
    assert queries == {"box": 7, "bipartite": params.profiles["smoke"].default_queries}
    raw["profiles"]["smoke"]["queries_by_matching"] = {"boxes": 10}
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    with pytest.raises(UserError, match=r"profiles\.smoke\.queries_by_matching"):
        load_params(path, environ={})


def test_shipped_table5_rows_train_the_same_queries_on_the_class_boxes_twin(tmp_path):
    """Table 5 at smoke scale compares box and mask matching at equal queries; what lets the box row find
    things is the COCO twin's class_boxes (params.yaml data.coco_panoptic), not a per-matching count."""
    params = load_params(write_params(tmp_path, {"table5": slice(0, 2)}), environ={})
    grid = expand(params, "smoke")
    queries = {u.config["loss"]["matching"]: u.config["model"]["num_queries"] for u in grid.train.values()}
    assert queries == {"box": 20, "bipartite": 20} == {m: params.profiles["smoke"].default_queries for m in queries}
    assert params.data["coco_panoptic"]["class_boxes"] is True


def test_report_states_which_twins_have_class_boxes(tmp_path):
    """The report's "what the profile changes" list names the class_boxes twins, and only while set."""
    from pipeline.report import profile_settings_html

    assert "own box shape" in profile_settings_html(REPO / "params.yaml", "smoke")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    line = next(x for x in profile_settings_html(REPO / "params.yaml", "smoke").split("<li>") if "own box shape" in x)
    assert line.split(":")[-1].split("<")[0].strip() == "coco_panoptic"
    raw["data"]["coco_panoptic"].pop("class_boxes")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    html_without = profile_settings_html(tmp_path / "params.yaml", "smoke")
    assert "twins (K classes, images)" in html_without and "own box shape" not in html_without
