"""Helpers shared by the preparation scripts: locating the archive's top folder, progress bars."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from maskformer_core.errors import DataError


def find_top(raw_root: Path, top: str, probe: str) -> Path:
    """The archive's top folder ``top`` inside ``raw_root``, or ``raw_root`` itself when it holds ``probe``."""
    if (raw_root / top).is_dir():
        return raw_root / top
    if (raw_root / probe).exists():
        return raw_root
    raise DataError(f"{raw_root}: wrong directory layout, expected {top}/{probe} (or {probe}) inside it")


def progress_iter(items: Iterable, desc: str, enabled: bool, total: int | None = None):
    """tqdm progress bar on long loops (silent when disabled)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)
