"""Tests of the MaskFormer model family: backbones, outputs, variants, baselines, options, FLOP convention."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maskformer_core.errors import CheckpointError, ConfigError
from maskformer_core.models import build_model, count_parameters
from maskformer_core.models.backbones import BACKBONE_NAMES, build_backbone
from maskformer_core.models.backbones.resnet import FrozenBatchNorm2d
from maskformer_core.models.position_encoding import PositionEmbeddingSine
from maskformer_core.models.transformer import MultiheadAttention

torch.set_num_threads(1)

# Small widths for forward tests (the smoke profile's 64-wide decoder).
SMALL = dict(conv_dim=64, hidden_dim=64, mask_dim=64, nheads=4, dim_feedforward=128)
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _check_features(bb, feats, batch, h, w, channels):
    assert bb.strides == STRIDES
    assert bb.out_channels == dict(zip(STRIDES, channels))
    for name, stride in STRIDES.items():
        assert tuple(feats[name].shape) == (batch, bb.out_channels[name], math.ceil(h / stride), math.ceil(w / stride))


@pytest.mark.parametrize("name,channels,divisibility", [
    ("SmokeR18", (16, 32, 64, 128), 0),
    ("SmokeSwin", (24, 48, 96, 192), 32),
    ("R50", (256, 512, 1024, 2048), 0),
    ("Swin-T", (96, 192, 384, 768), 32),
])
def test_backbone_strides_and_channels_real_forward(name, channels, divisibility):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 64))
    _check_features(bb, feats, 1, 64, 64, channels)
    assert bb.size_divisibility == divisibility
    assert all(torch.isfinite(f).all() for f in feats.values())


@pytest.mark.parametrize("name,channels", [
    ("R101", (256, 512, 1024, 2048)),
    ("R101c", (256, 512, 1024, 2048)),
    ("Swin-S", (96, 192, 384, 768)),
    ("Swin-B", (128, 256, 512, 1024)),
    ("Swin-L", (192, 384, 768, 1536)),
])
def test_big_backbone_shapes_on_meta_device(name, channels):
    # Shape-only forward (no compute) keeps the big backbones cheap.
    with torch.device("meta"):
        bb = build_backbone(name)
        feats = bb(torch.zeros(2, 3, 64, 64))
    _check_features(bb, feats, 2, 64, 64, channels)


def test_swin_window_and_drop_path_settings():
    with torch.device("meta"):
        t, b = build_backbone("Swin-T"), build_backbone("Swin-B")
        b7 = build_backbone("Swin-B", swin_window=7)
    assert t.window_size == 7 and b.window_size == 12 and b7.window_size == 7
    assert tuple(b.layers[0].blocks[0].attn.relative_position_bias_table.shape) == (23 * 23, 4)
    # stochastic depth rises linearly from 0 to 0.3 over the 12 Swin-T blocks (official
    # ``mask_former/modeling/backbone/swin.py``)
    rates = [blk.drop_path.p for layer in t.layers for blk in layer.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and len(rates) == 12
    # odd blocks are shifted, even blocks are not, in every stage (shift always on)
    assert [blk.shift_size for blk in t.layers[3].blocks] == [0, 3]


def test_swin_pads_odd_sizes_and_keeps_stride():
    bb = build_backbone("SmokeSwin").eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 50, 70))  # not a multiple of 4, of the window or of 32
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(13, 18), (7, 9), (4, 5), (2, 3)]


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_backbone("ResNet50")
    for name in BACKBONE_NAMES:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="R50, R101, R101c, Swin-T"):
        build_model(backbone="R-50", num_classes=3)


def test_frozen_bn_is_buffers_only_and_matches_eval_batchnorm():
    fbn = FrozenBatchNorm2d(4)
    assert list(fbn.parameters()) == []
    assert sorted(n for n, _ in fbn.named_buffers()) == ["bias", "running_mean", "running_var", "weight"]
    bn = nn.BatchNorm2d(4).eval()
    g = torch.Generator().manual_seed(0)
    for t in (bn.weight, bn.bias, bn.running_mean):
        t.data = torch.randn(4, generator=g)
    bn.running_var.data = torch.rand(4, generator=g) + 0.5
    fbn.load_state_dict({k: v for k, v in bn.state_dict().items()}, strict=True)  # drops num_batches_tracked
    x = torch.randn(2, 4, 3, 3, generator=g)
    torch.testing.assert_close(fbn(x), bn(x))
    with torch.device("meta"):
        r50 = build_backbone("R50")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in r50.modules())
    assert count_parameters(r50) == 23_454_912  # docs/FIDELITY.md §5: ResNet-50 trunk without BN and fc


# docs/FIDELITY.md §5 analytic counts (exact integers reproduce the rounded table).
H1 = [
    (dict(backbone="R50", num_classes=150), 41_254_743),
    (dict(backbone="R101", num_classes=150), 60.195e6),
    (dict(backbone="R101c", num_classes=150), 60.318e6),
    (dict(backbone="Swin-T", num_classes=150), 41.757e6),
    (dict(backbone="Swin-S", num_classes=150), 63.075e6),
    (dict(backbone="Swin-B", num_classes=150), 101.829e6),
    (dict(backbone="Swin-L", num_classes=150), 211.576e6),
    (dict(backbone="R50", num_classes=133, pixel_decoder="transformer_encoder",
          transformer_in_feature="transformer_encoder"), 45.012e6),
    (dict(backbone="R101", num_classes=133, pixel_decoder="transformer_encoder",
          transformer_in_feature="transformer_encoder"), 63.952e6),
    (dict(backbone="Swin-T", num_classes=133), 41.753e6),
    (dict(arch="per_pixel", backbone="R50", num_classes=150), 31.034e6),
    (dict(arch="per_pixel_plus", backbone="R50", num_classes=150), 41.229e6),
    (dict(backbone="R50", num_classes=150, dec_layers=1), 33.361e6),
]


@pytest.mark.parametrize("kwargs,expected", H1, ids=[f"{k.get('arch', 'mf')}-{k['backbone']}-{v}" for k, v in H1])
def test_param_counts_match_facts_h1(kwargs, expected):
    with torch.device("meta"):
        model = build_model(**kwargs)
    n = count_parameters(model)
    assert abs(n - expected) <= 0.0005e6, (n, expected)  # docs/FIDELITY.md §5 rounds to 1e3


def test_r50_ade_param_count_exact():
    with torch.device("meta"):
        model = build_model(backbone="R50", num_classes=150)
    assert count_parameters(model) == 41_254_743  # 41.255M (docs/FIDELITY.md §5), within 1% trivially
    assert count_parameters(model.sem_seg_head.predictor.transformer.decoder.layers[0]) == 1_578_752
    assert count_parameters(model.sem_seg_head.predictor.class_embed) == 257 * 151
    assert count_parameters(model.sem_seg_head.predictor.mask_embed) == 197_376


def _small_model(**kw):
    base = dict(backbone="SmokeR18", num_classes=5, num_queries=7, dec_layers=3, **SMALL)
    base.update(kw)
    torch.manual_seed(0)
    return build_model(**base).eval()


def test_maskformer_output_keys_and_shapes():
    model = _small_model()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert tuple(out["pred_logits"].shape) == (2, 7, 6)  # K + 1
    assert tuple(out["pred_masks"].shape) == (2, 7, 16, 24)  # H/4, W/4
    assert len(out["aux_outputs"]) == 2  # dec_layers - 1
    for aux in out["aux_outputs"]:
        assert set(aux) == {"pred_logits", "pred_masks"}
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    assert "pred_boxes" not in out
    # deep supervision: aux layers differ from the last layer
    assert not torch.allclose(out["aux_outputs"][-1]["pred_masks"], out["pred_masks"])


def test_masks_are_einsum_of_embeddings_and_pixel_features():
    model = _small_model(dec_layers=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        mask_features, _ = model.sem_seg_head.pixel_decoder(feats)
        out = model(x)
        pred = model.sem_seg_head.predictor
        hs = pred.transformer(pred.input_proj(feats["res5"]), pred.query_embed.weight, pred.pe_layer(feats["res5"]))
        emb = pred.mask_embed(hs[-1])  # [B, Q, C]
    manual = (emb[0] @ mask_features[0].flatten(1)).view(7, 16, 16)
    torch.testing.assert_close(out["pred_masks"][0], manual, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["pred_logits"], pred.class_embed(hs[-1]))


def test_one_layer_decoder_has_empty_aux():
    with torch.no_grad():
        out = _small_model(dec_layers=1)(torch.randn(1, 3, 64, 64))
    assert out["aux_outputs"] == []
    assert tuple(out["pred_logits"].shape) == (1, 7, 6)


def test_no_deep_supervision_has_empty_aux():
    with torch.no_grad():
        out = _small_model(deep_supervision=False)(torch.randn(1, 3, 32, 32))
    assert out["aux_outputs"] == [] and tuple(out["pred_masks"].shape) == (1, 7, 8, 8)


def test_decoder_without_self_attention():
    full = _small_model(dec_layers=2)
    nosa = _small_model(dec_layers=2, dec_self_attention=False)
    for layer in nosa.sem_seg_head.predictor.transformer.decoder.layers:
        assert not hasattr(layer, "self_attn") and not hasattr(layer, "norm1")
    d = 64
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + 2 * d  # MHA in/out projections + norm1
    assert count_parameters(full) - count_parameters(nosa) == 2 * per_layer
    with torch.no_grad():
        out = nosa(torch.randn(1, 3, 64, 64))
    assert len(out["aux_outputs"]) == 1 and tuple(out["pred_masks"].shape) == (1, 7, 16, 16)
    # paper-size variant: one decoder layer without self-attention = 1,315,072 parameters
    with torch.device("meta"):
        big = build_model(num_classes=150, dec_self_attention=False)
    assert count_parameters(big.sem_seg_head.predictor.transformer.decoder.layers[0]) == 1_315_072


def test_box_head_outputs_normalised_boxes_on_every_layer():
    model = _small_model(box_head=True)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert tuple(out["pred_boxes"].shape) == (2, 7, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert all(tuple(a["pred_boxes"].shape) == (2, 7, 4) for a in out["aux_outputs"])
    assert len(model.sem_seg_head.predictor.box_head.bbox_embed.layers) == 3


def test_per_pixel_baseline_outputs():
    model = _small_model(arch="per_pixel", num_queries=None)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"sem_seg_logits"}
    assert tuple(out["sem_seg_logits"].shape) == (2, 5, 16, 16)
    assert model.size_divisibility == 0  # SemanticSegmentor pads to the ResNet's 0 (per_pixel_baseline.py)
    head = model.sem_seg_head.predictor
    assert head.kernel_size == (1, 1) and head.out_channels == 5


def test_per_pixel_plus_outputs_and_q_equals_k():
    model = _small_model(arch="per_pixel_plus", num_queries=None)  # defaults to K
    assert model.sem_seg_head.predictor.num_queries == 5
    assert not hasattr(model.sem_seg_head.predictor, "class_embed")  # no class head (official per_pixel_baseline.py)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert tuple(out["sem_seg_logits"].shape) == (1, 5, 16, 16)
    assert len(out["aux_sem_seg_logits"]) == 2
    with pytest.raises(ConfigError, match="num_queries=7 must equal num_classes=5"):
        _small_model(arch="per_pixel_plus", num_queries=7)


def test_transformer_encoder_pixel_decoder_feeds_the_predictor():
    model = _small_model(pixel_decoder="transformer_encoder", transformer_in_feature="transformer_encoder",
                         enc_layers=2)
    pd = model.sem_seg_head.pixel_decoder
    assert len(pd.transformer.encoder.layers) == 2
    assert isinstance(model.sem_seg_head.predictor.input_proj, nn.Sequential)  # 64 == hidden: identity
    with torch.no_grad():
        mask_features, enc = pd(model.backbone(torch.randn(1, 3, 64, 64)))
        out = model(torch.randn(1, 3, 64, 64))
    assert tuple(mask_features.shape) == (1, 64, 16, 16) and tuple(enc.shape) == (1, 64, 2, 2)
    assert tuple(out["pred_masks"].shape) == (1, 7, 16, 16)


def test_base_pixel_decoder_structure():
    pd = _small_model().sem_seg_head.pixel_decoder
    assert pd.mask_features.kernel_size == (3, 3) and pd.mask_features.bias is not None  # code, not paper 1x1
    assert pd.layer_4.norm.num_groups == 32 and pd.layer_4.bias is None
    assert pd.adapter_1.kernel_size == (1, 1) and pd.adapter_1.activation is None


def test_official_key_names():
    keys = set(_small_model(pixel_decoder="transformer_encoder").state_dict())
    # FrozenBN buffers: the paper ResNets (SmokeR18 trains GroupNorm instead, see its docstring).
    r50_keys = {f"backbone.{k}" for k in build_backbone("R50").state_dict()}
    for k in ["backbone.stem.conv1.norm.running_var", "backbone.res3.0.shortcut.norm.bias"]:
        assert k in r50_keys, k
    for k in ["backbone.stem.conv1.weight",
              "sem_seg_head.pixel_decoder.adapter_1.norm.weight", "sem_seg_head.pixel_decoder.layer_4.weight",
              "sem_seg_head.pixel_decoder.mask_features.bias", "sem_seg_head.pixel_decoder.input_proj.weight",
              "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.in_proj_weight",
              "sem_seg_head.predictor.query_embed.weight", "sem_seg_head.predictor.input_proj.weight",
              "sem_seg_head.predictor.transformer.decoder.layers.2.multihead_attn.out_proj.weight",
              "sem_seg_head.predictor.transformer.decoder.norm.weight", "sem_seg_head.predictor.class_embed.bias",
              "sem_seg_head.predictor.mask_embed.layers.2.weight"]:
        assert k in keys, k


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4, dropout=0.0)
    ref = nn.MultiheadAttention(32, 4, dropout=0.0)
    ref.load_state_dict(ours.state_dict())  # same parameter names
    q, k, v = torch.randn(5, 2, 32), torch.randn(9, 2, 32), torch.randn(9, 2, 32)
    torch.testing.assert_close(ours(q, k, v), ref(q, k, v)[0], rtol=1e-5, atol=1e-5)


def test_sine_position_encoding_hand_computed():
    pe = PositionEmbeddingSine(num_pos_feats=2, normalize=True)
    pos = pe(torch.zeros(1, 5, 1, 2))  # H=1, W=2; dim_t = [1, 1]
    assert tuple(pos.shape) == (1, 4, 1, 2)
    two_pi, eps = 2 * math.pi, 1e-6
    y = 1 / (1 + eps) * two_pi
    for col, x in enumerate([1 / (2 + eps) * two_pi, 2 / (2 + eps) * two_pi]):
        expected = torch.tensor([math.sin(y), math.cos(y), math.sin(x), math.cos(x)])
        torch.testing.assert_close(pos[0, :, 0, col], expected, rtol=1e-5, atol=1e-5)


def test_preprocess_normalises_then_pads_with_zero():
    model = _small_model()
    a = torch.full((3, 30, 40), 255, dtype=torch.uint8)
    b = torch.zeros((3, 33, 20), dtype=torch.uint8)
    batch, sizes = model.preprocess([a, b])
    assert sizes == [(30, 40), (33, 20)] and tuple(batch.shape) == (2, 3, 64, 64)  # padded to 32
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(batch[0, :, 0, 0], (255 - mean) / std)
    torch.testing.assert_close(batch[1, :, 0, 0], -mean / std)
    assert (batch[0, :, 30:, :] == 0).all() and (batch[0, :, :, 40:] == 0).all()
    model.size_divisibility = 0
    assert tuple(model.preprocess([a, b])[0].shape) == (2, 3, 33, 40)


@pytest.mark.parametrize("kwargs,match", [
    (dict(transformer_in_feature="transformer_encoder"), "transformer_in_feature"),
    (dict(dec_layers=0), "dec_layers"),
    (dict(enc_layers=6), "enc_layers"),
    (dict(arch="per_pixel", box_head=True), "box_head"),
    (dict(arch="mask_rcnn"), "arch"),
    (dict(pixel_decoder="fpn"), "pixel_decoder"),
    (dict(swin_window=7), "swin_window"),
    (dict(conv_dim=48), "conv_dim"),
    (dict(num_queries=0), "num_queries"),
    (dict(backbone="SmokeR18", pretrained="hub"), "pretrained"),
])
def test_impossible_options_raise_config_error(kwargs, match):
    base = dict(backbone="R50", num_classes=3)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        build_model(**base)


def test_missing_pretrained_file_fails_before_building(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(backbone="R50", num_classes=3, pretrained=tmp_path / "R-50.pkl")


def test_flop_convention_hand_computed():
    """Inference part = mask upsample (4/output element) + semantic einsum Q*K*H*W + final resize
    (4/output element); dropping aux layers removes exactly their heads, norms and mask einsums."""
    from maskformer_core.models.flops import count_flops

    q, k, c, layers, h, w = 7, 5, 64, 3, 64, 64
    model = _small_model()
    full = count_flops(model, (h, w))
    last = count_flops(model, (h, w), last_layer_only_masks=True)
    # fvcore reads generic einsum counts from numpy's einsum_path report, printed with 4 significant
    # digits, hence rel=1e-3 rather than exact equality.
    assert full["inference"] * 1e9 == pytest.approx(4 * q * h * w + q * k * h * w + 4 * k * h * w, rel=1e-3)
    per_aux_layer = (q * c * (h // 4) * (w // 4)  # mask einsum
                     + q * c * (k + 1)  # class head
                     + q * (c * c * 2 + c * c)  # 3-layer mask MLP
                     + 5 * q * c)  # shared decoder LayerNorm (fvcore: 5 flops/element with affine)
    assert (full["total"] - last["total"]) * 1e9 == pytest.approx((layers - 1) * per_aux_layer, rel=1e-3)
    assert full["backbone"] == last["backbone"] > 0
