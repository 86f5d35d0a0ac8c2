"""Inference post-processors keyed by strategy, ``sem_seg_postprocess`` and multi-scale/flip TTA (official
``mask_former/mask_former_model.py``, ``mask_former/test_time_augmentation.py``).

``build_postprocessor(strategy, *, num_classes, thing_ids, object_mask_threshold, overlap_threshold)``
returns a callable ``pp(outputs, image_sizes, out_sizes, padded_size=None) -> list[dict]``:

- ``outputs``: the model's output dict for a batch (see docs/ARCHITECTURE.md, model contract);
- ``image_sizes``: per image the (h, w) of the resized image inside the padded batch;
- ``out_sizes``: per image the original (H, W) to produce results at;
- ``padded_size``: (Hp, Wp) of the padded input tensor; default 4 x the mask/logit size (stride 4).

Per image the result has ``sem_seg: Tensor[K, H, W]`` (a score map; argmax gives the label) and/or
``panoptic_seg: (Tensor[H, W] int32, list[{"id", "isthing", "category_id"}])`` with 0 = VOID. The
``general_semantic`` strategy also returns ``sem_seg_void: BoolTensor[H, W]``; use
``sem_seg_to_label(result, void_value)`` to turn any result into a label map.

Strategies: ``semantic`` (official ``mask_former_model.py`` ``semantic_inference``), ``general``
(``panoptic_inference``), ``general_semantic`` (appendix
Table VII), ``detr`` (DETR's PostProcessPanoptic, Table 3), ``per_pixel`` (official ``per_pixel_baseline.py``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from maskformer_core.errors import ConfigError

# Documented thresholds (``configs/*panoptic*/*.yaml`` ``MODEL.MASK_FORMER.TEST.*``; paper appendix Table VII):
COCO_OBJECT_MASK_THRESHOLD = 0.8  # configs #23-#28 TEST.OBJECT_MASK_THRESHOLD
COCO_OVERLAP_THRESHOLD = 0.8  # configs #23-#28 TEST.OVERLAP_THRESHOLD
ADE20K_PANOPTIC_OBJECT_MASK_THRESHOLD = 0.7  # configs #11-#12
GENERAL_SEMANTIC_OBJECT_MASK_THRESHOLD = 0.3  # appendix Table VII, "mask-confidence threshold 0.3"
# Table VII gives no overlap threshold (unknown); we default to the COCO value.
GENERAL_SEMANTIC_OVERLAP_THRESHOLD = 0.8
# DETR PostProcessPanoptic defaults (facebookresearch/detr models/segmentation.py).
DETR_THRESHOLD = 0.85
DETR_MIN_AREA = 4  # segments with area <= 4 pixels (at the output size) are dropped

STRATEGIES = ("semantic", "general", "general_semantic", "detr", "per_pixel")


def sem_seg_postprocess(result: Tensor, img_size: Sequence[int], output_height: int, output_width: int) -> Tensor:
    """Crop ``result [C, Hp, Wp]`` to the un-padded ``img_size`` (h, w), then resize bilinearly (align_corners
    False) to (output_height, output_width) (detectron2 ``sem_seg_postprocess``)."""
    result = result[:, : int(img_size[0]), : int(img_size[1])]
    return F.interpolate(result[None], size=(int(output_height), int(output_width)), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """sem_seg[c] = sum_q softmax(mask_cls_q)[c] * sigmoid(mask_pred_q) (official ``semantic_inference``).

    mask_cls ``[Q, K+1]`` (softmax over K+1, then the no-object column is dropped, no renormalisation),
    mask_pred ``[Q, H, W]`` logits -> ``[K, H, W]``.
    """
    probs = F.softmax(mask_cls.float(), dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.float().sigmoid())


def panoptic_inference(mask_cls: Tensor, mask_pred: Tensor, thing_ids: set[int] | Sequence[int],
                       object_mask_threshold: float, overlap_threshold: float) -> tuple[Tensor, list[dict]]:
    """MaskFormer's general (panoptic) inference on one image (official ``panoptic_inference``).

    Args:
        mask_cls: ``[Q, K+1]`` class logits; mask_pred: ``[Q, H, W]`` mask logits at the output size.
        thing_ids: contiguous ids of thing classes; every other class is stuff (merged per class).

    Returns:
        (``panoptic_seg [H, W] int32``, segments_info ``[{"id", "isthing", "category_id"}]``), ids from 1,
        0 = VOID. With no kept query the map is all zeros and the list empty.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
    mask_prob = mask_pred.float().sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_prob[keep]
    h, w = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments_info: list[dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info
    things = {int(t) for t in thing_ids}
    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)  # no pixel-level threshold (official)
    current_segment_id = 0
    stuff_memory: dict[int, int] = {}
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k].item())
        isthing = pred_class in things
        mask = cur_mask_ids == k
        mask_area = int(mask.sum().item())
        original_area = int((cur_masks[k] >= 0.5).sum().item())
        if mask_area > 0 and original_area > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing and pred_class in stuff_memory:  # stuff merging (official)
                panoptic_seg[mask] = stuff_memory[pred_class]
                continue
            current_segment_id += 1
            if not isthing:
                stuff_memory[pred_class] = current_segment_id
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    return panoptic_seg, segments_info


def panoptic_to_semantic(panoptic_seg: Tensor, segments_info: list[dict], num_classes: int) -> tuple[Tensor, Tensor]:
    """Segments -> categories (Table VII general inference as a semantic map).

    Returns (``sem_seg [K, H, W]`` one-hot float map: 1 at the segment's category, ``void [H, W]`` bool
    True where no segment covers the pixel; void columns are all zero).
    """
    h, w = panoptic_seg.shape
    lut = torch.full((int(panoptic_seg.max().item()) + 1 if panoptic_seg.numel() else 1,), -1, dtype=torch.int64)
    for seg in segments_info:
        lut[int(seg["id"])] = int(seg["category_id"])
    labels = lut.to(panoptic_seg.device)[panoptic_seg.long()]
    void = labels < 0
    sem = torch.zeros((num_classes, h, w), dtype=torch.float32, device=panoptic_seg.device)
    sem.scatter_(0, labels.clamp(min=0)[None], (~void).float()[None])
    return sem, void


def sem_seg_to_label(result: dict, void_value: int) -> Tensor:
    """Label map ``[H, W]`` int64 of a post-processor result: argmax of ``sem_seg`` over K, with pixels of
    ``sem_seg_void`` (general_semantic: no segment) set to ``void_value`` (use the ignore label; the
    metrics count such pixels as "no prediction": a miss for their GT class, no false positive)."""
    label = result["sem_seg"].argmax(0)
    if "sem_seg_void" in result:
        label = label.masked_fill(result["sem_seg_void"], void_value)
    return label


def _masks_at_padded(outputs: dict, b: int, padded_size) -> Tensor:
    """Image b's mask logits [Q, h, w] bilinearly upsampled to the padded input size [Q, Hp, Wp] (official
    ``MaskFormer.forward``)."""
    masks = outputs["pred_masks"][b].float()
    return F.interpolate(masks[None], size=padded_size, mode="bilinear", align_corners=False)[0]


def _masks_at_output(outputs: dict, b: int, image_size, out_size, padded_size) -> Tensor:
    masks = _masks_at_padded(outputs, b, padded_size)
    return sem_seg_postprocess(masks, image_size, out_size[0], out_size[1])  # detectron2 sem_seg_postprocess


def _padded(outputs_key: Tensor, padded_size) -> tuple[int, int]:
    if padded_size is not None:
        return int(padded_size[0]), int(padded_size[1])
    return int(outputs_key.shape[-2]) * 4, int(outputs_key.shape[-1]) * 4  # stride-4 predictions


def _check_batch(outputs: dict, key: str, image_sizes, out_sizes) -> int:
    if key not in outputs:
        raise ConfigError(f"post-processor needs outputs[{key!r}]; got keys {sorted(outputs)}")
    n = outputs[key].shape[0]
    if len(image_sizes) != n or len(out_sizes) != n:
        raise ValueError(f"post-processor: batch of {n} but {len(image_sizes)} image_sizes and {len(out_sizes)} out_sizes")
    return n


class SemanticPostProcessor:
    """``semantic`` (official ``semantic_inference``): semantic inference at the padded size, then crop + resize
    to the original size."""

    def __call__(self, outputs: dict, image_sizes, out_sizes, padded_size=None) -> list[dict]:
        n = _check_batch(outputs, "pred_masks", image_sizes, out_sizes)
        padded = _padded(outputs["pred_masks"], padded_size)
        results = []
        for b in range(n):
            masks = _masks_at_padded(outputs, b, padded)
            sem = semantic_inference(outputs["pred_logits"][b], masks)
            results.append({"sem_seg": sem_seg_postprocess(sem, image_sizes[b], *out_sizes[b])})
        return results


class GeneralPostProcessor:
    """``general`` (official ``panoptic_inference``): masks resized to the original size first
    (postprocess-before-inference is on with PANOPTIC_ON), then semantic inference (``sem_seg``) and panoptic
    inference (``panoptic_seg``)."""

    def __init__(self, thing_ids, object_mask_threshold: float, overlap_threshold: float):
        self.thing_ids = {int(t) for t in thing_ids}
        self.object_mask_threshold = float(object_mask_threshold)
        self.overlap_threshold = float(overlap_threshold)

    def __call__(self, outputs: dict, image_sizes, out_sizes, padded_size=None) -> list[dict]:
        n = _check_batch(outputs, "pred_masks", image_sizes, out_sizes)
        padded = _padded(outputs["pred_masks"], padded_size)
        results = []
        for b in range(n):
            masks = _masks_at_output(outputs, b, image_sizes[b], out_sizes[b], padded)
            cls = outputs["pred_logits"][b]
            results.append({
                "sem_seg": semantic_inference(cls, masks),
                "panoptic_seg": panoptic_inference(cls, masks, self.thing_ids, self.object_mask_threshold, self.overlap_threshold),
            })
        return results


class GeneralSemanticPostProcessor(GeneralPostProcessor):
    """``general_semantic`` (appendix Table VII): general inference with object-mask threshold 0.3, every
    segment painted with its category. ``sem_seg`` is one-hot (1 at the segment's class, 0 elsewhere),
    ``sem_seg_void`` marks pixels no segment covers (their sem_seg column is all zero, so a bare argmax
    would say class 0: use ``sem_seg_to_label``, which writes the ignore value there = "no prediction").
    Every class is treated as stuff, so segments of one class merge."""

    def __init__(self, num_classes: int, object_mask_threshold: float = GENERAL_SEMANTIC_OBJECT_MASK_THRESHOLD,
                 overlap_threshold: float = GENERAL_SEMANTIC_OVERLAP_THRESHOLD):
        super().__init__((), object_mask_threshold, overlap_threshold)
        self.num_classes = num_classes

    def __call__(self, outputs: dict, image_sizes, out_sizes, padded_size=None) -> list[dict]:
        results = []
        for r in super().__call__(outputs, image_sizes, out_sizes, padded_size):
            pan, info = r["panoptic_seg"]
            sem, void = panoptic_to_semantic(pan, info, self.num_classes)
            results.append({"sem_seg": sem, "sem_seg_void": void, "panoptic_seg": (pan, info)})
        return results


class DetrPostProcessor:
    """``detr``: DETR's panoptic post-processing (facebookresearch/detr ``PostProcessPanoptic``), used for the
    "MaskFormer (DETR post-processing)" row of Table 3.

    Semantics kept from DETR: keep queries whose argmax class is not no-object and whose max probability
    > 0.85; each pixel goes to the argmax over kept queries of the mask logits (no score weighting);
    queries of one stuff class are merged into the first one; the id map is resized NEAREST to the output
    size, then segments with area <= 4 pixels are dropped and the argmax is recomputed (without merging
    again, as DETR does) until none is that small. Adaptations: masks are upsampled to the padded size and
    cropped to the image (DETR resizes the padded mask), segment ids start at 1 (DETR's start at 0, which
    collides with VOID = 0 in our contract), and ``pred_boxes`` is not needed (DETR only asserts on it).
    """

    def __init__(self, thing_ids, threshold: float = DETR_THRESHOLD, min_area: int = DETR_MIN_AREA):
        self.thing_ids = {int(t) for t in thing_ids}
        self.threshold = float(threshold)
        self.min_area = int(min_area)

    def _single(self, cls: Tensor, masks: Tensor, out_size) -> tuple[Tensor, list[dict]]:
        num_classes = cls.shape[-1] - 1
        scores, labels = F.softmax(cls.float(), -1).max(-1)
        keep = labels.ne(num_classes) & (scores > self.threshold)
        cur_classes = labels[keep]
        cur_masks = masks[keep].flatten(1)  # [N, h*w]
        h, w = masks.shape[-2:]
        out_h, out_w = int(out_size[0]), int(out_size[1])
        stuff_equiv: dict[int, list[int]] = defaultdict(list)
        for k, label in enumerate(cur_classes.tolist()):
            if label not in self.thing_ids:
                stuff_equiv[label].append(k)

        def ids_and_area(m: Tensor, dedup: bool) -> tuple[Tensor, list[int]]:
            if m.shape[0] == 0:
                ids = torch.zeros((h, w), dtype=torch.long)
            else:
                ids = m.argmax(0).view(h, w).cpu()
            if dedup:
                for equiv in stuff_equiv.values():
                    for eq in equiv[1:]:
                        ids.masked_fill_(ids.eq(eq), equiv[0])
            # NEAREST resize of the id map, as DETR does through a PIL image.
            ids = torch.from_numpy(np.asarray(Image.fromarray(ids.numpy().astype(np.int32)).resize((out_w, out_h), Image.NEAREST)).astype(np.int64))
            area = torch.bincount(ids.flatten(), minlength=m.shape[0])[: m.shape[0]].tolist()
            return ids, area

        ids, area = ids_and_area(cur_masks, dedup=True)
        if cur_classes.numel() > 0:
            while True:
                small = torch.as_tensor([a <= self.min_area for a in area], dtype=torch.bool)
                if not bool(small.any()):
                    break
                cur_classes, cur_masks = cur_classes[~small], cur_masks[~small]
                ids, area = ids_and_area(cur_masks, dedup=False)
        panoptic_seg = torch.zeros((out_h, out_w), dtype=torch.int32)
        segments_info = []
        for i, a in enumerate(area):
            cat = int(cur_classes[i].item())
            panoptic_seg[ids == i] = i + 1
            segments_info.append({"id": i + 1, "isthing": cat in self.thing_ids, "category_id": cat, "area": int(a)})
        if cur_classes.numel() == 0:
            panoptic_seg.zero_()
        return panoptic_seg.to(masks.device), segments_info

    def __call__(self, outputs: dict, image_sizes, out_sizes, padded_size=None) -> list[dict]:
        n = _check_batch(outputs, "pred_masks", image_sizes, out_sizes)
        padded = _padded(outputs["pred_masks"], padded_size)
        results = []
        for b in range(n):
            masks = _masks_at_padded(outputs, b, padded)
            h, w = int(image_sizes[b][0]), int(image_sizes[b][1])
            results.append({"panoptic_seg": self._single(outputs["pred_logits"][b], masks[:, :h, :w], out_sizes[b])})
        return results


class PerPixelPostProcessor:
    """``per_pixel``: x4 bilinear upsample of ``sem_seg_logits``, then crop + resize (logits, not probs).

    As in the official heads (`PerPixelBaselineHead.forward` / `PerPixelBaselinePlusHead.forward`:
    ``F.interpolate(x, scale_factor=self.common_stride)``), the logits are upsampled by the common stride 4,
    never resized to the padded input size: when the input is not a multiple of 4 (ResNet baselines pad
    to the backbone's size_divisibility 0), 4x the stride-4 map is larger than the input and
    `sem_seg_postprocess` crops it. ``padded_size`` is accepted for a uniform call and not used.
    """

    common_stride = 4

    def __call__(self, outputs: dict, image_sizes, out_sizes, padded_size=None) -> list[dict]:
        n = _check_batch(outputs, "sem_seg_logits", image_sizes, out_sizes)
        logits = outputs["sem_seg_logits"].float()
        logits = F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return [{"sem_seg": sem_seg_postprocess(logits[b], image_sizes[b], *out_sizes[b])} for b in range(n)]


def build_postprocessor(strategy: str, *, num_classes: int, thing_ids: Sequence[int] = (),
                        object_mask_threshold: float | None = None, overlap_threshold: float | None = None) -> Callable:
    """Post-processor for an inference strategy (see the module docstring).

    Threshold defaults: ``general`` 0.8 / 0.8 (COCO; pass 0.7 object-mask threshold for ADE20K panoptic),
    ``general_semantic`` 0.3 / 0.8, ``detr`` 0.85 (object_mask_threshold; no overlap threshold).
    """
    if strategy == "semantic":
        return SemanticPostProcessor()
    if strategy == "per_pixel":
        return PerPixelPostProcessor()
    if strategy == "general":
        return GeneralPostProcessor(
            thing_ids,
            COCO_OBJECT_MASK_THRESHOLD if object_mask_threshold is None else object_mask_threshold,
            COCO_OVERLAP_THRESHOLD if overlap_threshold is None else overlap_threshold)
    if strategy == "general_semantic":
        return GeneralSemanticPostProcessor(
            num_classes,
            GENERAL_SEMANTIC_OBJECT_MASK_THRESHOLD if object_mask_threshold is None else object_mask_threshold,
            GENERAL_SEMANTIC_OVERLAP_THRESHOLD if overlap_threshold is None else overlap_threshold)
    if strategy == "detr":
        return DetrPostProcessor(thing_ids, DETR_THRESHOLD if object_mask_threshold is None else object_mask_threshold)
    raise ConfigError(f"unknown inference strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def resize_shortest_edge_shape(h: int, w: int, short: int, max_size: int | None) -> tuple[int, int]:
    """Output (h, w) of detectron2's ResizeShortestEdge for one short-side size (detectron2
    ``data/transforms/augmentation_impl.py``)."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max_size is not None and max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def _resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w] with PIL bilinear (detectron2 resizes uint8 images with PIL,
    ``data/transforms/transform.py``)."""
    arr = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    out = Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def tta_input_shapes(height: int, width: int, sizes: Sequence[int] | None = None, max_size: int | None = None,
                     scales: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """(h, w) of each multi-scale pass for a test-size image of ``height`` x ``width`` (detectron2 `DatasetMapperTTA`).

    ``sizes``: detectron2 `DatasetMapperTTA` (TEST.AUG.MIN_SIZES / MAX_SIZE): ResizeShortestEdge(s, max_size)
    applied to the image the test loader already resized to the single-scale test size.
    ``scales``: factors of that single-scale image instead (the paper's Mapillary protocol, appendix A
    "Mapillary Vistas": 0.5 / 1.0 / 1.5 of the test size, which MIN_SIZES cannot express for every aspect ratio).
    """
    if scales:
        return [(int(height * float(f) + 0.5), int(width * float(f) + 0.5)) for f in scales]
    if not sizes:
        raise ConfigError("tta: empty list of scales (give sizes or scales)")
    return [resize_shortest_edge_shape(height, width, int(s), max_size) for s in sizes]


@torch.no_grad()
def tta_semantic(model, image: Tensor, scales: Sequence[int] | None, flip: bool, postprocessor: Callable,
                 max_size: int | None = None, out_size: tuple[int, int] | None = None,
                 factors: Sequence[float] | None = None) -> Tensor:
    """Multi-scale (+ flip) test-time augmentation for semantic segmentation (official
    ``test_time_augmentation.py``).

    As in the official evaluation (`SemanticSegmentorWithTTA` fed by the test loader, then detectron2
    `DatasetMapperTTA`), ``image`` is the single-scale test input (already resized by the test mapper) and
    every pass resizes *that* image again: to short side ``s`` for ``s`` in ``scales`` (long side capped at
    ``max_size``), or by each factor in ``factors``; plus a horizontally flipped copy when ``flip``. Each
    pass runs ``model.preprocess`` + ``model`` + ``postprocessor`` at the output size ``out_size`` (the
    original image size; default: the size of ``image``); flipped outputs are flipped back and the
    arithmetic mean ``[K, H, W]`` of the score maps is returned.

    Args:
        image: uint8 ``[3, h, w]`` test-size image (resized copies go to its device before
            ``model.preprocess``). ``postprocessor``: a ``semantic`` / ``per_pixel`` one.
    """
    h_in, w_in = int(image.shape[-2]), int(image.shape[-1])
    height, width = (h_in, w_in) if out_size is None else (int(out_size[0]), int(out_size[1]))
    total = None
    count = 0
    for shape in tta_input_shapes(h_in, w_in, scales, max_size, factors):
        resized = _resize_image(image, shape).to(image.device)
        for flipped in ([False, True] if flip else [False]):
            inp = resized.flip(-1) if flipped else resized
            batch, image_sizes = model.preprocess([inp])
            outputs = model(batch)
            sem = postprocessor(outputs, image_sizes, [(height, width)], padded_size=tuple(batch.shape[-2:]))[0]["sem_seg"]
            if flipped:
                sem = sem.flip(-1)
            total = sem.float() if total is None else total + sem.float()
            count += 1
    return total / count
