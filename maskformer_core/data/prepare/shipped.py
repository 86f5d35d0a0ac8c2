"""Datasets used as shipped (the official datasets/README.md gives no preparation step): Mapillary Vistas v1.2 and
COCO panoptic need no conversion; the raw download is validated, then linked (or copied) into the prepared folder."""
from __future__ import annotations

from pathlib import Path

from maskformer_core.data.formats import OWN_MARKERS, link_or_copy
from maskformer_core.data.metadata import get_metadata
from maskformer_core.data.prepare.common import progress_iter


def check(name: str, raw_root: Path) -> dict:
    from maskformer_core.data.validate import validate

    base = raw_root
    if name == "coco_panoptic" and (raw_root / "coco" / "annotations").is_dir():
        base = raw_root / "coco"
    if name == "mapillary_vistas" and (raw_root / "mapillary_vistas" / "training").is_dir():
        base = raw_root / "mapillary_vistas"
    meta = get_metadata(name, raw_root)
    for split in meta.splits:
        validate(name, base, split, meta=meta)
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.name not in OWN_MARKERS)
    return {"base": base, "files": files}


def run(name: str, plan: dict, out: Path, progress: bool = True) -> None:
    base = plan["base"]
    for p in progress_iter(plan["files"], name, progress):
        link_or_copy(p, out / p.relative_to(base))
