"""Grid expansion: dedup by train key, eval-only variants, seeds, ids, and every paper cell's model builds."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.grid import expand
from pipeline.params import load_params, validate_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", environ={})


def _row(grid, table, name):
    return next(r for r in grid.rows if r.table == table and r.row == name)


def test_paper_grid_dedups_shared_training_runs(params):
    grid = expand(params, "paper")
    ade_mf = _row(grid, "table2", "MaskFormer ADE20K")
    q100 = _row(grid, "table6", "Q100 ADE20K")
    assert ade_mf.eval_ids == q100.eval_ids  # one training run serves both tables
    assert len(ade_mf.eval_ids) == 3  # paper Sec. 4: median of 3
    assert len(_row(grid, "table2", "MaskFormer Cityscapes").eval_ids) == 5
    assert len(_row(grid, "table3", "MaskFormer R50+6Enc").eval_ids) == 1
    # Table 4b bipartite (Q = K = 150) is the queries table's Q150 run
    assert _row(grid, "table4", "(b) MaskFormer-bipartite").eval_ids == _row(grid, "table6", "Q150 ADE20K").eval_ids
    cfg = grid.train[ade_mf.eval_ids[0]].config
    assert cfg["solver"]["max_iter"] == 160000 and cfg["solver"]["ims_per_batch"] == 16
    assert cfg["solver"]["base_lr"] == 1e-4 and cfg["solver"]["backbone_multiplier"] == 0.1
    swin = grid.train[_row(grid, "table1", "MaskFormer Swin-L†").eval_ids[0]].config
    assert swin["solver"]["base_lr"] == 6e-5 and swin["solver"]["warmup_iters"] == 1500
    assert swin["data"]["crop_size"] == [640, 640]
    coco = grid.train[_row(grid, "table3", "MaskFormer R50+6Enc").eval_ids[0]].config
    assert coco["solver"]["schedule"] == "step" and coco["solver"]["steps"] == [369600]
    assert coco["model"]["pixel_decoder"] == "transformer_encoder" and coco["model"]["enc_layers"] == 6
    assert grid.gpu_hours() > 1000


def test_eval_only_variants_reuse_the_trained_cell(params):
    grid = expand(params, "smoke")
    general = grid.evals[_row(grid, "table7", "general ADE20K").eval_ids[0]]
    semantic = grid.evals[_row(grid, "table7", "semantic ADE20K").eval_ids[0]]
    assert general.is_variant and not semantic.is_variant
    assert general.train_id == semantic.train_id  # no retraining for another inference strategy
    assert general.config["test"]["strategy"] == "general_semantic"
    ms = grid.evals[grid.rows[1].eval_ids[0]]  # table1 R50 m.s.
    assert ms.is_variant and ms.config["test"]["tta"] is True
    # smoke: ResNet rows share SmokeR18, so R50/R101/R101c collapse into one training run
    assert _row(grid, "table1", "MaskFormer R50").eval_ids == _row(grid, "table1", "MaskFormer R101").eval_ids
    assert 30 <= len(grid.train) <= 45


def test_cell_id_changes_only_with_its_settings(params):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    before = expand(params, "smoke", ["table6"])
    raw2 = copy.deepcopy(raw)
    raw2["grid"]["table6"]["cells"][1]["dec_layers"] = 2
    after = expand(validate_params(raw2), "smoke", ["table6"])
    changed = [a for a, b in zip(before.rows, after.rows) if a.eval_ids != b.eval_ids]
    assert [r.row for r in changed] == ["Q20 ADE20K"]


def _model_keys(cfg):
    m = cfg["model"]
    return (m["arch"], m["backbone"], m["num_queries"], m["dec_layers"], m["dec_self_attention"], m["pixel_decoder"], m["box_head"])


@pytest.mark.slow
def test_every_paper_cell_builds_a_model(params):
    """Each distinct architecture of the paper grid builds on CPU (tiny decoder widths, small K) and runs 64x64."""
    from maskformer_core.models import build_model

    torch.set_num_threads(1)
    grid = expand(params, "paper")
    seen = {}
    for unit in grid.train.values():
        key = _model_keys(unit.config)
        seen.setdefault(key, unit.config["model"])
    assert len(seen) >= 20
    for key, m in seen.items():
        k = 5
        q = k if m["arch"] == "per_pixel_plus" else (None if m["arch"] == "per_pixel" else min(m["num_queries"], 12))
        model = build_model(arch=m["arch"], backbone=m["backbone"], num_classes=k, num_queries=q,
                            dec_layers=m["dec_layers"], dec_self_attention=m["dec_self_attention"],
                            pixel_decoder=m["pixel_decoder"], enc_layers=m["enc_layers"] and 1,
                            transformer_in_feature=m["transformer_in_feature"], box_head=m["box_head"],
                            hidden_dim=32, mask_dim=32, conv_dim=32, nheads=2, dim_feedforward=32)
        if m["backbone"] in ("R50", "Swin-T"):  # one forward per family keeps the test fast
            model.eval()
            with torch.no_grad():
                out = model(torch.zeros(1, 3, 64, 64))
            assert ("pred_masks" in out) or ("sem_seg_logits" in out), key


def test_every_cell_of_every_profile_is_a_valid_run_config(params):
    """Plan time: each unit's config parses as a RunConfig, with one spelling of the matching."""
    from pipeline.config import RunConfig

    for profile in params.profiles:
        grid = expand(params, profile)
        assert grid.train, profile
        for unit in [*grid.train.values(), *grid.evals.values()]:
            cfg = RunConfig.model_validate(unit.config)
            assert cfg.loss.matching in ("bipartite", "fixed", "box")
            assert cfg.run.output_dir.endswith(unit.run_dir.split("/")[-1])


def test_a_bad_cell_is_refused_at_plan_time_naming_it(params):
    """A recipe whose micro batch does not divide the per-process batch: an error before any job exists."""
    from pipeline.errors import UserError

    bad = params.model_copy(deep=True)
    bad.recipes["ade20k"].micro_batch = 3  # single_gpu: 8 images on one process; 8 % 3 != 0
    assert bad.profiles["single_gpu"].solver_for("ade20k").ims_per_batch == 8
    with pytest.raises(UserError, match=r"profile single_gpu: grid\.table\d\.cells\[\d+\].*micro_batch"):
        expand(bad, "single_gpu", ["table2"])


def test_config_model_section_matches_build_model_signature():
    """The run config's `model:` section is build_model's keyword arguments, with the same default values,
    and every official default there is `MODEL_DEFAULTS`' (one home: official add_mask_former_config).

    Exceptions: `weights` (config only: the released checkpoint to evaluate), `pixel_mean`/`pixel_std`
    (the ImageNet constants, not a study setting). A default of None (both sides) is a dependent default
    of maskformer_core.models.defaults, which build_model and resolve_defaults apply alike.
    """
    import dataclasses
    import inspect

    from maskformer_core.models import build_model
    from maskformer_core.models.backbones import build_backbone
    from maskformer_core.models.defaults import MODEL_DEFAULTS
    from pipeline.config import ModelConfig

    params = inspect.signature(build_model).parameters
    fields = ModelConfig.model_fields
    assert set(fields) - {"weights"} == set(params) - {"pixel_mean", "pixel_std"}
    official = dataclasses.asdict(MODEL_DEFAULTS)
    for name, field in fields.items():
        if name in ("weights", "num_classes"):  # num_classes: the dataset's K (config None until resolved)
            continue
        assert field.default == params[name].default, (name, field.default, params[name].default)
        if field.default is not None and name in official:
            assert field.default == official[name], name
    assert params["num_classes"].default is inspect.Parameter.empty  # K always comes from the dataset
    assert inspect.signature(build_backbone).parameters["drop_path"].default is None  # -> default_drop_path


def test_plan_resolves_the_dependent_model_defaults_build_model_would_pick(params):
    """The plan writes the values build_model would choose itself (Q 100, +6 Enc 6 layers, Swin drop path
    0.3, size divisibility 32), so the hash covers them; a per-pixel baseline keeps its backbone's padding."""
    grid = expand(params, "paper", ["table1", "table2", "table3"])
    swin = grid.train[_row(grid, "table1", "MaskFormer Swin-T").eval_ids[0]].config["model"]
    assert (swin["num_queries"], swin["drop_path"], swin["size_divisibility"], swin["enc_layers"]) == (100, 0.3, 32, 0)
    enc = grid.train[_row(grid, "table3", "MaskFormer R50+6Enc").eval_ids[0]].config["model"]
    assert (enc["enc_layers"], enc["drop_path"], enc["size_divisibility"]) == (6, None, 0)  # coco-panoptic: 0
    pp = grid.train[_row(grid, "table2", "PerPixelBaseline ADE20K").eval_ids[0]].config["model"]
    assert pp["num_queries"] is None and pp["size_divisibility"] is None


def test_grid_show_prints_the_resolved_config_the_engine_runs(params, run_cli):
    """`grid show`: the plan's config, complete (splits, strategy, thresholds, flip resolved at plan time)."""
    from pipeline.config import RunConfig

    unit = next(iter(expand(params, "smoke", ["table2"]).train.values()))
    out = run_cli("grid", "show", unit.train_id, "--profile", "smoke", cwd=REPO)
    assert out.returncode == 0, out.stderr
    shown = RunConfig.model_validate(yaml.safe_load(out.stdout))
    assert shown.to_dict() == RunConfig.model_validate(unit.config).to_dict()  # what the executor ships
    assert shown.data.train_split and shown.data.val_split and shown.test.strategy and shown.model.num_classes
    assert shown.test.overlap_threshold == 0.8 and shown.solver.base_lr is not None
