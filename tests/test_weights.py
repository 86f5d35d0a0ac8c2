"""Tests of pretrained-weight handling: numeric equivalence with torchvision/timm after conversion,
key round trips (detectron2 .pkl <-> ours <-> timm/torchvision), the restricted unpickler, and loaders."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from maskformer_core.errors import CheckpointError, ConfigError
from maskformer_core.models import build_model
from maskformer_core.models.backbones import build_backbone
from maskformer_core.models.weights import (
    d2_resnet_to_torchvision, d2_to_ours, load_backbone_weights, load_official_model, load_weights_file,
    official_swin_to_timm, ours_to_d2, timm_swin_to_official, torchvision_resnet_to_d2,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5


def _tv_stage_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.act1(model.bn1(model.conv1(x)))) if hasattr(model, "act1") else \
        model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
        outs.append(x)
    return outs


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float32 reassociation (FrozenBN folds scale/shift differently from BatchNorm)."""
    assert a.shape == b.shape
    assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6, float((a - b).abs().max())


def _write_d2_pkl(path: Path, sd: dict[str, torch.Tensor]) -> None:
    """What detectron2's convert-torchvision-to-d2.py writes: numpy arrays under "model"."""
    obj = {"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "torchvision", "matching_heuristics": True}
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture(scope="module")
def tv_r50():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    _randomise_bn(model)
    return model


def test_r50_from_torchvision_is_numerically_identical(tv_r50):
    ours = build_backbone("R50").eval()
    ours.load_state_dict(torchvision_resnet_to_d2(tv_r50.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = _tv_stage_outputs(tv_r50, x)
        feats = ours(x)
    for r, name in zip(ref, ("res2", "res3", "res4", "res5")):
        _assert_same(feats[name], r)


def test_resnet_round_trip_torchvision_d2pkl_ours(tv_r50, tmp_path):
    tv = {k: v for k, v in tv_r50.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    ours = torchvision_resnet_to_d2(tv_r50.state_dict())
    assert "stem.conv1.norm.running_var" in ours and "res5.2.conv3.norm.bias" in ours
    assert "res2.0.shortcut.norm.weight" in ours and "res3.0.shortcut.weight" in ours
    pkl = tmp_path / "R-50.pkl"
    _write_d2_pkl(pkl, ours_to_d2(ours))
    loaded = d2_to_ours(load_weights_file(pkl))
    assert set(loaded) == set(ours)
    back = d2_resnet_to_torchvision(loaded)
    assert set(back) == set(tv)
    for k in tv:
        assert torch.equal(back[k], tv[k]), k


def test_r101c_matches_timm_resnet101s_with_multigrid(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet101s", pretrained=False, num_classes=0).eval()
    for block, dilation in zip(ref.layer4, (1, 2, 4)):  # detectron2 RES5_MULTI_GRID [1, 2, 4], stride 2 kept
        block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
    _randomise_bn(ref, seed=1)
    ours = build_backbone("R101c").eval()
    sd = torchvision_resnet_to_d2(ref.state_dict(), deep_stem=True)
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _tv_stage_outputs(ref, x)
        feats = ours(x)
    for r, name in zip(expected, ("res2", "res3", "res4", "res5")):
        _assert_same(feats[name], r)
    back = d2_resnet_to_torchvision(sd, deep_stem=True)
    tv = {k: v for k, v in ref.state_dict().items() if "num_batches" not in k}
    assert set(back) == set(tv) and all(torch.equal(back[k], tv[k]) for k in tv)


def _tiny_timm_swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=128, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                           num_classes=10, always_partition=True, strict_img_size=False).eval()


def test_swin_matches_timm_on_window_multiple_input_and_round_trips():
    ref = _tiny_timm_swin()
    ours = build_backbone("SmokeSwin").eval()  # same architecture: C 24, depths 2-2-2-2, heads 1-2-4-8, window 4
    converted = timm_swin_to_official(ref.state_dict())
    assert "layers.0.downsample.reduction.weight" in converted and "layers.3.downsample.norm.weight" not in converted
    report = ours.load_state_dict(converted, strict=False)
    assert sorted(report.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert report.unexpected_keys == []
    # 128x128 input: stage maps 32/16/8/4 are window multiples, where timm (which rolls before padding)
    # and the official order (pad, then roll) coincide.
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = ours(x)
        t = ref.patch_embed(x)
        for i, layer in enumerate(ref.layers):
            t = layer(t)
            expected = getattr(ours, f"norm{i}")(t).permute(0, 3, 1, 2)
            torch.testing.assert_close(feats[f"res{i + 2}"], expected, rtol=1e-4, atol=1e-4)
    back = official_swin_to_timm(ours.state_dict())
    timm_sd = {k: v for k, v in ref.state_dict().items()
               if not (k.startswith(("head.", "norm.")) or k.endswith(("relative_position_index", "attn_mask")))}
    assert set(back) == set(timm_sd) and all(torch.equal(back[k], timm_sd[k]) for k in timm_sd)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": Evil()}}, f)
    with pytest.raises(CheckpointError, match="not allowed"):
        load_weights_file(path)
    assert not marker.exists()


def test_weights_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_file(tmp_path / "missing.pkl")
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        load_weights_file(bad)
    notdict = tmp_path / "list.pkl"
    notdict.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="no state dict"):
        load_weights_file(notdict)


def test_build_model_loads_torchvision_pth(tv_r50, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(tv_r50.state_dict(), path)
    model = build_model(backbone="R50", num_classes=3, pretrained=str(path))
    assert torch.equal(model.backbone.res4[5].conv2.weight,
                       tv_r50.layer3[5].conv2.weight)
    assert torch.equal(model.backbone.stem.conv1.norm.running_var, tv_r50.bn1.running_var)


def test_backbone_loader_rejects_wrong_shapes_and_missing_keys(tmp_path):
    small = build_backbone("SmokeR18")
    sd = small.state_dict()
    sd["stem.conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="stem.conv1.weight has shape"):
        load_backbone_weights(small, path, "SmokeR18")
    torch.save({"stem.conv1.weight": torch.zeros(16, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone_weights(small, path, "SmokeR18")


def test_safetensors_timm_swin_loads_into_swin_backbone(tmp_path):
    from safetensors.torch import save_file

    ref = _tiny_timm_swin()
    path = tmp_path / "tiny_swin.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    bb = build_backbone("SmokeSwin")
    report = load_backbone_weights(bb, path, "SmokeSwin")
    assert len(report["missing"]) == 8  # norm0..3 are not in the checkpoint (official swin.py)
    assert torch.equal(bb.layers[1].downsample.reduction.weight, ref.layers[2].downsample.reduction.weight)


def test_official_full_checkpoint_round_trip(tmp_path):
    kw = dict(backbone="SmokeR18", num_classes=4, num_queries=5, dec_layers=2, conv_dim=64, hidden_dim=64,
              mask_dim=64, nheads=4, dim_feedforward=64)
    torch.manual_seed(0)
    src = build_model(**kw).eval()
    torch.manual_seed(1)
    dst = build_model(**kw).eval()
    path = tmp_path / "model_final.pkl"
    sd = dict(src.state_dict())
    sd["criterion.empty_weight"] = torch.ones(5)
    _write_d2_pkl(path, sd)
    load_official_model(dst, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x)["pred_masks"], src(x)["pred_masks"])
    # a full checkpoint also serves as backbone init
    assert set(d2_to_ours(load_weights_file(path))) == set(src.backbone.state_dict())


def test_hub_without_network_gives_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="pass a local file"):
        build_model(backbone="R101c", num_classes=3, pretrained="hub")
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model(backbone="SmokeSwin", num_classes=3, pretrained="hub")
    code = ("from maskformer_core.models import build_model\n"
            "build_model(backbone='R50', num_classes=3, pretrained='hub')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "CheckpointError" in proc.stderr and "pass a local file" in proc.stderr and "R-50.pkl" in proc.stderr
