"""Cityscapes preparation: gtFine polygons JSON -> *_gtFine_labelTrainIds.png with cityscapesScripts' own label
table and rasteriser (preparation/createTrainIdLabelImgs.py,
which the official datasets/README.md names)."""
from __future__ import annotations

from pathlib import Path

from maskformer_core.data.formats import link_or_copy, require_dir
from maskformer_core.data.prepare.common import progress_iter
from maskformer_core.errors import DataError

SPLITS = ("train", "val")


def check(name: str, raw_root: Path) -> dict:
    base = raw_root / "cityscapes" if (raw_root / "cityscapes" / "gtFine").is_dir() else raw_root
    items = []
    for split in SPLITS:
        img_root = require_dir(base / "leftImg8bit" / split, "Cityscapes leftImg8bit/<split>")
        gt_root = require_dir(base / "gtFine" / split, "Cityscapes gtFine/<split>")
        images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DataError(f"{img_root}: no <city>/*_leftImg8bit.png images (wrong directory layout?)")
        for img in images:
            stem = img.name[: -len("_leftImg8bit.png")]
            poly = gt_root / img.parent.name / f"{stem}_gtFine_polygons.json"
            if not poly.is_file():
                raise DataError(f"{poly}: missing file (polygons of {img.name})")
            items.append((split, img, poly))
    return {"base": base, "items": items}


def run(name: str, plan: dict, out: Path, progress: bool = True) -> None:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    base = plan["base"]
    for split, img, poly in progress_iter(plan["items"], "cityscapes", progress):
        rel_img = img.relative_to(base)
        link_or_copy(img, out / rel_img)
        rel_poly = poly.relative_to(base)
        link_or_copy(poly, out / rel_poly)
        ann = Annotation()
        try:
            ann.fromJsonFile(str(poly))
        except Exception as exc:  # json / key errors inside cityscapesScripts
            raise DataError(f"{poly}: not a Cityscapes polygons file ({exc})") from exc
        try:
            label_img = createLabelImage(ann, "trainIds")
        except KeyError as exc:
            raise DataError(f"{poly}: unknown Cityscapes label {exc}") from exc
        stem = poly.name[: -len("_gtFine_polygons.json")]
        label_img.save(out / rel_poly.parent / f"{stem}_gtFine_labelTrainIds.png")
