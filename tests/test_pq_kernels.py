"""The compiled passes over the pixels (maskformer_core/metrics/_pixels.py) against plain numpy on
random piecewise-constant maps of every size class the chunked scan distinguishes (empty, shorter than
a word, word and chunk boundaries, several chunks) and the integer dtypes the evaluator sees."""
from __future__ import annotations

import numpy as np
import pytest

from maskformer_core.metrics import _pixels

C = _pixels.CHUNK
SIZES = [0, 1, 2, 7, 8, 9, 63, C - 1, C, C + 1, C + 8, 3 * C + 5]


def piecewise(rng: np.random.Generator, n: int, values: np.ndarray, mean_run: int) -> np.ndarray:
    """n values in runs of random length (1..2 * mean_run), each run a random choice from ``values``."""
    if n == 0:
        return values[:0].copy()
    lengths = rng.integers(1, 2 * mean_run + 1, size=n // max(mean_run // 2, 1) + 2)
    runs = rng.choice(values, size=lengths.size)
    return np.repeat(runs, lengths)[:n] if lengths.sum() >= n else np.resize(np.repeat(runs, lengths), n)


def dirty_flags() -> np.ndarray:
    """A flags buffer as the evaluator reuses it across images: left full of an earlier image's flags."""
    flags = _pixels.new_flags()
    flags[:] = 1
    return flags


def reference_starts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return np.zeros(0, dtype=np.intp)
    change = np.ones(a.size, dtype=bool)
    change[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return np.flatnonzero(change)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtypes", [(np.uint8, np.int32), (np.int64, np.int32), (np.uint32, np.uint32),
                                    (np.uint16, np.int64)])
def test_run_starts_equal_numpy(n, dtypes):
    rng = np.random.default_rng(n)
    a = piecewise(rng, n, np.arange(5).astype(dtypes[0]), 11)
    b = piecewise(rng, n, np.arange(4).astype(dtypes[1]), 7)
    starts = np.full(max(n, 1), -1, dtype=np.intp)
    k = _pixels.run_starts(a, b, dirty_flags(), starts)
    assert np.array_equal(starts[:k], reference_starts(a, b))


def reference_hist(rows: np.ndarray, pred: np.ndarray, cols: np.ndarray, n_rows: int, width: int) -> np.ndarray:
    """bincount over (row, column); a predicted value v maps to cols[v], any value outside 0..len(cols)-2
    to cols[-1]."""
    last = cols.size - 1
    col = cols[np.where((pred < 0) | (pred >= last), last, pred).astype(np.intp)]
    return np.bincount(rows.astype(np.intp) * width + col, minlength=n_rows * width)


NO_KEYS, NO_ROWS = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.intp)  # GT values are the rows
COLS = np.array([2, 0, 3, 1, 4], dtype=np.intp)  # ids 0..3 -> columns 2, 0, 3, 1; anything else -> 4


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pred_dtype", [np.int32, np.int64, np.uint8])
def test_joint_hist_equals_bincount_with_out_of_range_predictions(n, pred_dtype):
    """Predicted values are mapped through the column table; values outside it (negative, too large)
    count in its last entry's column."""
    rng = np.random.default_rng(1000 + n)
    gi = piecewise(rng, n, np.arange(6, dtype=np.uint8), 13)
    values = np.array([0, 1, 2, 3, 4, 9, 200] + ([-3] if np.issubdtype(pred_dtype, np.signedinteger) else []))
    pred = piecewise(rng, n, values.astype(pred_dtype), 5)
    out = np.zeros(6 * 5, dtype=np.int64)
    assert _pixels.joint_hist(gi, pred, NO_KEYS, NO_ROWS, COLS, 5, dirty_flags(), out)
    assert np.array_equal(out, reference_hist(gi, pred, COLS, 6, 5))
    assert out.sum() == n


@pytest.mark.parametrize("n", SIZES)
def test_joint_hist_ids_looks_up_raw_ids_and_flags_bad_ones(n):
    """Raw GT ids (24-bit colours) are looked up among sorted keys; ids not among them go to the last row;
    a negative GT id makes the kernel return False."""
    rng = np.random.default_rng(2000 + n)
    ids = np.array([16777215, 5, 0, 70000, 12], dtype=np.int64)  # the image's ids, VOID (0) among them
    stray = np.array([3, 99999], dtype=np.int64)  # PNG ids the JSON does not list
    gt = piecewise(rng, n, np.concatenate([ids, stray]), 17)
    pred = piecewise(rng, n, np.array([0, 1, 2, 3, 7], dtype=np.int32), 9)
    order = np.argsort(ids, kind="stable")
    rows = np.append(order, len(ids)).astype(np.intp)
    out = np.zeros((len(ids) + 1) * 5, dtype=np.int64)
    assert _pixels.joint_hist(gt, pred, ids[order], rows, COLS, 5, dirty_flags(), out)
    dense = np.full(gt.shape, len(ids))
    for i, v in enumerate(ids):
        dense[gt == v] = i
    assert np.array_equal(out, reference_hist(dense, pred, COLS, len(ids) + 1, 5))
    if n:
        bad = gt.copy()
        bad[n // 2:] = -1
        assert not _pixels.joint_hist(bad, pred, ids[order], rows, COLS, 5, dirty_flags(), out)
