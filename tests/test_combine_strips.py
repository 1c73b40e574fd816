"""stack_arrays in strips of rows: the same bits as the whole stack at once, inputs only read."""

import numpy as np
import pytest

from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction import combine
from gsaoi_watch.reduction.combine import (
    MEDIAN_VARIANCE_FACTOR,
    _network_sort,
    _window_combine,
    masked_mean,
    sigma_clipped_mean,
    stack_arrays,
)
from gsaoi_watch.reduction.container import Array


# --- the whole-stack combination as it was before strips (the reference) ---------------------
def reference_sorted_combine(data, var, *, operation="median", nlow=1, nhigh=1):
    n = data.shape[0]
    shape = data.shape[1:]
    flat = data.reshape(n, -1)
    nan = np.isnan(flat)
    partial = np.nonzero(nan.any(axis=0))[0]
    srt = _network_sort(np.where(nan, np.float32(np.inf), flat) if partial.size else flat)
    lo, hi = min(nlow, n - 1), min(nhigh, max(n - 1 - min(nlow, n - 1), 0))
    m_full = n - lo - hi
    if operation == "median":
        a, b = srt[lo + (m_full - 1) // 2], srt[lo + m_full // 2]
        out = a if m_full % 2 else 0.5 * (a + b)
    else:
        out = srt[lo:lo + m_full].mean(axis=0)
    out = np.asarray(out, dtype=np.float32).copy()
    n_good = np.full(flat.shape[1], n, dtype=np.int64)
    m = np.full(flat.shape[1], m_full, dtype=np.int64)
    if partial.size:
        n_good[partial] = (~nan[:, partial]).sum(axis=0)
        out[partial], m[partial] = _window_combine(srt[:, partial], n_good[partial], nlow,
                                                   nhigh, operation)
    vflat = var.reshape(n, -1)
    if partial.size:
        mean_var = np.where(nan, 0, vflat).sum(axis=0) / np.maximum(n_good, 1)
    else:
        mean_var = vflat.mean(axis=0)
    if operation == "median":
        table = MEDIAN_VARIANCE_FACTOR
        factor = table[np.minimum(n_good, len(table) - 1)]
        factor = np.where(n_good < len(table), factor, np.float32(np.pi / 2))
        out_var = mean_var * factor / np.maximum(n_good, 1)
    else:
        out_var = mean_var / np.maximum(m, 1)
    return out.reshape(shape), out_var.reshape(shape), m.reshape(shape)


def reference_stack_arrays(arrays, *, operation="mean", reject="sigclip", hsigma=3.0,
                           lsigma=3.0, nlow=1, nhigh=1, zero=None):
    n = len(arrays)
    sci = np.stack([a.sci for a in arrays]).astype(np.float32, copy=False)
    if zero is not None:
        sci -= np.asarray(zero, dtype=np.float32)[:, None, None]
    var = np.stack([a.need("var") for a in arrays]).astype(np.float32, copy=False)
    dq = np.stack([a.need("dq") for a in arrays])
    bad = (dq & FAIL_BITS) != 0
    all_bad = bad.all(axis=0)
    bad &= ~all_bad
    data = sci
    if bad.any():
        data[bad] = np.nan
    if reject == "sigclip" and n > 2:
        out, out_var, n_used = sigma_clipped_mean(data, var, sigma_lower=lsigma,
                                                  sigma_upper=hsigma)
    elif reject == "minmax" or operation == "median":
        out, out_var, n_used = reference_sorted_combine(
            data, var, operation=operation, nlow=nlow if reject == "minmax" else 0,
            nhigh=nhigh if reject == "minmax" else 0)
    else:
        out, out_var, n_used = masked_mean(data, var, ~np.isnan(data))
    empty = n_used == 0
    out_dq = np.asarray(np.bitwise_and.reduce(dq, axis=0))
    out_dq = np.where(all_bad, np.bitwise_or.reduce(dq, axis=0), out_dq).astype(np.uint16)
    if empty.any():
        out = np.where(empty, 0, out)
        out_dq[empty] |= DQ["no_data"]
    return np.asarray(out, dtype=np.float32), np.asarray(out_var, dtype=np.float32), out_dq


# --- inputs --------------------------------------------------------------------------------------
def sky_stack(n, shape=(61, 47), *, seed=0, flags=True, nan_from=0):
    """``n`` arrays of a sky: noise, cosmic rays, flagged pixels (from row ``nan_from`` on),
    a corner where every input is flagged and one where a single one is good."""
    rng = np.random.default_rng(seed)
    sci = rng.normal(1000.0, 30.0, (n, *shape)).astype(np.float32)
    hot = rng.random(sci.shape) < 0.02
    sci[hot] += rng.uniform(100, 5000, hot.sum()).astype(np.float32)
    sci += np.arange(n, dtype=np.float32)[:, None, None] * 7.5  # levels differ
    var = rng.uniform(900.0, 1100.0, sci.shape).astype(np.float32)
    dq = np.zeros(sci.shape, np.uint16)
    if flags:
        flagged = rng.random(sci.shape) < 0.1
        flagged[:, :nan_from] = False
        dq[flagged] = np.uint16(DQ["cosmic_ray"])
        dq[:, -4:, :4] |= np.uint16(DQ["bad_pixel"])  # every input bad
        dq[1:, -8:-4, :4] |= np.uint16(DQ["saturated"])  # one good input
        dq[:, nan_from:, 10] |= np.uint16(DQ["non_linear"])  # not a failing bit
    return [Array(s, v, q, {"EXTVER": 1}) for s, v, q in zip(sci, var, dq)]


def as_memmaps(arrays, tmp_path):
    """The same arrays as read-only memory maps of .npy files."""
    out = []
    for k, a in enumerate(arrays):
        planes = {}
        for plane in ("sci", "var", "dq"):
            path = tmp_path / f"{plane}{k}.npy"
            np.save(path, getattr(a, plane))
            planes[plane] = np.load(path, mmap_mode="r")
        out.append(a.with_(**planes))
    return out


CASES = [  # (operation, reject, extra keywords): skies, flats, and the rest
    ("median", "minmax", {"nlow": 1, "nhigh": 1}),
    ("mean", "minmax", {"nlow": 1, "nhigh": 2}),
    ("median", "none", {}),
    ("mean", "sigclip", {}),
    ("mean", "none", {}),
]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 15])
@pytest.mark.parametrize("operation,reject,kw", CASES)
@pytest.mark.parametrize("rows", [1, 7, 16, None])
def test_strips_give_the_bits_of_the_whole_stack(n, operation, reject, kw, rows):
    arrays = sky_stack(n, seed=n)
    zero = np.arange(n) * 7.5 if operation == "median" else None
    want = reference_stack_arrays(arrays, operation=operation, reject=reject, zero=zero, **kw)
    got = stack_arrays(arrays, operation=operation, reject=reject, zero=zero, rows=rows, **kw)
    for plane, ref in zip(("sci", "var", "dq"), want):
        value = getattr(got, plane)
        assert value.dtype == ref.dtype and value.shape == ref.shape
        assert np.array_equal(value.view(np.uint8), ref.view(np.uint8)), plane


@pytest.mark.parametrize("nan_from", [0, 20, 61])
@pytest.mark.parametrize("operation", ["median", "mean"])
def test_strips_before_the_first_flag_get_the_variance_of_the_whole_stack(nan_from, operation):
    """The sorted combination's variance takes another path when the stack has no NaN at
    all; strips combined before the first flagged row are set right afterwards."""
    arrays = sky_stack(5, seed=11, flags=nan_from < 61, nan_from=nan_from)
    want = reference_stack_arrays(arrays, operation=operation, reject="minmax")
    got = stack_arrays(arrays, operation=operation, reject="minmax", rows=8)
    for plane, ref in zip(("sci", "var", "dq"), want):
        assert np.array_equal(getattr(got, plane).view(np.uint8), ref.view(np.uint8)), plane


@pytest.mark.parametrize("operation,reject,kw", CASES)
def test_read_only_memory_maps_are_combined_and_left_alone(tmp_path, operation, reject, kw):
    arrays = sky_stack(5, seed=4)
    maps = as_memmaps(arrays, tmp_path)
    assert not maps[0].sci.flags.writeable
    want = reference_stack_arrays(arrays, operation=operation, reject=reject,
                                  zero=[0, 1, 2, 3, 4], **kw)
    got = stack_arrays(maps, operation=operation, reject=reject, zero=[0, 1, 2, 3, 4],
                       rows=9, **kw)
    for plane, ref in zip(("sci", "var", "dq"), want):
        assert np.array_equal(getattr(got, plane).view(np.uint8), ref.view(np.uint8)), plane
        assert type(getattr(got, plane)) is np.ndarray
    for a, m in zip(arrays, maps):
        for plane in ("sci", "var", "dq"):
            assert np.array_equal(getattr(a, plane), getattr(m, plane))


def test_strip_rows_follow_the_memory_budget():
    assert combine.strip_rows(7, (2048, 2048), 64 * 2**20) == 130
    assert combine.strip_rows(7, (2048, 2048), 1) == 1
    assert combine.strip_rows(3, (20, 30), 2**30) == 20
    arrays = sky_stack(3, seed=2)
    a = stack_arrays(arrays, operation="median", reject="minmax", memory=1)
    b = stack_arrays(arrays, operation="median", reject="minmax")
    assert np.array_equal(a.sci, b.sci) and np.array_equal(a.var, b.var)


def test_arrays_of_different_shapes_are_refused():
    arrays = sky_stack(3, seed=1)
    arrays[1] = arrays[1].with_(var=arrays[1].var[:-1])
    with pytest.raises(ValueError, match="same shape"):
        stack_arrays(arrays)
    with pytest.raises(ValueError, match="no arrays"):
        stack_arrays([])


def test_the_temporaries_stay_within_the_budget():
    """numpy's buffers (traced by tracemalloc) during the sky median of 7 arrays of 512 x 512:
    the result (10 bytes a pixel) and strips of about 2 MiB, not the whole stack (7 x 4 x 3
    bytes a pixel for SCI, VAR, DQ stacked, before any sorting)."""
    import tracemalloc

    arrays = sky_stack(7, (512, 512), seed=9)
    budget = 2 * 2**20
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = stack_arrays(arrays, operation="median", reject="minmax", zero=np.arange(7.0),
                           memory=budget)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    result = sum(getattr(out, p).nbytes for p in ("sci", "var", "dq"))
    assert peak < result + 1.5 * budget, (peak - result) / 2**20
