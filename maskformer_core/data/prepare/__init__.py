"""Official-download layout -> training layout, as the official preparation scripts
(datasets/prepare_*.py) do.

``prepare(name, raw_root, out_root)`` checks the raw layout first (DataError naming the missing
file or folder before any work), writes into a temp folder beside ``out_root`` and renames it into
place at the end, so a failed run leaves nothing half-written. A twin's SYNTHETIC.json is carried over, and
every prepared root gets PREPARED.json ({"dataset", "written_by"}): the marker that lets a later run replace it.
An existing ``out_root`` without a marker (the user's own files) is refused before any work.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from maskformer_core.data.formats import PREPARED_MARKER, atomic_directory, check_replaceable, require_dir
from maskformer_core.data.metadata import DATASETS, SYNTHETIC_MARKER
from maskformer_core.errors import DataError


def _steps(name: str):
    if name in ("ade20k", "ade20k_panoptic"):
        from maskformer_core.data.prepare import ade20k as mod
    elif name == "ade20k_full":
        from maskformer_core.data.prepare import ade20k_full as mod
    elif name == "coco_stuff_10k":
        from maskformer_core.data.prepare import coco_stuff_10k as mod
    elif name == "cityscapes":
        from maskformer_core.data.prepare import cityscapes as mod
    elif name in ("mapillary_vistas", "coco_panoptic"):
        from maskformer_core.data.prepare import shipped as mod
    else:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return mod


def prepare(name: str, raw_root: str | Path, out_root: str | Path, progress: bool = True) -> Path:
    """Prepare dataset ``name`` from ``raw_root`` (official download layout) into ``out_root``."""
    raw_root, out_root = Path(raw_root), Path(out_root)
    mod = _steps(name)
    require_dir(raw_root, f"raw {name} download")
    if raw_root.resolve() == out_root.resolve():
        raise DataError(f"{out_root}: output folder must differ from the raw folder")
    check_replaceable(out_root)
    plan = mod.check(name, raw_root)  # layout checks: raise before any work starts
    with atomic_directory(out_root) as tmp:
        mod.run(name, plan, tmp, progress=progress)
        marker = raw_root / SYNTHETIC_MARKER
        if marker.is_file():
            shutil.copyfile(marker, tmp / SYNTHETIC_MARKER)
        # Deterministic content (no paths, no time): a prepared folder hashes the same wherever it is made.
        (tmp / PREPARED_MARKER).write_text(json.dumps({"dataset": name, "written_by": "maskformer_core.data.prepare"}) + "\n")
    return out_root
