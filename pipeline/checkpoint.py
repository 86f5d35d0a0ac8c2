"""Self-describing, atomically written training checkpoints with hash-verified fallback (resume after preemption).

Layout in `<run folder>/checkpoints/`:

- `last.pt`  the newest checkpoint, `prev.pt` the one before it, `final.pt` the end of training;
- each with `<name>.sha256` beside it (hex digest of the file bytes).

A checkpoint is a dict of plain types and tensors only, so it loads with `torch.load(weights_only=True)`:
`model`, `optimizer`, `scheduler` (state dicts), `iteration` (number of finished iterations),
`rng` ({"python": tuple, "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor...]}),
`sampler` (dict of ints), `config` (the resolved config as a dict), `git_commit`, `mlflow_run_id`,
`format_version`.

Writing: bytes go to a temp file which is fsynced, then `last.pt` is renamed to `prev.pt` and the temp
file renamed to `last.pt`. A failed write (disk full) removes the temp file and leaves `last.pt` as it
was. Reading: `load_latest` tries `last.pt` then `prev.pt`, skipping any file whose hash does not match.

A checkpoint without its `.sha256` (a run folder copied with `*.pt` only) is not a failed check: it is
refused (`UnverifiedCheckpoint`) and nothing is overwritten, with the way out in the message: after
checking the file, `python -m pipeline checkpoint rehash <run folder>` writes the missing sidecars
(`rehash`). Our own writes never leave a `.pt` without its sidecar (the digest is renamed first).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskformer_core.errors import CheckpointError
from pipeline import runfolder
from pipeline.config import training_keys_differ

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CKPT_DIR = runfolder.CKPT_DIR


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CKPT_DIR


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | os.PathLike, name: str = "last") -> Path:
    """Write `state` as `<ckpt_dir>/<name>.pt` (+ `.sha256`) atomically; for "last" keep the old one as "prev".

    On any error while writing (e.g. OSError ENOSPC) the temp files are removed and the error re-raised;
    the existing `<name>.pt` is untouched.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final, digest_path = ckpt_dir / f"{name}.pt", ckpt_dir / f"{name}.pt.sha256"
    tmp, tmp_digest = ckpt_dir / f".{name}.pt.tmp", ckpt_dir / f".{name}.pt.sha256.tmp"
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        _write_bytes_durably(tmp, data)
        _write_bytes_durably(tmp_digest, f"{digest}  {name}.pt\n".encode())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # name the checkpoint, not the temp file that is gone now
            raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc
        raise
    if name == "last" and final.exists():
        # Keep the previous good checkpoint: a truncated/corrupt last falls back to it.
        os.replace(final, ckpt_dir / "prev.pt")
        if digest_path.exists():
            os.replace(digest_path, ckpt_dir / "prev.pt.sha256")
        else:
            (ckpt_dir / "prev.pt.sha256").unlink(missing_ok=True)
    os.replace(tmp_digest, digest_path)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    return final


class UnverifiedCheckpoint(CheckpointError):
    """A checkpoint whose `.sha256` sidecar is missing: it cannot be verified, so it is neither used nor replaced."""


REHASH_HINT = "python -m pipeline checkpoint rehash"


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def require_sidecars(paths) -> None:
    """UnverifiedCheckpoint naming the first existing checkpoint in ``paths`` that has no `.sha256`."""
    missing = [p for p in paths if Path(p).is_file() and not digest_path(Path(p)).is_file()]
    if missing:
        p = Path(missing[0])
        raise UnverifiedCheckpoint(
            f"{p}: no {p.name}.sha256 beside it, so it cannot be verified; it was not used and nothing was "
            f"overwritten ({len(missing)} checkpoint(s) without a sidecar: {', '.join(Path(m).name for m in missing)}). "
            f"If the files are intact (e.g. the run folder was copied without its .sha256 files), re-hash them with "
            f"`{REHASH_HINT} {p.parent}`; to start this run over instead, move {p.parent} away")


def rehash(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """Write the missing `.sha256` of each checkpoint under ``path`` (a .pt file, a checkpoints/ or a run folder).

    Each file must load as a checkpoint (`load_file`: weights_only dict) before it gets a sidecar. An
    existing sidecar is never rewritten: a mismatch is reported ("mismatch"), not papered over.
    Returns [(file, "written" | "ok" | "mismatch")].
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        base = path / CKPT_DIR if (path / CKPT_DIR).is_dir() else path
        files = sorted(base.glob("*.pt"))
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    if not files:
        raise CheckpointError(f"{path}: no *.pt checkpoints found")
    out = []
    for f in files:
        dp = digest_path(f)
        if dp.is_file():
            out.append((f, "ok" if verify(f) else "mismatch"))
            continue
        load_file(f)  # a file that is no loadable checkpoint gets no sidecar (CheckpointError names it)
        tmp = dp.with_name(f".{dp.name}.tmp")
        try:
            _write_bytes_durably(tmp, f"{sha256_file(f)}  {f.name}\n".encode())
            os.replace(tmp, dp)
        finally:
            tmp.unlink(missing_ok=True)
        out.append((f, "written"))
    return out


def verify(path: Path) -> bool:
    """True when `path` exists and its bytes match the digest in `<path>.sha256`."""
    digest_path = path.with_name(path.name + ".sha256")
    if not path.is_file() or not digest_path.is_file():
        return False
    try:
        expected = digest_path.read_text().split()[0]
    except (OSError, IndexError):
        return False
    return sha256_file(path) == expected


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with `weights_only=True`; CheckpointError names the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def load_latest(ckpt_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest verified checkpoint (`last.pt`, else `prev.pt`) and its path, or None when there is none.

    A file whose hash does not match (truncated by a crash, bit rot) is skipped with a warning. A file
    without its `.sha256` raises `UnverifiedCheckpoint` (never skipped: the run would start over and
    overwrite it).
    """
    ckpt_dir = Path(ckpt_dir)
    require_sidecars([ckpt_dir / "final.pt", ckpt_dir / "last.pt", ckpt_dir / "prev.pt"])
    for name in ("last.pt", "prev.pt"):
        path = ckpt_dir / name
        if not path.exists():
            continue
        if not verify(path):
            log.warning("checkpoint %s fails its sha256 check; trying the previous one", path)
            continue
        try:
            return load_file(path, map_location), path
        except CheckpointError as exc:
            log.warning("%s", exc)
    return None


def check_config(state: dict[str, Any], config: dict[str, Any], path: Path | str) -> None:
    """Refuse a checkpoint trained with another config; the message names the differing keys."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: checkpoint has no resolved config; cannot check it belongs to this run")
    keys = training_keys_differ(saved, config)
    if keys:
        from pipeline.config import flatten

        a, b = flatten(saved), flatten(config)
        shown = ", ".join(f"{k} (checkpoint {a.get(k, '<missing>')!r} != config {b.get(k, '<missing>')!r})" for k in keys[:10])
        more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
        raise CheckpointError(f"{path} was written by a different config: {shown}{more}")


# ----------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """python/numpy/torch(/cuda) RNG states as weights_only-loadable types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



