"""The passes over the pixels of PQ evaluation, compiled with numba (``panoptic.py`` calls them).

A panoptic map is piecewise constant: a 480x640 COCO-sized pair of ground-truth and predicted maps has
~10^4 joint runs (positions where either map changes). Both kernels find them the same way, ``CHUNK``
pixels at a time so that the inputs are read from memory once: a vectorised pass writes one change
flag per pixel into a small buffer (a byte each, 0 or 1), which is then read eight flags at a time as
64-bit words; a zero word skips eight pixels, and the set bytes of a non-zero word are visited by their
trailing-zero count. Everything else is per run, not per pixel.

- ``run_starts(a, b, flags, starts)``: the run start positions of two flat maps of any integer dtypes
  (for ids that need a lookup: 24-bit PNG colours, raw GT ids);
- ``joint_hist(gt, pred, keys, rows, cols, width, flags, out)``: the joint histogram of a GT map (a
  dense index map, ``PanopticGT``, or raw segment ids, each run's id looked up among the image's sorted
  ids) and small predicted ids (the post-processors' 1..N, mapped to segment columns by the table
  ``cols``), counted per run into ``out``.

numba (``njit(nogil=True, cache=True)``): the kernels release the GIL, so the evaluator's thread pool
runs them side by side, and their machine code is cached after the first call of each dtype combination
(~1 s each): beside this file, else in numba's user cache folder (``NUMBA_CACHE_DIR``); where neither
can be written (a read-only install without a home folder) they are compiled once per process instead.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic


def _jit(inline: bool = False):
    """``numba.njit`` releasing the GIL, with an on-disk cache where numba finds a writable place for it."""
    options = {"nogil": True, "inline": "always" if inline else "never"}

    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(fn)

    return wrap


CHUNK = 4096  # pixels flagged at once: the flags (4 kB) and the chunk's inputs stay in the L1/L2 cache


@intrinsic
def _cttz(typingctx, word):
    """LLVM's count-trailing-zeros of a uint64 (one instruction); the word is never 0 where it is used."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


def new_flags() -> np.ndarray:
    """A flags buffer for the kernels (``CHUNK`` bytes, 8-byte aligned for its uint64 view); one per thread."""
    return np.zeros(CHUNK // 8, dtype=np.uint64).view(np.uint8)


@_jit(inline=True)
def _chunk_flags(a, b, c0, c1, flags):
    """flags[j] = 1 where pixel c0 + j differs from pixel c0 + j - 1 in ``a`` or ``b`` (c0 >= 1), zero
    padding up to a whole word; returns the number of 64-bit words to scan."""
    m = c1 - c0
    x, xp, y, yp = a[c0:c1], a[c0 - 1:c1 - 1], b[c0:c1], b[c0 - 1:c1 - 1]
    for j in range(m):
        flags[j] = (x[j] != xp[j]) | (y[j] != yp[j])
    words = (m + 7) // 8
    for j in range(m, words * 8):
        flags[j] = 0
    return words


@_jit()
def run_starts(a, b, flags, starts):
    """Write the joint run starts of the flat maps ``a`` and ``b`` (same size) into ``starts`` (intp, at
    least that size) in increasing order, 0 first; returns how many."""
    n = a.size
    if n == 0:
        return 0
    starts[0] = 0
    k = 1
    words = flags.view(np.uint64)
    for c0 in range(1, n, CHUNK):
        for wi in range(_chunk_flags(a, b, c0, min(c0 + CHUNK, n), flags)):
            word = words[wi]
            base = c0 + 8 * wi
            while word:
                starts[k] = base + np.intp(_cttz(word) >> np.uint64(3))
                k += 1
                word &= word - np.uint64(1)
    return k


@_jit(inline=True)
def _col(pred, pos, cols):
    """The histogram column of pixel ``pos``: cols[v] for its predicted value v in 0..len(cols)-2, the last
    entry of ``cols`` for any other value."""
    v = np.intp(pred[pos])
    last = cols.size - 1
    if v < 0 or v > last:
        v = last
    return cols[v]


@_jit(inline=True)
def _row(keys, rows, v):
    """rows[i] for keys[i] == v (keys sorted, binary search); rows[-1] (ids no segment lists) otherwise."""
    lo, hi = 0, keys.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    if lo < keys.size and keys[lo] == v:
        return rows[lo]
    return rows[rows.size - 1]


@_jit()
def joint_hist(gt, pred, keys, rows, cols, width, flags, out):
    """Add the joint histogram of ``gt`` (rows) and ``pred`` (columns by ``cols``, see ``_col``) to ``out``
    (int64, rows x ``width``, flat), one addition per joint run.

    With ``rows`` empty a GT value is its row (a dense index map, ``PanopticGT``). Otherwise GT values are
    raw ids: a run's row is ``rows[i]`` for its id ``keys[i]`` (int64, sorted) and ``rows[-1]`` (one more
    entry than ``keys``) for any other id, looked up only where the GT value changes. Returns False, with
    ``out`` incomplete, when a GT value is outside 0..2^32-1 (the caller's check names it).
    """
    n = gt.size
    if n == 0:
        return True
    dense = rows.size == 0
    last = np.int64(gt[0])
    if last < 0 or last > 0xFFFFFFFF:
        return False
    row = np.intp(last) if dense else _row(keys, rows, last)
    key = row * width + _col(pred, 0, cols)
    start = 0
    words = flags.view(np.uint64)
    for c0 in range(1, n, CHUNK):
        for wi in range(_chunk_flags(gt, pred, c0, min(c0 + CHUNK, n), flags)):
            word = words[wi]
            base = c0 + 8 * wi
            while word:
                pos = base + np.intp(_cttz(word) >> np.uint64(3))
                word &= word - np.uint64(1)
                out[key] += pos - start
                v = np.int64(gt[pos])
                if v != last:  # at most run starts of a panoptic map only the prediction changes
                    if v < 0 or v > 0xFFFFFFFF:
                        return False
                    last = v
                    row = np.intp(v) if dense else _row(keys, rows, v)
                key = row * width + _col(pred, pos, cols)
                start = pos
    out[key] += n - start
    return True
