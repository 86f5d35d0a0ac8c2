"""Image and labels stay aligned through every augmentation and resize of the real mappers (official
dataset_mappers/*.py), checked on data whose colours encode the label (tests/_colour_data.py); and the SSD
colour augmentation checked against its definition (detectron2 projects/PointRend ColorAugSSDTransform) on grey
images.

Away from region boundaries (where bilinear image resizing blends colours and nearest label resizing
may move a boundary by a pixel) every pixel's colour must decode to its label; padding must carry the
ignore label (semantic) / VOID (panoptic) exactly where the image carries the pad value.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from maskformer_core.data import transforms as T
from maskformer_core.data.mappers import PAD_IMAGE_VALUE, build_mapper
from tests._colour_data import (NUM_INSTANCES, SEM_COLOURS, decode_semantic, pan_colour, panoptic_meta,
                                semantic_meta, write_panoptic, write_semantic)

SEEDS = range(24)  # every branch (flip or not, each short size, crop positions) is taken several times


def _interior(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood holds one label value, at least `radius` from the edges
    (a crop edge may cut just beside a boundary, and bilinear resizing blended the colours there)."""
    size = 2 * radius + 1
    inner = ndimage.maximum_filter(label, size, mode="nearest") == ndimage.minimum_filter(label, size, mode="nearest")
    inner[:radius] = inner[-radius:] = False
    inner[:, :radius] = inner[:, -radius:] = False
    return inner


def _asymmetric_label(h: int, w: int) -> np.ndarray:
    """Blocks of 4 classes, no left-right or up-down symmetry (a flip or a shifted crop is visible)."""
    lab = np.zeros((h, w), np.int64)
    lab[: h // 3, w // 5:] = 1
    lab[h // 2:, : w // 3] = 2
    lab[h // 2:, 2 * w // 3:] = 3
    lab[h // 4: h // 2, : w // 7] = 4
    return lab


@pytest.fixture(scope="module")
def sem_record(tmp_path_factory):
    lab = _asymmetric_label(60, 90)
    lab[20:26, 40:50] = 255  # ignore block, painted as class 1
    img_lab = np.where(lab == 255, 1, lab)
    return write_semantic(tmp_path_factory.mktemp("align_sem"), "a", lab, image_label=img_lab)


@pytest.mark.parametrize("color_aug", [False, True], ids=["geometry", "with-colour-aug"])
def test_semantic_training_mapper_keeps_image_and_label_aligned(sem_record, color_aug):
    meta = semantic_meta()
    mapper = build_mapper(meta, is_train=True, crop_size=(48, 48), short_sizes=[40, 60, 80, 100], max_size=200,
                          size_divisibility=64, color_aug=color_aug)
    flips = 0
    for seed in SEEDS:
        out = mapper(sem_record, np.random.default_rng(seed))
        img = out["image"].permute(1, 2, 0).numpy()
        sem = out["sem_seg"].numpy()
        assert img.shape[:2] == sem.shape == (64, 64)  # padded to size_divisibility (official semantic mapper)
        h = int((~(img == PAD_IMAGE_VALUE).all(-1)).any(1).sum())
        w = int((~(img == PAD_IMAGE_VALUE).all(-1)).any(0).sum())
        assert (sem[h:, :] == 255).all() and (sem[:, w:] == 255).all()  # padding is ignore
        assert (img[h:, :] == PAD_IMAGE_VALUE).all() and (img[:, w:] == PAD_IMAGE_VALUE).all()
        sem, img = sem[:h, :w], img[:h, :w]
        inner = _interior(np.where(sem == 255, 1, sem)) & (sem != 255)
        assert inner.sum() > 0.3 * h * w
        if color_aug:
            # The colour augmentation is per pixel: each class keeps one colour (its most frequent one), no
            # two classes share it, and every interior pixel is nearest to its own class's colour.
            classes = [int(c) for c in np.unique(sem[inner])]
            modal = []
            for c in classes:
                cols, counts = np.unique(img[inner & (sem == c)].reshape(-1, 3), axis=0, return_counts=True)
                modal.append(cols[counts.argmax()])
            modal = np.asarray(modal, np.int64)
            assert len(np.unique(modal, axis=0)) == len(classes), (seed, modal)
            d = ((img[:, :, None, :].astype(np.int64) - modal[None, None]) ** 2).sum(-1)
            decoded = np.asarray(classes)[d.argmin(-1)]
            assert (decoded[inner] == sem[inner]).all(), (seed, int((decoded[inner] != sem[inner]).sum()))
        else:
            decoded = decode_semantic(img)
            assert (decoded[inner] == sem[inner]).all(), (seed, int((decoded[inner] != sem[inner]).sum()))
        # targets: one mask per class present, equal to the label map
        t = out["targets"]
        assert sorted(t["labels"].tolist()) == sorted(int(c) for c in np.unique(out["sem_seg"]) if c != 255)
        for c, m in zip(t["labels"].tolist(), t["masks"].numpy()):
            assert (m == (out["sem_seg"].numpy() == c)).all()
        flips += _is_flipped(out)
    assert 0 < flips < len(SEEDS)  # both branches of the flip ran


def _is_flipped(out) -> bool:
    """Class 4 sits at the left edge of the original image: after a flip it can only be at the right."""
    sem = out["sem_seg"].numpy()
    cols = np.nonzero((sem == 4).any(0))[0]
    if len(cols) == 0:
        return False
    valid = np.nonzero((sem != 255).any(0))[0]
    return cols.max() == valid.max() and cols.min() > 0


def _decode_pan(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    book = [(c, j) for c in range(4) for j in range(NUM_INSTANCES)]
    colours = np.asarray([pan_colour(c, j) for c, j in book])
    d = ((img[:, :, None, :].astype(np.int64) - colours[None, None]) ** 2).sum(-1)
    idx = d.argmin(-1)
    return np.asarray([c for c, _ in book])[idx], np.asarray([j for _, j in book])[idx]


@pytest.fixture(scope="module")
def pan_record(tmp_path_factory):
    cls = np.zeros((60, 90), np.int64)
    inst = np.zeros((60, 90), np.int64)
    cls[:20, 30:] = 1
    cls[30:, :40] = 2
    inst[30:, 20:40] = 1  # two instances of thing 2
    cls[30:, 60:] = 3
    void = np.zeros(cls.shape, bool)
    void[5:10, 5:15] = True
    return write_panoptic(tmp_path_factory.mktemp("align_pan"), "p", cls, inst, void)


def _check_panoptic_sample(out, record, seed):
    img = out["image"].permute(1, 2, 0).numpy()
    sem = out["sem_seg"].numpy()
    t = out["targets"]
    masks = t["masks"].numpy()
    assert masks.shape[1:] == sem.shape == img.shape[:2]
    seg_ids = [s["id"] for s in record["segments_info"]]
    assert len(masks) == len(seg_ids)  # one target per non-crowd segment, in record order (C)
    assert t["labels"].tolist() == [s["category_id"] for s in record["segments_info"]]
    cls, inst = _decode_pan(img)
    inner = _interior(np.where(sem == 255, 99, sem)) & (sem != 255)
    # The panoptic PNG is resized with PIL NEAREST and the semantic map with torch nearest, as in the official
    # MaskFormerPanopticDatasetMapper (uint8 RGB vs float64 input to detectron2's ResizeTransform), so the two
    # may differ by a pixel at boundaries: they must agree wherever the semantic map is locally constant.
    agree = _interior(np.where(sem == 255, 99, sem))
    for k, s in enumerate(record["segments_info"]):
        m = masks[k]
        assert (sem[m & agree] == s["category_id"]).all(), (seed, s)
        c, j = (s["id"] - 1) // 10, (s["id"] - 1) % 10
        sel = m & inner & _interior(m.astype(np.int64))
        assert (cls[sel] == c).all() and (inst[sel] == j).all(), (seed, s["id"])
    covered = masks.any(0)
    assert (sem[~covered & agree] == 255).all()  # pixels of no segment: VOID in the panoptic map, ignore in sem_seg


def test_ade_panoptic_training_mapper_keeps_image_and_segments_aligned(pan_record):
    meta = panoptic_meta()
    mapper = build_mapper(meta, is_train=True, crop_size=(48, 48), short_sizes=[40, 60, 80, 100], max_size=200,
                          size_divisibility=64, color_aug=False)
    for seed in SEEDS:
        _check_panoptic_sample(mapper(pan_record, np.random.default_rng(seed)), pan_record, seed)


def test_coco_panoptic_detr_mapper_keeps_image_and_segments_aligned(pan_record):
    from maskformer_core.data.metadata import get_metadata

    meta = dataclasses.replace(get_metadata("coco_panoptic"), class_names=("s0", "s1", "t2", "t3"),
                               dataset_ids=(0, 1, 2, 3), thing_ids=(2, 3), colors=SEM_COLOURS[:4])
    # Record without the semantic PNG (COCO panoptic has none): the mapper must not need it.
    record = {k: v for k, v in pan_record.items() if k != "sem_seg_file_name"}
    mapper = build_mapper(meta, is_train=True, short_sizes=[64, 96], max_size=200)
    shapes = set()
    for seed in range(12):
        out = mapper(record, np.random.default_rng(seed))
        shapes.add(tuple(out["image"].shape[1:]))
        img = out["image"].permute(1, 2, 0).numpy()
        masks = out["targets"]["masks"].numpy()
        cls, inst = _decode_pan(img)
        for k, s in enumerate(record["segments_info"]):
            m = masks[k]
            sel = m & _interior(m.astype(np.int64))
            c, j = (s["id"] - 1) // 10, (s["id"] - 1) % 10
            assert (cls[sel] == c).all() and (inst[sel] == j).all(), (seed, s["id"])
    assert len(shapes) > 2  # the DETR crop / resize branches both ran


def test_test_mapper_resizes_the_image_only(sem_record):
    """At test time the image goes to the test size, the labels stay at the original size (detectron2
    DatasetMapper, SemSegEvaluator)."""
    meta = semantic_meta()
    out = build_mapper(meta, is_train=False, test_short_size=120, test_max_size=400)(sem_record)
    assert tuple(out["image"].shape[1:]) == (120, 180) and tuple(out["sem_seg"].shape) == (60, 90)
    small = T.resize_image(out["image"].permute(1, 2, 0).numpy(), (60, 90))
    sem = out["sem_seg"].numpy()
    inner = _interior(np.where(sem == 255, 1, sem)) & (sem != 255)
    assert (decode_semantic(small)[inner] == sem[inner]).all()


def test_colour_augmentation_matches_its_definition_on_greys():
    """detectron2 ColorAugSSDTransform: brightness +U(-32, 32) with p 1/2, contrast x U(0.5, 1.5) with p 1/2
    (before or after saturation/hue), each step `clip(x * alpha + beta)` truncated to uint8. Saturation and
    hue leave greys unchanged, so on a grey ramp every output must be brightness-then-contrast for some
    (alpha, beta) of the definition; over many seeds both steps are seen on and off."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # [1, 256, 3]
    alphas = np.concatenate([[1.0], np.linspace(0.5, 1.5, 401)])
    betas = np.concatenate([[0.0], np.linspace(-32, 32, 257)])
    used_alpha = used_beta = 0
    for seed in range(24):
        out = T.color_aug_ssd(ramp, np.random.default_rng(seed))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # greys stay grey
        v = out[0, :, 0].astype(np.int64)
        assert (np.diff(v) >= 0).all()  # monotone: no step of the definition reverses intensities
        grey = ramp[0, :, 0].astype(np.float32)
        bright = np.clip(grey[None, :] + betas[:, None].astype(np.float32), 0, 255).astype(np.uint8)  # [nb, 256]
        best = (np.inf, None, None)
        for a in alphas:
            pred = np.clip(bright.astype(np.float32) * np.float32(a), 0, 255).astype(np.uint8).astype(np.int64)
            err = np.abs(pred - v[None]).max(1)
            i = int(err.argmin())
            if err[i] < best[0]:
                best = (int(err[i]), float(a), float(betas[i]))
        assert best[0] <= 1, (seed, best)  # within one grey level (alpha / beta grid spacing)
        used_alpha += best[1] != 1.0
        used_beta += best[2] != 0.0
    assert 3 <= used_alpha <= 21 and 3 <= used_beta <= 21, (used_alpha, used_beta)  # each step p 1/2
