"""Dataset definitions of the seven MaskFormer datasets (official datasets/prepare_*.py and
mask_former/data/datasets/register_*.py) and their synthetic-twin subsets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from maskformer_core.data.formats import SYNTHETIC_MARKER  # noqa: F401 - re-exported
from maskformer_core.errors import DataError

DATASETS = (
    "ade20k",
    "ade20k_full",
    "coco_stuff_10k",
    "cityscapes",
    "mapillary_vistas",
    "coco_panoptic",
    "ade20k_panoptic",
)

# SYNTHETIC_MARKER: the marker file a synthetic twin root carries (docs/ARCHITECTURE.md "Synthetic twins");
# defined with the other ownership markers in formats.py.


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """Everything the loaders, mappers, trainer and evaluators need to know about one dataset.

    Contiguous class ids are 0..K-1 (index into ``class_names``); ``dataset_ids[i]`` is the id the
    official files use for contiguous class i (e.g. COCO category ids with gaps). ``thing_ids`` are
    contiguous ids. Sizes are (H, W) crops and short/long side lengths in pixels.
    """

    name: str
    task: str  # "semantic" | "panoptic"
    class_names: tuple[str, ...]
    dataset_ids: tuple[int, ...]
    thing_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_label: int
    splits: tuple[str, ...]
    train_split: str
    test_split: str
    crop_size: tuple[int, int]
    train_short_sizes: tuple[int, ...]
    train_max_size: int
    test_short_size: int
    test_max_size: int
    tta_sizes: tuple[int, ...]
    tta_max_size: int
    tta_flip: bool
    evaluator_type: str
    # Mapper padding target: pad bottom/right to the crop size (official semantic mapper); -1 = no padding
    # (Cityscapes SIZE_DIVISIBILITY -1); 0 = COCO panoptic (DETR mapper, no padding).
    size_divisibility: int
    augmentation: str  # "semantic" (official semantic/ADE panoptic mapper) | "detr" (COCO panoptic)
    label_divisor: int = 0  # 1000 for the panoptic registrations (F)
    synthetic: bool = False
    num_workers: int = 4  # detectron2 DATALOADER.NUM_WORKERS: 4, 10 for Mapillary

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_classes) if i not in set(self.thing_ids))

    @property
    def dataset_id_to_contiguous(self) -> dict[int, int]:
        return {d: i for i, d in enumerate(self.dataset_ids)}

    def categories(self) -> list[dict]:
        """COCO-panoptic style category list: [{id (dataset id), name, isthing, color}]."""
        things = set(self.thing_ids)
        return [
            {"id": int(d), "name": n, "isthing": int(i in things), "color": list(c)}
            for i, (d, n, c) in enumerate(zip(self.dataset_ids, self.class_names, self.colors))
        ]


def short_side_choices(base: int, lo: int = 5, hi: int = 20) -> tuple[int, ...]:
    """ResizeShortestEdge "choice" set ``[int(x * 0.1 * base) for x in range(lo, hi + 1)]`` (official configs
    ``INPUT.MIN_SIZE_TRAIN``)."""
    return tuple(int(x * 0.1 * base) for x in range(lo, hi + 1))


def _palette(n: int, salt: int) -> tuple[tuple[int, int, int], ...]:
    """Stable distinct-ish colours for datasets whose official palette is not reproduced here."""
    out = []
    for i in range(n):
        h = (i * 2654435761 + salt * 97) & 0xFFFFFF
        out.append(((h >> 16) & 255, (h >> 8) & 255, h & 255))
    return tuple(out)


# --- ADE20K SceneParse150 (detectron2 builtin_meta ADE20K_SEM_SEG_CATEGORIES, short names) ----------
ADE20K_150_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# Palette of ADE20K_150_CATEGORIES (register_ade20k_panoptic.py), with commit 909e8a8's fix:
# skyscraper (48) is [140, 140, 200], not road's [140, 140, 140] (F, issue #32).
ADE20K_150_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 200), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# isthing = 1 entries of ADE20K_150_CATEGORIES (register_ade20k_panoptic.py): 100 things, 50 stuff (F).
ADE20K_PANOPTIC_THING_IDS = (
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37,
    38, 39, 41, 42, 43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67,
    69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92,
    93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124,
    125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
)

# --- COCO (detectron2 builtin_meta COCO_CATEGORIES): 80 things, then 53 panoptic stuff -----------------
COCO_THINGS = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"),
    (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"),
    (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
COCO_PANOPTIC_STUFF = (
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"),
    (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"),
    (141, "pillow"), (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"),
    (149, "road"), (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"), (159, "snow"),
    (161, "stairs"), (166, "tent"), (168, "towel"), (171, "wall-brick"), (175, "wall-stone"),
    (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"), (180, "window-blind"),
    (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"),
    (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"),
    (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"),
    (197, "building-other-merged"), (198, "rock-merged"), (199, "wall-other-merged"),
    (200, "rug-merged"),
)
# COCO-Stuff 91 stuff classes, COCO ids 92..182 (register_coco_stuff_10k.py COCO_CATEGORIES).
COCO_STUFF_STUFF_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
)


def _cityscapes_classes() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], tuple[int, ...]]:
    """19 trainId classes from cityscapesScripts' own label table (F): names, colours, labelIds."""
    from cityscapesscripts.helpers.labels import labels

    by_train = {}
    for lab in labels:
        if 0 <= lab.trainId < 255 and lab.trainId not in by_train:
            by_train[lab.trainId] = lab
    ordered = [by_train[t] for t in range(19)]
    return (
        tuple(lab.name for lab in ordered),
        tuple(tuple(lab.color) for lab in ordered),
        tuple(lab.id for lab in ordered),
    )


# detectron2 TEST.AUG defaults, used where a config has no TEST.AUG block
# (configs/ade20k-full-847/Base-ADE20KFull-847.yaml, mapillary-vistas-65/Base-MapillaryVistas-65.yaml).
_D2_TTA_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_D2_TTA_MAX = 4000


def _official(name: str) -> DatasetMeta:
    if name == "ade20k":  # configs/ade20k-150/Base-ADE20K-150.yaml
        return DatasetMeta(
            name=name, task="semantic", class_names=ADE20K_150_NAMES, dataset_ids=tuple(range(150)),
            thing_ids=(), colors=ADE20K_150_COLORS, ignore_label=255, splits=("train", "val"),
            train_split="train", test_split="val", crop_size=(512, 512),
            train_short_sizes=short_side_choices(512), train_max_size=2048, test_short_size=512,
            test_max_size=2048, tta_sizes=(256, 384, 512, 640, 768, 896), tta_max_size=3584,
            tta_flip=True, evaluator_type="sem_seg", size_divisibility=512, augmentation="semantic",
        )
    if name == "ade20k_full":  # configs/ade20k-full-847/Base-ADE20KFull-847.yaml
        # The official 847-entry list (name, ADE index id, trainId) is too long to reproduce here:
        # names are placeholders class_000..class_846 and dataset ids equal trainIds. Real data needs
        # the official list as JSON for `prepare` (see prepare/ade20k_full.py). Count and ignore exact.
        return DatasetMeta(
            name=name, task="semantic", class_names=tuple(f"class_{i:03d}" for i in range(847)),
            dataset_ids=tuple(range(847)), thing_ids=(), colors=_palette(847, 1), ignore_label=65535,
            splits=("train", "val"), train_split="train", test_split="val", crop_size=(512, 512),
            train_short_sizes=short_side_choices(512), train_max_size=2048, test_short_size=512,
            test_max_size=2048, tta_sizes=_D2_TTA_SIZES, tta_max_size=_D2_TTA_MAX, tta_flip=True,
            evaluator_type="sem_seg", size_divisibility=512, augmentation="semantic",
        )
    if name == "coco_stuff_10k":  # configs/coco-stuff-10k-171/Base-COCOStuff10K-171.yaml; tested on the
        # 1k test split (DATASETS.TEST)
        ids = tuple(i for i, _ in COCO_THINGS) + tuple(range(92, 183))
        names = tuple(n for _, n in COCO_THINGS) + COCO_STUFF_STUFF_NAMES
        return DatasetMeta(
            name=name, task="semantic", class_names=names, dataset_ids=ids, thing_ids=(),
            colors=_palette(171, 2), ignore_label=255, splits=("train", "test"), train_split="train",
            test_split="test", crop_size=(640, 640), train_short_sizes=short_side_choices(640, 5, 15),
            train_max_size=2560, test_short_size=640, test_max_size=2560,
            tta_sizes=(320, 480, 640, 800, 960, 1120), tta_max_size=4480, tta_flip=True,
            evaluator_type="sem_seg", size_divisibility=640, augmentation="semantic",
        )
    if name == "cityscapes":  # configs/cityscapes-19/Base-Cityscapes-19.yaml
        names, colors, label_ids = _cityscapes_classes()
        return DatasetMeta(
            name=name, task="semantic", class_names=names, dataset_ids=label_ids, thing_ids=(),
            colors=colors, ignore_label=255, splits=("train", "val"), train_split="train",
            test_split="val", crop_size=(512, 1024), train_short_sizes=short_side_choices(1024),
            train_max_size=4096, test_short_size=1024, test_max_size=2048,
            tta_sizes=(512, 768, 1024, 1280, 1536, 1792), tta_max_size=4096, tta_flip=True,
            evaluator_type="cityscapes_sem_seg", size_divisibility=-1, augmentation="semantic",
        )
    if name == "mapillary_vistas":  # configs/mapillary-vistas-65/Base-MapillaryVistas-65.yaml
        # The 65 evaluated v1.2 class names are not reproduced here: placeholders class_00..class_64.
        # Label values 0..64 are the classes, 65 ("Unlabeled") is ignore (F).
        return DatasetMeta(
            name=name, task="semantic", class_names=tuple(f"class_{i:02d}" for i in range(65)),
            dataset_ids=tuple(range(65)), thing_ids=(), colors=_palette(65, 3), ignore_label=65,
            splits=("train", "val"), train_split="train", test_split="val", crop_size=(1280, 1280),
            train_short_sizes=short_side_choices(2048), train_max_size=8192, test_short_size=2048,
            test_max_size=2048, tta_sizes=_D2_TTA_SIZES, tta_max_size=_D2_TTA_MAX, tta_flip=True,
            evaluator_type="sem_seg", size_divisibility=1280, augmentation="semantic", num_workers=10,
        )
    if name == "coco_panoptic":  # configs/coco-panoptic/Base-COCO-PanopticSegmentation.yaml:
        # DETR augmentation, no padding, sizes 480..800 / 1333
        ids = tuple(i for i, _ in COCO_THINGS) + tuple(i for i, _ in COCO_PANOPTIC_STUFF)
        names = tuple(n for _, n in COCO_THINGS) + tuple(n for _, n in COCO_PANOPTIC_STUFF)
        return DatasetMeta(
            name=name, task="panoptic", class_names=names, dataset_ids=ids, thing_ids=tuple(range(80)),
            colors=_palette(133, 4), ignore_label=255, splits=("train", "val"), train_split="train",
            test_split="val", crop_size=(384, 600), train_short_sizes=tuple(range(480, 801, 32)),
            train_max_size=1333, test_short_size=800, test_max_size=1333, tta_sizes=_D2_TTA_SIZES,
            tta_max_size=_D2_TTA_MAX, tta_flip=True, evaluator_type="coco_panoptic_seg",
            size_divisibility=0, augmentation="detr", label_divisor=1000,
        )
    if name == "ade20k_panoptic":  # configs/ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml
        return DatasetMeta(
            name=name, task="panoptic", class_names=ADE20K_150_NAMES, dataset_ids=tuple(range(150)),
            thing_ids=ADE20K_PANOPTIC_THING_IDS, colors=ADE20K_150_COLORS, ignore_label=255,
            splits=("train", "val"), train_split="train", test_split="val", crop_size=(640, 640),
            train_short_sizes=short_side_choices(640), train_max_size=2560, test_short_size=640,
            test_max_size=2560, tta_sizes=_D2_TTA_SIZES, tta_max_size=_D2_TTA_MAX, tta_flip=True,
            evaluator_type="ade20k_panoptic_seg", size_divisibility=640, augmentation="semantic",
            label_divisor=1000,
        )
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def twin_class_indices(name: str, num_classes: int) -> list[int]:
    """Indices (into the official contiguous ids) of the K classes a synthetic twin keeps.

    Semantic twins keep the first K classes. Panoptic twins keep a mix: the first ceil(K/2) thing
    classes and the first floor(K/2) stuff classes, in official order.
    """
    full = _official(name)
    if not 2 <= num_classes <= full.num_classes:
        raise DataError(f"{name}: num_classes={num_classes} must be in 2..{full.num_classes}")
    if full.task == "semantic":
        return list(range(num_classes))
    things = list(full.thing_ids)[: (num_classes + 1) // 2]
    stuff = list(full.stuff_ids)[: num_classes // 2]
    return sorted(things + stuff)


def read_synthetic_marker(root: str | Path) -> Optional[dict]:
    """The parsed SYNTHETIC.json of a twin root, or None when ``root`` holds no twin."""
    path = Path(root) / SYNTHETIC_MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def subset_meta(full: DatasetMeta, indices: list[int]) -> DatasetMeta:
    """Metadata restricted to ``indices`` (renumbered contiguously 0..len-1)."""
    things = set(full.thing_ids)
    return dataclasses.replace(
        full,
        class_names=tuple(full.class_names[i] for i in indices),
        dataset_ids=tuple(full.dataset_ids[i] for i in indices),
        thing_ids=tuple(j for j, i in enumerate(indices) if i in things),
        colors=tuple(full.colors[i] for i in indices),
        synthetic=True,
    )


def get_metadata(name: str, root: str | Path | None = None) -> DatasetMeta:
    """Official metadata of dataset ``name``; the K-class twin subset when ``root`` holds a twin."""
    full = _official(name)
    if root is None:
        return full
    marker = read_synthetic_marker(root)
    if marker is None:
        return full
    if marker.get("dataset") != name:
        raise DataError(
            f"{Path(root) / SYNTHETIC_MARKER}: twin of {marker.get('dataset')!r}, not {name!r}"
        )
    indices = marker.get("class_indices") or twin_class_indices(name, int(marker["num_classes"]))
    return subset_meta(full, [int(i) for i in indices])


# The official K and task of every dataset, read from its metadata above (the one place K is written).
OFFICIAL_NUM_CLASSES: dict[str, int] = {d: _official(d).num_classes for d in DATASETS}
PANOPTIC_DATASETS: tuple[str, ...] = tuple(d for d in DATASETS if _official(d).task == "panoptic")
