"""Dataset preparation on tiny hand-written raw inputs, with the expected outputs written by hand from the
official scripts' rules (MaskFormer datasets/prepare_*.py, cityscapesScripts createTrainIdLabelImgs.py,
detectron2's COCO panoptic registration), not from the project's synthesiser.

Every dataset goes through the public `prepare()` and `load_split()` where the project prepares it; the
ADE20K-Full steps (the raw download is a 25k-image index) are checked function by function.
"""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskformer_core.data.datasets import load_split
from maskformer_core.data.formats import read_label, read_panoptic_png, rgb2id
from maskformer_core.data.metadata import get_metadata
from maskformer_core.data.prepare import prepare


def _jpg(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


# ADE20K annotation (1-based SceneParse150 ids, 0 = "other"): 1 wall, 4 floor, 13 person, 20 chair.
ADE_ANN = np.array([
    [1, 1, 1, 1, 4, 4, 4, 4],
    [1, 1, 1, 1, 4, 4, 4, 4],
    [1, 13, 13, 1, 4, 20, 20, 4],
    [1, 13, 13, 1, 4, 20, 20, 4],
    [0, 13, 13, 0, 4, 20, 20, 13],
    [0, 13, 13, 0, 4, 20, 20, 13],
], np.uint8)


def _ade_raw(root, with_instances: bool):
    base = root / "ADEChallengeData2016"
    for d in ("training", "validation"):
        _jpg(base / "images" / d / "ADE_x_0001.jpg", 6, 8)
        _png(base / "annotations" / d / "ADE_x_0001.png", ADE_ANN, "L")
        if with_instances:
            # R = instance class (1-based line of the mapping file), G = instance id, 0 = none.
            ins = np.zeros((6, 8, 3), np.uint8)
            ins[2:6, 1:3] = (1, 1, 0)  # person instance 1
            ins[2, 3] = (1, 1, 0)  # ... also over a wall pixel: instances overwrite stuff
            ins[2:6, 5:7] = (2, 2, 0)  # chair instance 2
            _png(base / "annotations_instance" / d / "ADE_x_0001.png", ins, "RGB")
    if with_instances:
        (root / "ade20k_instance_catid_mapping.txt").write_text(
            "Instacne100\tSceneParsing150\tFullADE20K\n1\t13\tperson\n2\t20\tchair\n")
    return base


def test_ade20k_semantic_is_label_minus_one_with_0_to_255(tmp_path):
    _ade_raw(tmp_path / "raw", with_instances=False)
    out = prepare("ade20k", tmp_path / "raw", tmp_path / "prep", progress=False)
    expected = np.array([
        [0, 0, 0, 0, 3, 3, 3, 3],
        [0, 0, 0, 0, 3, 3, 3, 3],
        [0, 12, 12, 0, 3, 19, 19, 3],
        [0, 12, 12, 0, 3, 19, 19, 3],
        [255, 12, 12, 255, 3, 19, 19, 12],
        [255, 12, 12, 255, 3, 19, 19, 12],
    ])
    for split, d in (("train", "training"), ("val", "validation")):
        lab = read_label(out / "annotations_detectron2" / d / "ADE_x_0001.png")
        assert lab.tolist() == expected.tolist()
        (rec,) = load_split("ade20k", out, split)
        assert rec["image_id"] == "ADE_x_0001" and (rec["height"], rec["width"]) == (6, 8)


def test_ade20k_panoptic_stuff_first_then_instances_and_void(tmp_path):
    _ade_raw(tmp_path / "raw", with_instances=True)
    out = prepare("ade20k_panoptic", tmp_path / "raw", tmp_path / "prep", progress=False)
    colors = get_metadata("ade20k_panoptic").colors
    wall, floor, person, chair = (int(rgb2id(np.asarray(colors[c]))) for c in (0, 3, 12, 19))
    # Stuff (wall, floor) keeps its category colour; the first instance of a thing class gets the category
    # colour too (panopticapi IdGenerator). Person pixel (5, 7) has no instance -> VOID; so has label 0.
    expected = np.array([
        [wall, wall, wall, wall, floor, floor, floor, floor],
        [wall, wall, wall, wall, floor, floor, floor, floor],
        [wall, person, person, person, floor, chair, chair, floor],
        [wall, person, person, wall, floor, chair, chair, floor],
        [0, person, person, 0, floor, chair, chair, 0],
        [0, person, person, 0, floor, chair, chair, 0],
    ])
    ids = read_panoptic_png(out / "ade20k_panoptic_val" / "ADE_x_0001.png")
    assert ids.tolist() == expected.tolist()
    data = json.loads((out / "ade20k_panoptic_val.json").read_text())
    (ann,) = data["annotations"]
    assert ann["image_id"] == "ADE_x_0001" and data["images"][0]["id"] == "ADE_x_0001"
    segs = {s["category_id"]: s for s in ann["segments_info"]}
    assert set(segs) == {0, 3, 12, 19}
    assert [segs[c]["id"] for c in (0, 3, 12, 19)] == [wall, floor, person, chair]
    # Areas are counted before instances overwrite stuff, as the official prepare_ade20k_pan_seg.py does:
    # the wall's 12 semantic pixels include (2, 3), which the person instance then takes.
    assert [segs[c]["area"] for c in (0, 3, 12, 19)] == [12, 14, 9, 8]
    assert segs[12]["bbox"] == [1, 2, 3, 4] and segs[19]["bbox"] == [5, 2, 2, 4]  # x, y, w, h
    assert all(s["iscrowd"] == 0 for s in ann["segments_info"])
    # The semantic GT of ADE panoptic is the SceneParse150 label - 1 (official prepare_ade20k_pan_seg.py),
    # unchanged by the instances.
    assert read_label(out / "annotations_detectron2" / "validation" / "ADE_x_0001.png")[2, 3] == 0
    (rec,) = load_split("ade20k_panoptic", out, "val")
    cats = {s["id"]: (s["category_id"], s["isthing"]) for s in rec["segments_info"]}
    assert cats == {wall: (0, False), floor: (3, False), person: (12, True), chair: (19, True)}


def test_coco_stuff_10k_is_s_minus_2_from_the_transposed_mat(tmp_path):
    import h5py

    base = tmp_path / "raw" / "coco_stuff_10k"
    s = np.array([[1, 2, 3], [81, 82, 172]], np.uint16)  # [H, W] as MATLAB sees it
    for split, name in (("train", "COCO_train2014_000000000001"), ("test", "COCO_train2014_000000000002")):
        (base / "imageLists").mkdir(parents=True, exist_ok=True)
        (base / "imageLists" / f"{split}.txt").write_text(name + "\n")
        _jpg(base / "images" / f"{name}.jpg", 2, 3)
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        with h5py.File(base / "annotations" / f"{name}.mat", "w") as f:
            f["S"] = s.T  # MATLAB v7.3 stores column-major: h5py reads the transpose
    out = prepare("coco_stuff_10k", tmp_path / "raw", tmp_path / "prep", progress=False)
    lab = read_label(out / "annotations_detectron2" / "test" / "COCO_train2014_000000000002.png")
    # 1 = unlabeled -> 255; 2..81 things -> 0..79; 82..172 stuff -> 80..170
    assert lab.tolist() == [[255, 0, 1], [79, 80, 170]]
    assert [r["image_id"] for r in load_split("coco_stuff_10k", out, "train")] == ["COCO_train2014_000000000001"]


def test_cityscapes_polygons_to_train_ids(tmp_path):
    """cityscapesScripts labels: road id 7 -> trainId 0, car 26 -> 13, sky 23 -> 10, ego vehicle (trainId
    255) and unlabelled pixels -> 255. Later polygons are drawn over earlier ones."""
    base = tmp_path / "raw" / "cityscapes"
    polygons = {"imgHeight": 8, "imgWidth": 12, "objects": [
        {"label": "sky", "polygon": [[0, 0], [11, 0], [11, 2], [0, 2]]},
        {"label": "road", "polygon": [[0, 5], [11, 5], [11, 7], [0, 7]]},
        {"label": "car", "polygon": [[2, 4], [5, 4], [5, 6], [2, 6]]},
        {"label": "ego vehicle", "polygon": [[8, 6], [11, 6], [11, 7], [8, 7]]},
    ]}
    for split in ("train", "val"):
        _png(base / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png", np.zeros((8, 12, 3), np.uint8))
        p = base / "gtFine" / split / "ulm" / "ulm_000000_000019_gtFine_polygons.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(polygons))
    out = prepare("cityscapes", tmp_path / "raw", tmp_path / "prep", progress=False)
    lab = read_label(out / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelTrainIds.png")
    assert lab.shape == (8, 12)
    assert (lab[0:2, :] == 10).all()  # sky rows 0-2 (polygon edges included)
    assert lab[3, 6] == 255  # nothing drawn there
    assert (lab[4:7, 2:6] == 13).all()  # car over road
    assert (lab[5:7, 0:2] == 0).all() and lab[7, 6] == 0  # road
    assert (lab[6:8, 8:12] == 255).all()  # ego vehicle: trainId 255, drawn last
    assert set(np.unique(lab).tolist()) == {0, 10, 13, 255}
    (rec,) = load_split("cityscapes", out, "val")
    assert rec["image_id"] == "ulm_000000_000019"


def test_mapillary_vistas_labels_are_used_as_shipped_with_65_ignored(tmp_path):
    from maskformer_core.data.mappers import build_mapper

    base = tmp_path / "raw"
    lab = np.array([[0, 0, 64, 64], [65, 65, 13, 13]], np.uint8)  # 0..64 the 65 classes, 65 "Unlabeled"
    for d in ("training", "validation"):
        _jpg(base / d / "images" / "m1.jpg", 2, 4)
        _png(base / d / "labels" / "m1.png", lab, "L")
    out = prepare("mapillary_vistas", base, tmp_path / "prep", progress=False)
    meta = get_metadata("mapillary_vistas")
    assert meta.num_classes == 65 and meta.ignore_label == 65
    (rec,) = load_split("mapillary_vistas", out, "val")
    item = build_mapper(meta, is_train=False, test_short_size=2, test_max_size=4)(rec)
    assert item["sem_seg"].tolist() == lab.tolist()  # no conversion
    train = build_mapper(meta, is_train=True, crop_size=(2, 4), short_sizes=[2], max_size=4, size_divisibility=-1,
                         color_aug=False)(rec, np.random.default_rng(0))
    assert sorted(train["targets"]["labels"].tolist()) == [0, 13, 64]  # 65 is no class


def test_coco_panoptic_category_ids_become_contiguous(tmp_path):
    """detectron2 COCO_CATEGORIES: contiguous id = index in the list; id 1 person -> 0 (thing), 92 banner
    (first stuff) -> 80, 200 rug-merged (last) -> 132."""
    from maskformer_core.data.formats import id2rgb

    base = tmp_path / "raw" / "coco"
    meta = get_metadata("coco_panoptic")
    ids = np.array([[0, 5, 5], [7, 7, 9]])
    for d in ("train2017", "val2017"):
        _jpg(base / d / "000000000139.jpg", 2, 3)
        _png(base / f"panoptic_{d}" / "000000000139.png", id2rgb(ids), "RGB")
        data = {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": 2, "width": 3}],
                "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": [
                    {"id": 5, "category_id": 1, "iscrowd": 0, "area": 2, "bbox": [1, 0, 2, 1]},
                    {"id": 7, "category_id": 92, "iscrowd": 0, "area": 2, "bbox": [0, 1, 2, 1]},
                    {"id": 9, "category_id": 200, "iscrowd": 1, "area": 1, "bbox": [2, 1, 1, 1]}]}],
                "categories": meta.categories()}
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"panoptic_{d}.json").write_text(json.dumps(data))
    out = prepare("coco_panoptic", tmp_path / "raw", tmp_path / "prep", progress=False)
    (rec,) = load_split("coco_panoptic", out, "val")
    got = {s["id"]: (s["category_id"], s["isthing"], s["iscrowd"]) for s in rec["segments_info"]}
    assert got == {5: (0, True, 0), 7: (80, False, 0), 9: (132, False, 1)}
    assert read_panoptic_png(rec["pan_seg_file_name"]).tolist() == ids.tolist()
    from maskformer_core.data.mappers import panoptic_targets

    t = panoptic_targets(ids, rec["segments_info"])
    assert t["labels"].tolist() == [0, 80]  # the crowd segment is no target (C)


def test_ade20k_full_steps_by_hand(tmp_path):
    """prepare_ade20k_full_sem_seg.py: class = (R // 10) * 256 + G; ids of the 847-list -> trainId, all else
    65535; short side > 512 -> 512 (nearest for labels, long side rounded)."""
    from maskformer_core.data.prepare.ade20k_full import decode_seg, resize_short, to_train_ids, train_id_lut

    seg = np.zeros((2, 3, 3), np.uint8)
    seg[0] = [(0, 12, 0), (10, 0, 0), (25, 3, 0)]  # 12, 256, 515
    seg[1] = [(0, 0, 0), (0, 12, 9), (10, 1, 0)]  # 0, 12 (B ignored), 257
    ids = decode_seg(seg)
    assert ids.tolist() == [[12, 256, 515], [0, 12, 257]]
    lut = train_id_lut([{"name": "a", "id": 12, "trainId": 0}, {"name": "b", "id": 515, "trainId": 846}],
                       tmp_path / "cats.json")
    assert to_train_ids(ids, lut).tolist() == [[0, 65535, 846], [65535, 0, 65535]]
    img = np.zeros((600, 1000, 3), np.uint8)
    lab = np.zeros((600, 1000), np.int64)
    lab[:, 500:] = 7
    img2, lab2 = resize_short(img, lab)
    assert lab2.shape == (512, 853) and img2.shape == (512, 853, 3)  # 1000 * 512 / 600 = 853.3 -> 853
    assert set(np.unique(lab2).tolist()) == {0, 7}  # nearest: no new label values
    small = np.zeros((400, 700), np.int64)
    assert resize_short(np.zeros((400, 700, 3), np.uint8), small)[1] is small  # short side <= 512: untouched
