"""Post-processors on tiny hand-made outputs: semantic formula, crop + resize, panoptic stuff merging,
overlap-threshold rejection, thing instances, empty results, general->semantic, DETR rules, TTA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskformer_core.errors import ConfigError
from maskformer_core.inference import (build_postprocessor, panoptic_inference, sem_seg_postprocess, sem_seg_to_label,
                                       tta_semantic, resize_shortest_edge_shape)

torch.set_num_threads(1)
BIG = 10.0


def _out(cls_logits, masks):
    return {"pred_logits": torch.tensor(cls_logits, dtype=torch.float32)[None],
            "pred_masks": torch.tensor(masks, dtype=torch.float32)[None]}


def test_semantic_formula_and_postprocess():
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]])  # Q=2, K=2
    masks = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]], [[1.0, 1.0], [-2.0, 0.0]]]])
    pp = build_postprocessor("semantic", num_classes=2)
    sem = pp({"pred_logits": logits, "pred_masks": masks}, [(2, 2)], [(2, 2)], padded_size=(2, 2))[0]["sem_seg"]
    p = logits[0].softmax(-1)
    expected = p[0, :2, None, None] * masks[0, 0].sigmoid() + p[1, :2, None, None] * masks[0, 1].sigmoid()
    assert torch.allclose(sem, expected, atol=1e-6)
    # crop to the un-padded image then bilinear resize to the original size
    x = torch.arange(16.0).view(1, 4, 4)
    out = sem_seg_postprocess(x, (2, 3), 4, 6)
    assert out.shape == (1, 4, 6)
    assert torch.allclose(out, F.interpolate(x[None, :, :2, :3], size=(4, 6), mode="bilinear", align_corners=False)[0])
    # default padded size = 4 x mask size
    sem4 = pp({"pred_logits": logits, "pred_masks": masks}, [(6, 8)], [(3, 4)])[0]["sem_seg"]
    assert sem4.shape == (2, 3, 4)


def _general(cls, masks, things=(), obj=0.8, overlap=0.8):
    pp = build_postprocessor("general", num_classes=len(cls[0]) - 1, thing_ids=things,
                             object_mask_threshold=obj, overlap_threshold=overlap)
    h, w = len(masks[0]), len(masks[0][0])
    return pp(_out(cls, masks), [(h, w)], [(h, w)], padded_size=(h, w))[0]


def test_general_stuff_merging_and_thing_instances():
    # K=3: class 0 stuff, classes 1, 2 things. 4 queries on a 1x4 image.
    cls = [[BIG, 0, 0, 0], [BIG, 0, 0, 0], [0, BIG, 0, 0], [0, BIG, 0, 0]]
    masks = [[[BIG, -BIG, -BIG, -BIG]], [[-BIG, BIG, -BIG, -BIG]], [[-BIG, -BIG, BIG, -BIG]], [[-BIG, -BIG, -BIG, BIG]]]
    res = _general(cls, masks, things=(1, 2))
    pan, info = res["panoptic_seg"]
    assert pan.dtype == torch.int32
    assert pan.tolist() == [[1, 1, 2, 3]]  # two stuff queries merged into segment 1, two thing instances
    assert info == [{"id": 1, "isthing": False, "category_id": 0}, {"id": 2, "isthing": True, "category_id": 1},
                    {"id": 3, "isthing": True, "category_id": 1}]
    assert res["sem_seg"].shape == (3, 1, 4)


def test_general_overlap_threshold_and_object_threshold():
    # query 0 covers all 4 pixels (sigmoid>=0.5) but wins only 1 of them -> 1/4 < 0.8 -> rejected (VOID)
    cls = [[BIG, 0, 0, 0], [0, BIG, 0, 0]]  # K=3: query 0 -> class 0, query 1 -> class 1
    masks = [[[1.0, 1.0, 1.0, 1.0]], [[-BIG, BIG, BIG, BIG]]]
    pan, info = _general(cls, masks, things=(0, 1))["panoptic_seg"]
    assert pan.tolist() == [[0, 1, 1, 1]] and info == [{"id": 1, "isthing": True, "category_id": 1}]
    # lower overlap threshold keeps it
    pan, info = _general(cls, masks, things=(0, 1), overlap=0.2)["panoptic_seg"]
    assert pan.tolist() == [[1, 2, 2, 2]]
    # no query above the object-mask threshold, or all no-object -> all-zero map, empty list
    pan, info = _general([[0.0, 0.0, 0.0, 0.0]], [[[BIG, BIG, BIG, BIG]]])["panoptic_seg"]
    assert pan.tolist() == [[0, 0, 0, 0]] and info == []
    pan, info = _general([[0.0, 0.0, BIG]], [[[BIG, BIG, BIG, BIG]]], obj=0.0)["panoptic_seg"]
    assert info == [] and int(pan.abs().sum()) == 0


def test_general_semantic_void_and_label():
    cls = [[BIG, 0, 0], [0, BIG, 0]]
    masks = [[[BIG, BIG, -BIG, -BIG]], [[-BIG, -BIG, -BIG, BIG]]]  # pixel 2: both masks < 0.5
    pp = build_postprocessor("general_semantic", num_classes=2)
    res = pp(_out(cls, masks), [(1, 4)], [(1, 4)], padded_size=(1, 4))[0]
    # pixel 2 (both masks < 0.5) still goes to the argmax query: there is no pixel-level threshold (official
    # panoptic_inference)
    label = sem_seg_to_label(res, 255)
    assert label.tolist()[0][0:2] == [0, 0] and label.tolist()[0][3] == 1
    assert res["sem_seg"].sum(0).max() <= 1.0
    # query 1 wins 2 of its 4 confident pixels (2/4 < 0.8): rejected, its pixels stay VOID -> ignore value
    cls2 = [[BIG, 0, 0], [0, BIG, 0]]
    res2 = pp(_out(cls2, [[[BIG, BIG, -BIG, -BIG]], [[1.0, 1.0, 1.0, 1.0]]]), [(1, 4)], [(1, 4)], padded_size=(1, 4))[0]
    assert sem_seg_to_label(res2, 255).tolist() == [[0, 0, 255, 255]]
    assert res2["sem_seg_void"].tolist() == [[False, False, True, True]]
    assert res2["sem_seg"][:, 0, 2:].abs().sum() == 0


def test_detr_postprocessing_rules():
    pp = build_postprocessor("detr", num_classes=3, thing_ids=(1, 2))
    # 3 queries kept: two of stuff class 0 (merged), one thing; one query below 0.85 dropped
    cls = [[BIG, 0, 0, 0], [BIG, 0, 0, 0], [0, 0, BIG, 0], [0, 0.5, 0, 0]]
    row = [[3.0] * 4 + [0.0] * 4 + [0.0] * 4, [0.0] * 4 + [3.0] * 4 + [0.0] * 4,
           [0.0] * 8 + [3.0] * 4, [5.0] * 12]
    masks = [[r] * 4 for r in row]  # 4 x 12
    pan, info = pp(_out(cls, masks), [(4, 12)], [(4, 12)], padded_size=(4, 12))[0]["panoptic_seg"]
    assert [s["category_id"] for s in info] == [0, 2]
    assert pan[0].tolist() == [1] * 8 + [2] * 4
    assert info[0]["area"] == 32 and info[1]["area"] == 16
    # a kept thing with <= 4 pixels is removed and its pixels go to the remaining query
    row2 = [[3.0] * 11 + [0.0], [0.0] * 11 + [3.0]]
    pan, info = pp(_out([[BIG, 0, 0, 0], [0, BIG, 0, 0]], [[row2[0]] * 4, [row2[1]] * 4]), [(4, 12)], [(4, 12)],
                   padded_size=(4, 12))[0]["panoptic_seg"]
    assert info == [{"id": 1, "isthing": False, "category_id": 0, "area": 48}] and int((pan == 1).sum()) == 48
    pan, info = pp(_out([[0, 0, 0, BIG]], [[[0.0] * 12] * 4]), [(4, 12)], [(4, 12)], padded_size=(4, 12))[0]["panoptic_seg"]
    assert info == [] and int(pan.abs().sum()) == 0


def test_per_pixel_and_errors():
    logits = torch.randn(1, 3, 2, 2)
    res = build_postprocessor("per_pixel", num_classes=3)({"sem_seg_logits": logits}, [(6, 5)], [(12, 10)])[0]
    up = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :6, :5]
    assert torch.allclose(res["sem_seg"], F.interpolate(up[None], size=(12, 10), mode="bilinear", align_corners=False)[0])
    with pytest.raises(ConfigError, match="strategy"):
        build_postprocessor("sliding", num_classes=3)
    with pytest.raises(ConfigError, match="pred_masks"):
        build_postprocessor("semantic", num_classes=3)({"sem_seg_logits": logits}, [(8, 8)], [(8, 8)])


def test_per_pixel_upsamples_by_four_then_crops_when_the_input_is_not_a_multiple_of_four():
    """Official PerPixelBaseline(+) heads: F.interpolate(scale_factor=4), then sem_seg_postprocess crops.
    A 10x10 input (ResNet size_divisibility 0) has 3x3 stride-4 logits: 12x12 after x4, cropped to 10x10,
    not resized straight to 10x10 (different sampling grid)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 3, 3)
    res = build_postprocessor("per_pixel", num_classes=3)({"sem_seg_logits": logits}, [(10, 10)], [(10, 10)],
                                                            padded_size=(10, 10))[0]["sem_seg"]
    official = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :10, :10]
    assert torch.allclose(res, official, atol=1e-6)
    straight = F.interpolate(logits, size=(10, 10), mode="bilinear", align_corners=False)[0]
    assert not torch.allclose(res, straight, atol=1e-3)


class _ColumnModel(torch.nn.Module):
    """Mask logits = the red channel at stride 4, so outputs move with the image (flip equivariant)."""

    def preprocess(self, images):
        img = torch.stack([i.float() for i in images])
        return img, [tuple(i.shape[-2:]) for i in images]

    def forward(self, x):
        m = F.avg_pool2d(x[:, :1], 4) / 255.0 * 4 - 2
        return {"pred_logits": torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]]), "pred_masks": torch.cat([m, -m], 1)}


def test_tta_mean_and_flip_back():
    assert resize_shortest_edge_shape(480, 640, 240, None) == (240, 320)
    assert resize_shortest_edge_shape(100, 1000, 50, 300) == (30, 300)
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8)
    image = ramp.view(1, 1, 16).expand(3, 16, 16).contiguous()
    pp = build_postprocessor("semantic", num_classes=2)
    model = _ColumnModel()
    single = tta_semantic(model, image, [16], False, pp)
    flipped = tta_semantic(model, image, [16], True, pp)
    assert single.shape == (2, 16, 16)
    assert torch.allclose(flipped, single, atol=1e-5)  # the flipped pass is flipped back
    two = tta_semantic(model, image, [16, 8], False, pp)
    half = tta_semantic(model, image, [8], False, pp)
    assert torch.allclose(two, (single + half) / 2, atol=1e-6)


def test_tta_resizes_the_test_size_image_again_and_returns_the_original_size():
    """detectron2 DatasetMapperTTA: each scale resizes the test loader's image (already at the test size),
    and SemanticSegmentorWithTTA returns score maps at the original (height, width)."""
    from maskformer_core.inference import _resize_image

    class Recorder(_ColumnModel):
        def preprocess(self, images):
            seen.append(images[0].clone())
            return super().preprocess(images)

    seen = []
    test_image = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = tta_semantic(Recorder(), test_image, [8, 16], False, build_postprocessor("semantic", num_classes=2),
                       max_size=64, out_size=(30, 40))
    assert out.shape == (2, 30, 40)
    assert [tuple(x.shape[-2:]) for x in seen] == [(8, 11), (16, 21)]  # ResizeShortestEdge of the 12x16 input
    assert torch.equal(seen[1], _resize_image(test_image, (16, 21)))
    seen.clear()
    tta_semantic(Recorder(), test_image, None, False, build_postprocessor("semantic", num_classes=2),
                 out_size=(30, 40), factors=[0.5, 1.5])
    assert [tuple(x.shape[-2:]) for x in seen] == [(6, 8), (18, 24)]  # factors of the test-size image


def test_panoptic_inference_direct_call_with_thing_set():
    cls = torch.tensor([[BIG, 0.0], [BIG, 0.0]])
    masks = torch.tensor([[[BIG, -BIG]], [[-BIG, BIG]]])
    pan, info = panoptic_inference(cls, masks, {0}, 0.8, 0.8)
    assert pan.tolist() == [[1, 2]] and [s["isthing"] for s in info] == [True, True]
