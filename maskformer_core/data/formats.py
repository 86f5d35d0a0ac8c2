"""On-disk formats of the datasets: image/label readers and writers, panoptic id<->RGB, atomic folders."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from maskformer_core.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


_EXIF_ORIENTATION = 0x0112  # EXIF tag 274
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height


def _oriented(im: Image.Image) -> Image.Image:
    """The image as displayed: EXIF orientation applied, as detectron2 `utils.read_image` does
    (`_apply_exif_orientation`) for every image and label file the official mappers read."""
    return ImageOps.exif_transpose(im)


def read_image(path: str | Path) -> np.ndarray:
    """RGB image as uint8 [H, W, 3], EXIF orientation applied (detectron2 `read_image`); DataError naming
    the file when missing or corrupt."""
    try:
        with Image.open(path) as im:
            return np.asarray(_oriented(im).convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({exc})") from exc


def read_label(path: str | Path) -> np.ndarray:
    """Label map (PNG, uint16 TIFF) as int64 [H, W] (F: the official loader casts GT to float64)."""
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                    raise DataError(f"{path}: label PNG must be single-channel, got mode {im.mode}")
                arr = np.asarray(_oriented(im))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: label file missing") from exc
    except DataError:
        raise
    except Exception as exc:  # tifffile/PIL raise many types for corrupt files
        raise DataError(f"{path}: corrupt or unreadable label ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{path}: label must be a single-channel 2-D map, got shape {arr.shape}")
    return arr.astype(np.int64)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Panoptic PNG as segment ids int64 [H, W]: id = R + 256 G + 256^2 B, 0 = VOID (panopticapi ``utils.py``
    ``rgb2id``)."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(_oriented(im).convert("RGB"), dtype=np.int64)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: panoptic PNG missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt panoptic PNG ({exc})") from exc
    return rgb2id(rgb)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] colours -> ids R + 256 G + 256^2 B (panopticapi)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of rgb2id: ids [...] -> uint8 colours [..., 3]."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed, read from the image header only (EXIF orientation 5-8 swaps them)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS:
                w, h = h, w
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({exc})") from exc
    return h, w


def save_png(arr: np.ndarray, path: str | Path) -> None:
    """Write a uint8 (L or RGB) array as PNG."""
    Image.fromarray(arr).save(path, format="PNG")


def save_jpeg(arr: np.ndarray, path: str | Path) -> None:
    """Write RGB uint8 as JPEG with PIL's default quality (F: the ADE-Full prep re-encodes this way)."""
    Image.fromarray(arr).save(path, format="JPEG")


def save_tif_uint16(arr: np.ndarray, path: str | Path) -> None:
    """Write a uint16 label map as TIFF (ADE20K-Full, F)."""
    import tifffile

    tifffile.imwrite(str(path), np.asarray(arr, dtype=np.uint16))


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy when linking is not possible)."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# Marker files of the folders this project writes (synthetic twins, prepared datasets). Only a folder
# carrying one of them may be replaced by `atomic_directory`; anything else is the user's.
SYNTHETIC_MARKER = "SYNTHETIC.json"
PREPARED_MARKER = "PREPARED.json"
OWN_MARKERS = (SYNTHETIC_MARKER, PREPARED_MARKER)


def check_replaceable(out: str | Path, what: str = "output folder") -> None:
    """DataError naming ``out`` when it is a non-empty folder (or a file) this project did not write.

    A folder may be replaced when it does not exist, is empty, or carries one of OWN_MARKERS (a twin or
    a prepared dataset written by `synthesize` / `prepare`). Called before any work starts.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"{what} {out}: exists and is not a folder; refusing to replace it")
    if any((out / m).is_file() for m in OWN_MARKERS):
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise DataError(f"{what} {out}: folder is not empty ({shown}) and carries no {' / '.join(OWN_MARKERS)} "
                        f"marker, so this pipeline did not write it; refusing to replace it (choose another "
                        f"folder, or move it away)")


@contextlib.contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``out``; on success it replaces ``out`` in one rename.

    On any exception the temp folder is removed and ``out`` is left as it was, so nothing
    half-written remains. An existing ``out`` is replaced only when `check_replaceable` allows it
    (empty, or written by this project: it carries a marker), else DataError before anything is written.
    """
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and (exc.filename is None or str(exc.filename).startswith(str(tmp))):
            # a full or read-only disk: name the folder being written, not the temp folder that is gone now
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else DataError naming it."""
    if not path.is_dir():
        raise DataError(f"{path}: missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing file ({what})")
    return path


def first_duplicate(values: Iterable) -> object:
    """The first value seen twice in ``values`` (JSON ids, keys, file names), or None when all differ."""
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
