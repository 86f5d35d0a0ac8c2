"""Data package: metadata facts, synthetic raw -> prepare -> loader -> mapper round trips, determinism."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from maskformer_core.data import (
    DATASETS,
    MapDataset,
    TrainingSampler,
    build_mapper,
    collate_list,
    get_metadata,
    load_split,
    prepare,
    synthesize,
    validate,
)
from maskformer_core.data import transforms as T
from maskformer_core.data.formats import read_label, read_panoptic_png
from maskformer_core.data.prepare.ade20k_full import decode_seg, resize_short, to_train_ids
from maskformer_core.data.prepare.coco_stuff_10k import labels_from_mat

torch.set_num_threads(1)
K = 6
SIZE = (64, 80)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def twins(make_twin) -> dict[str, Path]:
    return {name: make_twin(name, num_images=12, num_classes=K, image_size=SIZE, seed=3) for name in DATASETS}


# ----------------------------------------------------------------------------------- metadata facts

def test_official_metadata_counts_and_ignore():
    expect = {"ade20k": (150, 255, 0), "ade20k_full": (847, 65535, 0), "coco_stuff_10k": (171, 255, 0),
              "cityscapes": (19, 255, 0), "mapillary_vistas": (65, 65, 0), "coco_panoptic": (133, 255, 80),
              "ade20k_panoptic": (150, 255, 100)}
    for name, (k, ignore, things) in expect.items():
        m = get_metadata(name)
        assert (m.num_classes, m.ignore_label, len(m.thing_ids)) == (k, ignore, things), name
        assert len(set(m.dataset_ids)) == k and len(m.colors) == k
    assert get_metadata("coco_panoptic").dataset_ids[:3] == (1, 2, 3)
    assert get_metadata("coco_panoptic").dataset_ids[-1] == 200
    assert get_metadata("coco_stuff_10k").dataset_ids[-1] == 182
    assert get_metadata("ade20k").class_names[48] == "skyscraper"
    assert get_metadata("ade20k").colors[48] == (140, 140, 200)  # palette fix 909e8a8 (F)
    assert len(set(get_metadata("ade20k").colors)) == 150
    assert get_metadata("cityscapes").class_names[:3] == ("road", "sidewalk", "building")


def test_short_side_sets_match_facts():
    # The short-side sets the official configs' INPUT.MIN_SIZE_TRAIN expressions evaluate to.
    assert get_metadata("ade20k").train_short_sizes == (
        256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024)
    assert get_metadata("ade20k_panoptic").train_short_sizes == tuple(range(320, 1281, 64))
    assert get_metadata("coco_stuff_10k").train_short_sizes == tuple(range(320, 961, 64))
    assert get_metadata("cityscapes").train_short_sizes == (
        512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740, 1843, 1945, 2048)
    assert get_metadata("mapillary_vistas").train_short_sizes == (
        1024, 1228, 1433, 1638, 1843, 2048, 2252, 2457, 2662, 2867, 3072, 3276, 3481, 3686, 3891, 4096)
    assert get_metadata("coco_panoptic").train_short_sizes == tuple(range(480, 801, 32))
    assert get_metadata("cityscapes").crop_size == (512, 1024)
    assert get_metadata("mapillary_vistas").test_max_size == 2048


def test_twin_metadata_subsets(twins):
    sem = get_metadata("ade20k", twins["ade20k"])
    assert sem.synthetic and sem.num_classes == K and sem.class_names == get_metadata("ade20k").class_names[:K]
    pan = get_metadata("coco_panoptic", twins["coco_panoptic"])
    assert pan.num_classes == K and len(pan.thing_ids) == K // 2 and len(pan.stuff_ids) == K // 2
    ade_pan = get_metadata("ade20k_panoptic", twins["ade20k_panoptic"])
    assert 0 < len(ade_pan.thing_ids) < K


# ----------------------------------------------------------------------------------- transforms

def test_shortest_edge_shape_hand_cases():
    assert T.shortest_edge_shape(480, 640, 800, 1333) == (800, 1067)
    assert T.shortest_edge_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert T.shortest_edge_shape(640, 480, 512, 2048) == (683, 512)


def test_resize_label_nearest_keeps_values():
    lab = np.random.default_rng(0).choice([0, 3, 7, 255], size=(13, 17)).astype(np.int64)
    out = T.resize_label(lab, (29, 41))
    assert set(np.unique(out)) <= {0, 3, 7, 255}
    # torch "nearest": source index floor(dst * in / out)
    assert out[5, 9] == lab[int(5 * 13 / 29), int(9 * 17 / 41)]


def test_panoptic_ids_resize_with_pil_nearest_semantic_with_torch_nearest():
    """Official mappers: the uint8 RGB panoptic PNG goes through PIL NEAREST (pixel centres), the float
    semantic map through torch nearest (pixel corners). On a 12 -> 8 resize they pick different columns."""
    from maskformer_core.data.mappers import Mapper

    ramp = np.tile(np.arange(12, dtype=np.int64) * 70001, (3, 1))  # ids spanning all three RGB bytes
    img = np.zeros((3, 12, 3), np.uint8)
    _, sem, pan = Mapper._resize(img, np.tile(np.arange(12, dtype=np.int64), (3, 1)), ramp, (3, 8))
    assert (pan[0] // 70001).tolist() == [0, 2, 3, 5, 6, 8, 9, 11]  # floor((j + 0.5) * 1.5)
    assert sem[0].tolist() == [0, 1, 3, 4, 6, 7, 9, 10]  # floor(j * 1.5)


def test_ade20k_panoptic_prep_keeps_pre_overwrite_areas_and_covered_segments():
    """Official prepare_ade20k_pan_seg.py: stuff first, instances painted over it; every segment keeps the
    area of its own mask and stays in the JSON even when an instance covers all of it."""
    from maskformer_core.data.prepare.ade20k import panoptic_from_annotations

    cats = {0: {"isthing": 0, "color": [10, 20, 30]}, 1: {"isthing": 0, "color": [40, 50, 60]},
            2: {"isthing": 1, "color": [70, 80, 90]}}
    sem = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)  # wall (0) left, floor (1) right
    ins = np.zeros((2, 4, 3), np.uint8)
    ins[:, 1:, 0], ins[:, 1:, 1] = 1, 1  # one instance of instance-class 0 over columns 1-3
    pan, segs = panoptic_from_annotations(sem, ins, cats, {0: 2}, np.random.default_rng(0), "test")
    assert [(s["category_id"], s["area"]) for s in segs] == [(0, 4), (1, 4), (2, 6)]
    assert segs[1]["bbox"] == [2, 0, 2, 2]  # the floor's own mask, not what is left of it
    assert segs[1]["id"] not in set(np.unique(pan).tolist())  # fully covered, yet listed (as officially)


def test_images_are_read_with_their_exif_orientation(tmp_path):
    """detectron2 `read_image` applies the EXIF orientation; orientation 6 turns a 2x3 image into 3x2."""
    from PIL import Image

    from maskformer_core.data.formats import image_size, read_image

    arr = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(arr).save(path, exif=exif)
    out = read_image(path)
    assert out.shape == (3, 2, 3) and image_size(path) == (3, 2)
    assert np.array_equal(out, np.rot90(arr, k=-1))  # 6 = rotate 90 degrees clockwise to display


def test_color_aug_ssd_is_seeded_and_shape_preserving():
    img = np.random.default_rng(1).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    a = T.color_aug_ssd(img, np.random.default_rng(5))
    b = T.color_aug_ssd(img, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    # Every step has p 1/2 (detectron2 ColorAugSSDTransform): all four skipped with p 1/16, so over 64 seeds a
    # few images pass unchanged.
    unchanged = sum(np.array_equal(T.color_aug_ssd(img, np.random.default_rng(s)), img) for s in range(64))
    assert 1 <= unchanged <= 12


def test_official_format_conversions():
    # COCO-Stuff v1.0: S - 2 in uint8, 1 (unlabeled) -> 255 (F).
    assert labels_from_mat(np.array([[1, 2, 172]])).tolist() == [[255, 0, 170]]
    # ADE20K-Full: class = (R // 10) * 256 + G; unknown ids -> 65535; short side -> 512 nearest.
    seg = np.zeros((2, 2, 3), np.uint8)
    seg[0, 0] = (20, 5, 0)
    seg[1, 1] = (0, 9, 0)
    ids = decode_seg(seg)
    assert ids.tolist() == [[517, 0], [0, 9]]
    assert to_train_ids(ids, {517: 3, 9: 0}).tolist() == [[3, 65535], [65535, 0]]
    img = np.zeros((600, 700, 3), np.uint8)
    lab = np.tile(np.arange(700) % 5, (600, 1))
    img2, lab2 = resize_short(img, lab)
    assert lab2.shape == (512, 597) and img2.shape == (512, 597, 3)
    assert set(np.unique(lab2)) <= set(range(5))


# ----------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", DATASETS)
def test_round_trip(twins, name):
    root = twins[name]
    meta = get_metadata(name, root)
    counts = validate(name, root)
    assert sum(counts.values()) == 12 and set(counts) == set(meta.splits)
    records = load_split(name, root, meta.train_split)
    assert len(records) == counts[meta.train_split]
    rec = records[0]
    assert (rec["height"], rec["width"]) == SIZE
    mapper = build_mapper(meta, True, crop_size=(48, 48), short_sizes=(48, 64, 80), max_size=200,
                          size_divisibility=48)
    for i, rec in enumerate(records[:4]):
        out = mapper(rec, np.random.default_rng(i))
        img, tg = out["image"], out["targets"]
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        assert tg["masks"].dtype == torch.bool and tg["masks"].shape[1:] == img.shape[1:]
        assert tg["labels"].dtype == torch.long
        assert ((tg["labels"] >= 0) & (tg["labels"] < K)).all()
        if meta.augmentation == "detr":
            assert min(img.shape[1:]) in (48, 64, 80) or max(img.shape[1:]) == 200
        else:
            assert img.shape[1:] == (48, 48)
        if meta.task == "semantic":
            raw = read_label(rec["sem_seg_file_name"])
            sem = out["sem_seg"].numpy()
            assert set(np.unique(sem)) <= set(np.unique(raw)) | {meta.ignore_label}  # nearest: no new values
            for lab, m in zip(tg["labels"], tg["masks"]):
                assert torch.equal(m, out["sem_seg"] == lab)
            assert meta.ignore_label not in tg["labels"].tolist()
        else:
            non_crowd = [s for s in rec["segments_info"] if not s["iscrowd"]]
            assert tg["labels"].tolist() == [s["category_id"] for s in non_crowd]
            assert (tg["masks"].sum(0) <= 1).all()  # segments are disjoint
            png_ids = set(np.unique(read_panoptic_png(rec["pan_seg_file_name"])).tolist()) - {0}
            assert png_ids == {s["id"] for s in rec["segments_info"]}


@pytest.mark.parametrize("name", ["ade20k", "ade20k_panoptic", "cityscapes"])
def test_padding_to_crop(twins, name):
    root = twins[name]
    meta = get_metadata(name, root)
    rec = load_split(name, root, meta.train_split)[1]
    mapper = build_mapper(meta, True, crop_size=(96, 96), short_sizes=(64,), max_size=1000,
                          size_divisibility=96, color_aug=False)
    out = mapper(rec, np.random.default_rng(0))
    img = out["image"]
    assert img.shape == (3, 96, 96)  # 64x80 crop padded bottom/right to 96x96
    assert (img[:, 64:, :] == 128).all() and (img[:, :, 80:] == 128).all()
    assert (out["sem_seg"][64:, :] == meta.ignore_label).all()
    assert not out["targets"]["masks"][:, 64:, :].any()


def test_crowd_segments_dropped(twins):
    root = twins["coco_panoptic"]
    meta = get_metadata("coco_panoptic", root)
    records = load_split("coco_panoptic", root, "train") + load_split("coco_panoptic", root, "val")
    crowded = [r for r in records if any(s["iscrowd"] for s in r["segments_info"])]
    assert crowded, "the COCO panoptic twin should contain crowd segments"
    rec = crowded[0]
    out = build_mapper(meta, True, short_sizes=(64,), max_size=1000)(rec, np.random.default_rng(0))
    assert len(out["targets"]["labels"]) == sum(1 for s in rec["segments_info"] if not s["iscrowd"])


def test_test_mapper_resizes_image_keeps_gt(twins):
    meta = get_metadata("ade20k", twins["ade20k"])
    rec = load_split("ade20k", twins["ade20k"], "val")[0]
    out = build_mapper(meta, False, test_short_size=32, test_max_size=1000)(rec)
    assert out["image"].shape == (3, 32, 40) and out["sem_seg"].shape == SIZE
    assert (out["height"], out["width"]) == SIZE


# ----------------------------------------------------------------------------------- determinism

def test_synthesize_and_prepare_are_byte_identical(tmp_path, twins):
    for name in DATASETS:
        synthesize(name, tmp_path / "raw" / name, num_images=12, num_classes=K, image_size=SIZE, seed=3)
        prepare(name, tmp_path / "raw" / name, tmp_path / "prep" / name, progress=False)
        raw_ref = twins[name].parent.parent / "raw" / name
        assert tree_digest(tmp_path / "raw" / name) == tree_digest(raw_ref), name
        assert tree_digest(tmp_path / "prep" / name) == tree_digest(twins[name]), name
    synthesize("ade20k", tmp_path / "other", num_images=12, num_classes=K, image_size=SIZE, seed=4)
    assert tree_digest(tmp_path / "other") != tree_digest(tmp_path / "raw" / "ade20k")


def test_class_boxes_twin_gives_each_thing_class_its_own_box_shape(tmp_path):
    """`class_boxes` (params.yaml data.coco_panoptic): the thing classes' box aspects separate, a stuff
    band's height picks its class, and the rest of each scene (band edges, which class each instance has,
    ignore patches) is the default twin's (without crowd marking, whose draw depends on how many
    instances stay visible)."""
    import json

    from maskformer_core.data.synth import make_scene

    def aspects(root):
        data = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
        things = {c["id"] for c in data["categories"] if c["isthing"]}
        by_class = {}
        for ann in data["annotations"]:
            for s in ann["segments_info"]:
                if s["category_id"] in things and not s["iscrowd"]:
                    by_class.setdefault(s["category_id"], []).append(s["bbox"][2] / s["bbox"][3])
        return {k: float(np.median(v)) for k, v in sorted(by_class.items())}

    kw = dict(num_images=24, num_classes=4, image_size=(96, 128), seed=5)
    shaped = aspects(synthesize("coco_panoptic", tmp_path / "shaped", class_boxes=True, **kw))
    plain = aspects(synthesize("coco_panoptic", tmp_path / "plain", **kw))
    (tall, wide), (a, b) = shaped.values(), plain.values()
    assert tall < 0.8 and wide > 1.25, shaped  # ASPECT_RANGE 0.4 / 2.5, less where instances overlap
    assert 0.8 < a < 1.25 and 0.8 < b < 1.25, plain  # default: both classes' boxes drawn alike
    marker = json.loads((tmp_path / "shaped" / "SYNTHETIC.json").read_text())
    assert marker["class_boxes"] is True and "class_boxes" not in json.loads((tmp_path / "plain" / "SYNTHETIC.json").read_text())

    for seed in range(5):
        one, two = (make_scene(np.random.default_rng(seed), (96, 128), [2, 3], [0, 1], False, cb) for cb in (False, True))
        bands = [p for k, p in two.polygons if k in (2, 3)]
        assert bands == [p for k, p in one.polygons if k in (2, 3)]
        assert [k for k, _ in one.polygons if k not in (2, 3)] == [k for k, _ in two.polygons if k not in (2, 3)]
        assert [p for k, p in one.polygons if k == -1] == [p for k, p in two.polygons if k == -1]
        for k, p in two.polygons:
            if k in (2, 3):  # 96-row image: a band centred in the top half is class 2, else 3
                assert k == (2 if p[0][1] + p[2][1] + 1 < 96 else 3), (seed, k, p)


def _batches(dataset, workers: int, n: int = 3):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, sampler=TrainingSampler(len(dataset), seed=7), collate_fn=collate_list,
        num_workers=workers, multiprocessing_context="fork" if workers else None)
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_workers_equal_single_process(twins):
    root = twins["ade20k_panoptic"]
    meta = get_metadata("ade20k_panoptic", root)
    ds = MapDataset(load_split("ade20k_panoptic", root, "train"),
                    build_mapper(meta, True, crop_size=(48, 48), short_sizes=(48, 64), max_size=200,
                                 size_divisibility=48), seed=11)
    a, b = _batches(ds, 0), _batches(ds, 2)
    for ba, bb in zip(a, b):
        for x, y in zip(ba, bb):
            assert x["file_name"] == y["file_name"]
            assert torch.equal(x["image"], y["image"])
            assert torch.equal(x["targets"]["masks"], y["targets"]["masks"])


def test_training_sampler_resume_and_sharding():
    s = TrainingSampler(5, seed=3)
    it = iter(s)
    stream = [next(it) for _ in range(13)]
    assert sorted(i for i, _ in stream[:5]) == list(range(5))  # each epoch is a permutation
    assert [p for _, p in stream] == list(range(13))
    resumed = iter(TrainingSampler.from_state(5, s.state_dict(consumed=7)))
    assert [next(resumed) for _ in range(6)] == stream[7:]
    r0, r1 = iter(TrainingSampler(5, seed=3, rank=0, world_size=2)), iter(TrainingSampler(5, seed=3, rank=1, world_size=2))
    merged = [x for pair in zip([next(r0) for _ in range(6)], [next(r1) for _ in range(6)]) for x in pair]
    assert merged == stream[:12]
