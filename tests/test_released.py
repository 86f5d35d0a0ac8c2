"""Released checkpoints: HF transformers import/export and detectron2 .pkl round trips with output parity.

No download: HF models are built from small configs with random weights (an R50 and a Swin-T backbone
at their real shapes, a Swin of the smoke size; the transformer decoder and FPN shrunk), saved with
`save_pretrained`, imported, and run on the same random images as HF's own forward.
"""
from __future__ import annotations

import json

import pytest
import torch

from maskformer_core.errors import CheckpointError, ConfigError
from maskformer_core.inference import build_postprocessor
from maskformer_core.models import build_model
from maskformer_core.models.hf import build_kwargs_to_hf_config, from_hf_pretrained, hf_config_to_build_kwargs, save_hf_pretrained
from maskformer_core.models.official import infer_official_kwargs, save_official_pkl
from maskformer_core.models.weights import load_official_model, load_weights_file

transformers = pytest.importorskip("transformers")

TOL = 1e-4
SMALL = dict(hidden_dim=64, mask_dim=64, conv_dim=64, nheads=4, dim_feedforward=128, dec_layers=2, num_queries=7)
OUT = ["stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _randomise_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """Random BN statistics / affine norms, so that a swapped or dropped norm tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "running_mean" in name or ("norm" in name and name.endswith("bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif "norm" in name and name.endswith("weight") and t.dim() == 1:
                t.copy_(1 + torch.randn(t.shape, generator=g) * 0.1)


def _hf_model(backbone: str, num_labels: int = 5):
    from transformers import MaskFormerConfig, MaskFormerDetrConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

    bb = {
        "R50": lambda: ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck", out_features=OUT),
        "Swin-T": lambda: SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, out_features=OUT),
        "SmokeSwin": lambda: SwinConfig(embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, out_features=OUT),
    }[backbone]()
    dec = MaskFormerDetrConfig(num_queries=SMALL["num_queries"], decoder_layers=SMALL["dec_layers"], d_model=64,
                               decoder_ffn_dim=128, decoder_attention_heads=4, use_timm_backbone=False, backbone_config=None)
    cfg = MaskFormerConfig(backbone_config=bb, decoder_config=dec, num_labels=num_labels, fpn_feature_size=64, mask_feature_size=64,
                           id2label={i: f"c{i}" for i in range(num_labels)}, label2id={f"c{i}": i for i in range(num_labels)})
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(cfg).eval()
    _randomise_norms(model)
    return model


def _max_diffs(hf_model, ours, x):
    with torch.no_grad():
        h = hf_model(pixel_values=x)
        o = ours(x)
    assert o["pred_masks"].std() > 0.05 and o["pred_logits"].std() > 0.05  # not a degenerate (constant) model
    return ((h.class_queries_logits - o["pred_logits"]).abs().max().item(),
            (h.masks_queries_logits - o["pred_masks"]).abs().max().item())


@pytest.mark.parametrize("backbone", ["R50", "Swin-T", "SmokeSwin"])
def test_hf_import_gives_hf_outputs(tmp_path, backbone):
    hf_model = _hf_model(backbone)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = from_hf_pretrained(tmp_path / "hf")
    assert ours.build_kwargs["backbone"] == backbone and not ours.training
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))  # 96x128: not a window multiple
    d_logits, d_masks = _max_diffs(hf_model, ours, x)
    print(f"{backbone}: max|diff| pred_logits {d_logits:.2e}, pred_masks {d_masks:.2e}")
    assert d_logits < TOL and d_masks < TOL


def test_hf_semantic_postprocessing_matches_where_it_coincides(tmp_path):
    """HF's post_process_semantic_segmentation = official semantic inference (softmax without no-object,
    sigmoid, einsum; official mask_former_model.py semantic_inference) at the mask resolution; it resizes the
    score map, the official code the mask logits (official MaskFormer.forward), so only the unresized maps are
    compared."""
    from transformers import MaskFormerImageProcessor

    hf_model = _hf_model("SmokeSwin", num_labels=6)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = from_hf_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = hf_model(pixel_values=x)
        o = ours(x)
    size = tuple(o["pred_masks"].shape[-2:])
    hf_out = MaskFormerImageProcessor().post_process_semantic_segmentation(
        h, target_sizes=[size, size], return_segmentation_scores=True)
    pp = build_postprocessor("semantic", num_classes=6)
    res = pp(o, [size, size], [size, size], padded_size=size)
    for r, hf_r in zip(res, hf_out):
        assert r["sem_seg"].shape == hf_r.segmentation_scores.shape == (6, *size)
        assert r["sem_seg"].std() > 1e-3  # the score maps vary over classes and pixels
        assert (r["sem_seg"] - hf_r.segmentation_scores).abs().max().item() < 1e-5
        assert torch.equal(r["sem_seg"].argmax(0), hf_r.segmentation)


def test_export_to_hf_round_trip(tmp_path):
    """Ours -> HF folder -> MaskFormerForInstanceSegmentation.from_pretrained: same outputs; -> ours again: same weights."""
    from transformers import MaskFormerForInstanceSegmentation

    kwargs = dict(SMALL, backbone="R50", num_classes=4)
    torch.manual_seed(5)
    ours = build_model(**kwargs).eval()
    _randomise_norms(ours, seed=6)
    save_hf_pretrained(ours, kwargs, tmp_path / "out", id2label={i: f"k{i}" for i in range(4)})
    hf_model = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path / "out").eval()
    d_logits, d_masks = _max_diffs(hf_model, ours, torch.randn(1, 3, 64, 64))
    print(f"export R50: max|diff| pred_logits {d_logits:.2e}, pred_masks {d_masks:.2e}")
    assert d_logits < TOL and d_masks < TOL
    back = from_hf_pretrained(tmp_path / "out")
    sd = ours.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())
    assert back.id2label == {i: f"k{i}" for i in range(4)}
    with pytest.raises(CheckpointError, match="not an empty folder"):
        save_hf_pretrained(ours, kwargs, tmp_path / "out")


@pytest.mark.parametrize("extra", [dict(backbone="SmokeR18", pixel_decoder="transformer_encoder", enc_layers=2,
                                        transformer_in_feature="transformer_encoder"),
                                   dict(backbone="SmokeSwin", swin_window=7)], ids=["R18+enc", "swin-window7"])
def test_detectron2_pkl_round_trip(tmp_path, extra):
    """Our model written under the official key names as a detectron2 .pkl, read back through the restricted
    unpickler: same options (inferred from the shapes) and bit-identical outputs."""
    kwargs = dict(SMALL, num_classes=3, nheads=8, **extra)
    torch.manual_seed(7)
    ours = build_model(**kwargs).eval()
    _randomise_norms(ours, seed=8)
    path = save_official_pkl(ours, tmp_path / "model_final_test.pkl")
    inferred = infer_official_kwargs(load_weights_file(path))
    assert {k: inferred[k] for k in kwargs} == kwargs
    again = build_model(**inferred).eval()
    load_official_model(again, path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(x), again(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])


def test_hf_plus6enc_export_is_refused_and_hf_import_of_unsupported_fields_names_them():
    with pytest.raises(ConfigError, match="transformer_encoder"):
        build_kwargs_to_hf_config(dict(SMALL, backbone="R50", num_classes=3, pixel_decoder="transformer_encoder"))
    with pytest.raises(ConfigError, match="R101c"):
        build_kwargs_to_hf_config(dict(SMALL, backbone="R101c", num_classes=3))
    good = build_kwargs_to_hf_config(dict(SMALL, backbone="R50", num_classes=3))
    assert hf_config_to_build_kwargs(good)["backbone"] == "R50"
    bad = json.loads(json.dumps(good))
    bad["backbone_config"]["depths"] = [2, 2, 2, 2]
    with pytest.raises(ConfigError, match=r"backbone_config\.depths=\[2, 2, 2, 2\]"):
        hf_config_to_build_kwargs(bad)
    bad = json.loads(json.dumps(good))
    bad["decoder_config"]["activation_function"] = "gelu"
    with pytest.raises(ConfigError, match="decoder_config.activation_function='gelu'"):
        hf_config_to_build_kwargs(bad)
    bad = json.loads(json.dumps(good))
    bad["backbone_config"]["model_type"] = "convnext"
    with pytest.raises(ConfigError, match="backbone_config.model_type='convnext'"):
        hf_config_to_build_kwargs(bad)


def test_hf_import_refuses_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model = _hf_model("SmokeSwin")
    hf_model.save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    sd = load_file(str(f))
    sd.pop("class_predictor.bias")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match="class_predictor.bias"):
        from_hf_pretrained(tmp_path / "hf")



def test_hf_import_reads_pytorch_model_bin(tmp_path):
    """Older HF folders hold pytorch_model.bin instead of model.safetensors: read with weights_only."""
    from safetensors.torch import load_file

    hf_model = _hf_model("SmokeSwin")
    hf_model.save_pretrained(tmp_path / "hf")
    st = tmp_path / "hf" / "model.safetensors"
    torch.save(load_file(str(st)), tmp_path / "hf" / "pytorch_model.bin")
    st.unlink()
    ours = from_hf_pretrained(tmp_path / "hf")
    d_logits, d_masks = _max_diffs(hf_model, ours, torch.randn(1, 3, 64, 64))
    assert d_logits < TOL and d_masks < TOL


@pytest.mark.parametrize("backbone", ["R50", "R101c"])
def test_official_options_of_paper_resnets_are_read_from_the_shapes(backbone):
    """R50 (basic stem, 6 res4 blocks) and R101c (DeepLab stem, 23 blocks) with the "+6 Enc" decoder fed
    by the encoder (the official COCO panoptic R50/R101 configs: TRANSFORMER_IN_FEATURE "transformer_encoder") and a box head (Table 5)."""
    kwargs = dict(SMALL, num_classes=3, nheads=8, backbone=backbone, pixel_decoder="transformer_encoder", enc_layers=6,
                  transformer_in_feature="transformer_encoder", box_head=True)
    inferred = infer_official_kwargs(build_model(**kwargs).state_dict())
    assert {k: inferred[k] for k in kwargs} == kwargs
