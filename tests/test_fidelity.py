"""Paper-profile fidelity (issue 14): what the paper profile feeds the core equals the official runs.

Each test pins one official behaviour on a tiny input: the resolved weights of the Swin-B IN-1K cells,
per-backbone pretrained sources (R-103 for R101c), the COCO panoptic batching (SIZE_DIVISIBILITY 0,
one image per forward pass, the per-GPU mask-loss normalisation), the Mapillary m.s. scales.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.grid import check_pretrained_files, expand, resolve_pretrained
from pipeline.errors import UserError
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", environ={})


@pytest.fixture(scope="module")
def paper(params):
    return expand(params, "paper", tables=["table1", "table3", "appendix4"])


def _train_cfg(grid, table, row, tta=False):
    r = next(r for r in grid.rows if r.table == table and r.row == row and bool(r.cell.tta) == tta)
    unit = grid.evals[r.eval_ids[0]]
    return grid.train[unit.train_id].config, unit.config


# ------------------------------------------------------------------------------ item 1 and 10: weights

def test_swin_b_in1k_cells_load_in1k_weights_and_dagger_cells_in22k(paper):
    for table in ("table1", "table3"):
        in1k, _ = _train_cfg(paper, table, "MaskFormer Swin-B")
        in22k, _ = _train_cfg(paper, table, "MaskFormer Swin-B†")
        assert in1k["model"]["pretrained"] == "hub:swin_base_patch4_window12_384.ms_in1k"
        assert in22k["model"]["pretrained"] == "hub:swin_base_patch4_window12_384.ms_in22k"
    r50, _ = _train_cfg(paper, "table1", "MaskFormer R50")
    assert r50["model"]["pretrained"] == "hub:resnet50.tv_in1k"  # torchvision R-50 (MODEL.WEIGHTS R-50.pkl)


def test_r101c_cells_take_their_own_local_r103_file(params, paper, tmp_path):
    r101c, _ = _train_cfg(paper, "table1", "MaskFormer R101c")
    assert r101c["model"]["pretrained"] == "data/weights/R-103.pkl"
    # "hub" alone cannot give R-103: the error names the profile key and where to put the file
    with pytest.raises(UserError, match=r"profiles.paper.model.pretrained.*R101c.*data/weights/R-103.pkl"):
        resolve_pretrained("hub", "R101c", None, "profiles.paper.model.pretrained")
    # a missing local file stops the study before any job, naming the file and its official source
    with pytest.raises(UserError, match=r"R101c.*not found at data/weights/R-103.pkl.*detectron2://DeepLab/R-103.pkl"):
        check_pretrained_files(paper, "profiles.paper.model.pretrained")
    spec = {"*": "hub", "R101c": str(tmp_path / "R-103.pkl")}
    assert resolve_pretrained(spec, "R101c", None, "x") == str(tmp_path / "R-103.pkl")
    assert resolve_pretrained(spec, "Swin-T", None, "x") == "hub:swin_tiny_patch4_window7_224.ms_in1k"
    with pytest.raises(UserError, match="Swin-B:in1k"):  # a 22k file never serves an in1k row silently
        resolve_pretrained({"Swin-B": "swin_b_22k.pth"}, "Swin-B", "in1k", "x")


def test_pretrained_mapping_keys_are_validated():
    from pipeline.params import ProfileModel

    with pytest.raises(ValueError, match="unknown key 'R103'"):
        ProfileModel(pretrained={"R103": "x.pkl"})
    assert ProfileModel(pretrained={"*": "hub", "Swin-B:in1k": "hub"}).pretrained["Swin-B:in1k"] == "hub"


# ------------------------------------------------------------------------------ item 2: COCO panoptic batching

def test_coco_cells_pad_nothing_and_run_one_image_per_forward_pass(paper):
    for row in ("MaskFormer R50+6Enc", "MaskFormer Swin-B†"):
        cfg, _ = _train_cfg(paper, "table3", row)
        assert cfg["model"]["size_divisibility"] == 0  # coco-panoptic configs: SIZE_DIVISIBILITY 0
        assert cfg["solver"]["ims_per_batch"] == 64 and cfg["solver"]["micro_batch"] == 1  # 64 GPUs x 1 image
    ade, _ = _train_cfg(paper, "table1", "MaskFormer R50")
    assert ade["model"]["size_divisibility"] == 32 and ade["solver"]["micro_batch"] is None  # the plan resolves 32


def test_accumulated_passes_keep_the_official_mask_loss_normalisation():
    """Two images as two official GPUs: num_masks = all masks / 2 in each pass; the mean of the two passes'
    mask terms equals the one-batch terms of the same (equal-size) images."""
    from maskformer_core.criterion import build_criterion
    from pipeline.distributed import DistEnv
    from pipeline.trainer import step_num_masks

    g = torch.Generator().manual_seed(0)
    crit = build_criterion("maskformer", 3, dec_layers=1)
    outputs = {"pred_logits": torch.randn(2, 5, 4, generator=g), "pred_masks": torch.randn(2, 5, 4, 4, generator=g)}
    masks = torch.rand(4, 16, 16, generator=g) > 0.5
    targets = [{"labels": torch.tensor([1]), "masks": masks[:1]},
               {"labels": torch.tensor([0, 2, 1]), "masks": masks[1:]}]
    full = crit(outputs, targets)
    n = step_num_masks(targets, 2, DistEnv(), torch.device("cpu"))
    assert n == 2.0
    per = [crit({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]], num_masks=n) for i in range(2)]
    for key in ("loss_mask", "loss_dice"):
        torch.testing.assert_close((per[0][key] + per[1][key]) / 2, full[key])


@pytest.fixture(scope="module")
def coco_twin(make_twin) -> Path:
    return make_twin("coco_panoptic", num_images=8, num_classes=4, image_size=(40, 56), seed=1)


def _coco_config(root: Path, out: Path, micro: int | None, **run):
    from pipeline.config import parse_config

    return parse_config({
        "model": {"backbone": "SmokeR18", "hidden_dim": 32, "mask_dim": 32, "conv_dim": 32, "dim_feedforward": 32,
                  "nheads": 2, "num_queries": 6, "dec_layers": 1, "size_divisibility": 0, "dropout": 0.0},
        "data": {"dataset": "coco_panoptic", "root": str(root), "short_sizes": [27, 35, 45],
                 "max_size": 80, "test_short_size": 30, "test_max_size": 60, "num_workers": 0},
        "solver": {"max_iter": 2, "ims_per_batch": 4, "micro_batch": micro},
        "test": {"max_images": 1, "fps_images": 0, "fps_warmup": 0},
        "run": {"output_dir": str(out), "tracking": False, "device": "cpu", "threads": 1, "measure_fps": False,
                "log_period": 1, **run},
    })


def test_coco_training_pass_sees_each_image_unpadded(coco_twin, tmp_path, monkeypatch):
    from pipeline import engine, trainer

    seen = []
    real = trainer.prepare_batch

    def spy(batch, model, device, ignore_label):
        images, targets = real(batch, model, device, ignore_label)
        seen.append((tuple(images.shape), [tuple(b["image"].shape[-2:]) for b in batch]))
        return images, targets

    monkeypatch.setattr(trainer, "prepare_batch", spy)

    def run(out, micro):
        seen.clear()
        engine.run_cell(_coco_config(coco_twin, out, micro))
        return list(seen)

    passes = run(tmp_path / "micro", 1)
    assert len(passes) == 8  # 2 iterations x 4 images, one per forward pass
    assert all(len(sizes) == 1 and shape[-2:] == sizes[0] for shape, sizes in passes)
    joint = run(tmp_path / "joint", None)  # the whole batch in one pass pads to its largest image
    assert len(joint) == 2 and any(any(s != shape[-2:] for s in sizes) for shape, sizes in joint)


def test_micro_batch_that_does_not_divide_the_per_process_batch_is_refused_at_parse_time(coco_twin, tmp_path):
    with pytest.raises(UserError, match=r"solver.micro_batch=3 must divide .* = 4"):
        _coco_config(coco_twin, tmp_path / "x", 3)


@pytest.mark.slow
def test_two_processes_of_two_passes_train_like_one_process_of_four(coco_twin, tmp_path):
    """The per-pass normalisation holds across processes: 2 gloo processes x 2 one-image passes give the
    same losses as 1 process x 4 passes (both: 4 official GPUs of one image)."""
    import json

    from pipeline.engine import run_cell

    losses = {}
    for name, gpus in (("ddp", 2), ("single", 1)):
        run_cell(_coco_config(coco_twin, tmp_path / name, 1, num_gpus=gpus))
        log = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["train/total_loss"] for line in log]
    assert len(losses["single"]) == 2
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-5)


# ------------------------------------------------------------------------------ item 3: Mapillary m.s.

def test_mapillary_ms_scales_are_half_one_and_one_and_a_half_of_the_test_size(paper):
    from maskformer_core.data import get_metadata
    from maskformer_core.data.transforms import shortest_edge_shape
    from maskformer_core.inference import tta_input_shapes
    from pipeline.config import RunConfig, resolve_defaults

    _, ev = _train_cfg(paper, "appendix4", "MaskFormer R50", tta=True)
    test = ev["test"]
    assert test["tta"] and test["tta_scales"] == [0.5, 1.0, 1.5] and test.get("tta_sizes") is None
    resolved = resolve_defaults(RunConfig.model_validate(ev), get_metadata("mapillary_vistas"))
    assert resolved.test.tta_scales == [0.5, 1.0, 1.5] and resolved.test.tta_sizes is None
    # a 4:3 image (4000 x 3000): single scale = long side 2048 (Base-MapillaryVistas-65.yaml MIN/MAX_SIZE_TEST 2048)
    single = shortest_edge_shape(3000, 4000, resolved.data.test_short_size, resolved.data.test_max_size)
    assert single == (1536, 2048)
    shapes = tta_input_shapes(*single, scales=test["tta_scales"])
    assert shapes == [(768, 1024), (1536, 2048), (2304, 3072)]
