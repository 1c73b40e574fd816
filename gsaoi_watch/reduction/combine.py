"""The one combiner of the package: flats, skies and stacks combine their inputs here.

Every combination works on a stack of N values per pixel (axis 0), NaN marking the values
that are not to be used (DQ-flagged, or not covered by a resampled frame):

* :func:`sigma_clipped_mean`: median-centred iterative sigma clipping
  (``astropy.stats.sigma_clip`` with ``cenfunc='median'``, ``stdfunc='std'``, whose C
  implementation along an axis is used as it is: a hand-made clip over sorted values was
  3.5 times slower on a 9-frame stack strip, 0.24 s against 0.07 s for 9 x 256 x 1024), then
  the mean and the variance of the mean of the values kept.  Flats (lamp stacks) and the
  distortion-corrected stack use it.
* :func:`sorted_combine`: median or mean after dropping the ``nlow`` lowest and ``nhigh``
  highest values (skies), over a stack sorted by a vectorised sorting network, which is
  faster than ``numpy.sort`` along axis 0 for the handful of frames a sky has (1024 x 1024
  pixels: 0.014 s against 0.055 s for 3 frames, 0.037 s against 0.062 s for 8).
* :func:`stack_arrays`: DRAGONS' stackFrames on :class:`~gsaoi_watch.reduction.container.Array`
  inputs (SCI, VAR and DQ), choosing between the two, in strips of rows (as stackFrames'
  ``memory`` parameter does): the sky median of 7 full-size arrays traced 732 MB of
  temporaries on the whole stack at once, 90 MB in 64 MiB strips (the result's 40 MB
  included), and took less CPU time (0.52 s against 0.88 s; benchmarks/bench_combine.py);
  a lamp stack of 15, 1268 MB against 77 MB (2.1 s against 2.6 s).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from astropy.stats import sigma_clip

from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array

__all__ = ["MEDIAN_VARIANCE_FACTOR", "STRIP_MEMORY", "masked_mean", "sigma_clip_mask",
           "sigma_clipped_mean", "sorted_combine", "stack_arrays", "strip_rows"]

#: n x variance of the median of n unit normal values (Monte Carlo, 4e5 draws each), n = 1..15;
#: the asymptotic value pi/2 is used beyond.  DRAGONS uses pi/2 / n_used, which overstates
#: the noise of a small median (more so after min/max rejection) by up to ~50 %.
MEDIAN_VARIANCE_FACTOR = np.array([1.0, 0.996, 0.997, 1.344, 1.198, 1.43, 1.288, 1.472, 1.347,
                                   1.494, 1.379, 1.517, 1.405, 1.522, 1.426, 1.526],
                                  dtype=np.float32)


def sigma_clip_mask(data: np.ndarray, *, sigma_lower: float = 3.0, sigma_upper: float = 3.0,
                    maxiters: int | None = None) -> np.ndarray:
    """Values of ``data`` (N, ...) kept by median-centred sigma clipping along axis 0.

    NaN values are never kept.  Fewer than three values cannot be clipped (each of two
    values is one standard deviation from their median), so stacks of one or two are
    kept whole.

    Returns
    -------
    ndarray of bool
        True where a value is used.
    """
    if data.shape[0] <= 2:
        return ~np.isnan(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(data, sigma_lower=sigma_lower, sigma_upper=sigma_upper,
                             maxiters=maxiters, cenfunc="median", stdfunc="std", axis=0,
                             masked=True)
    return ~np.ma.getmaskarray(clipped)


def masked_mean(data: np.ndarray, var: np.ndarray, use: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the values ``use``d along axis 0, the variance of that mean, and their count.

    The mean is 0 where no value is used.
    """
    n_used = use.sum(axis=0)
    n_used_safe = np.maximum(n_used, 1).astype(np.float32)
    out = np.where(use, data, 0).sum(axis=0) / n_used_safe
    out_var = np.where(use, var, 0).sum(axis=0) / n_used_safe**2
    return out, out_var, n_used


def sigma_clipped_mean(data: np.ndarray, var: np.ndarray, *, sigma_lower: float = 3.0,
                       sigma_upper: float = 3.0, maxiters: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped mean along axis 0 (see :func:`sigma_clip_mask`), its variance and count.

    Parameters
    ----------
    data, var : ndarray (N, ...)
        Values (NaN: not to be used) and their variances.
    sigma_lower, sigma_upper : float
        Clipping limits in standard deviations below and above the median.
    maxiters : int or None
        Most clipping iterations (None: until nothing changes).

    Returns
    -------
    mean, var, n_used : ndarray
        float32 mean (0 where nothing is used), the variance of the mean (sum of the
        variances / n_used**2) and the number of values used.
    """
    use = sigma_clip_mask(data, sigma_lower=sigma_lower, sigma_upper=sigma_upper,
                          maxiters=maxiters)
    return masked_mean(data, var, use)


#: Default budget (bytes) for the temporaries of one strip of :func:`stack_arrays`.
STRIP_MEMORY = 64 * 2**20

#: Bytes of temporaries per input value of a strip (stacked sci, var, dq, the NaN and
#: rejection masks, the sorting network's or sigma_clip's copies): the peak traced by
#: tracemalloc over one 128 x 2048 strip less its result, divided by N x rows x columns,
#: was 34, 25, 23, 22 for the min/max median of N = 3, 7, 15, 30 and 25, 21, 20, 20 for
#: the sigma-clipped mean; rounded up.
_BYTES_PER_VALUE = 36


def strip_rows(n: int, shape: Sequence[int], memory: float = STRIP_MEMORY) -> int:
    """Rows per strip for ``n`` stacked arrays of ``shape`` within ``memory`` bytes.

    The temporaries of one strip take about :data:`_BYTES_PER_VALUE` bytes per stacked
    value; at least one row, at most all of them.
    """
    ny = int(shape[0]) if len(shape) else 1
    per_row = max(1, n) * _BYTES_PER_VALUE * int(np.prod(shape[1:], dtype=np.int64))
    return int(min(max(ny, 1), max(1, memory // max(per_row, 1))))


def stack_arrays(arrays: Sequence[Array], *, operation: str = "mean", reject: str = "sigclip",
                 hsigma: float = 3.0, lsigma: float = 3.0, nlow: int = 1, nhigh: int = 1,
                 zero: Sequence[float] | np.ndarray | None = None,
                 memory: float = STRIP_MEMORY, rows: int | None = None) -> Array:
    """Combine one array from several frames, DQ-aware, as DRAGONS' stackFrames.

    The inputs are combined in strips of rows (DRAGONS' stackFrames ``memory``), so the
    temporaries stay within about ``memory`` bytes whatever the number and size of the
    inputs; the inputs are only read (read-only memory maps are fine) and the result is
    the same, bit for bit, as combining the whole stack at once.

    Parameters
    ----------
    arrays : sequence of Array
        The same array of N frames (sci, var, dq all present), all of one shape.
    operation : {'mean', 'median'}
        Combination of the surviving values.
    reject : {'sigclip', 'minmax', 'none'}
        Rejection: median-centred iterative sigma clipping (``hsigma``/``lsigma``, until
        nothing changes), or dropping the ``nlow`` lowest and ``nhigh`` highest values.
    zero : sequence of float, optional
        Additive offsets subtracted from each input before combining.
    memory : float
        Budget in bytes for the temporaries of one strip (see :func:`strip_rows`).
    rows : int, optional
        Rows per strip, instead of those ``memory`` gives.

    Returns
    -------
    Array
        sci; var (mean: sum of var / N_used**2; median: mean var x f(N) / N with N the good
        inputs before min/max rejection, since the median of the middle values is the
        median of all, and f(N) the exact small-sample factor -> pi/2); dq (bits set only
        where every input was bad; then all inputs are used).  The header is the first's.
    """
    n = len(arrays)
    if not n:
        raise ValueError("stack_arrays: no arrays to combine")
    scis = [a.sci for a in arrays]
    varis = [a.need("var") for a in arrays]
    dqs = [a.need("dq") for a in arrays]
    shape = tuple(scis[0].shape)
    if any(tuple(p.shape) != shape for p in (*scis, *varis, *dqs)):
        raise ValueError("stack_arrays: the arrays do not all have the same shape")
    offsets = None if zero is None else np.asarray(zero, dtype=np.float32)[:, None, None]
    sorted_path = not (reject == "sigclip" and n > 2) and (
        reject == "minmax" or operation == "median")
    lo, hi = (nlow, nhigh) if reject == "minmax" else (0, 0)
    ny = shape[0] if shape else 1
    step = max(1, int(rows)) if rows else strip_rows(n, shape, memory)
    out_sci = np.empty(shape, np.float32)
    out_var = np.empty(shape, np.float32)
    out_dq = np.empty(shape, np.uint16)
    any_nan = False  # the sorted combination's variance depends on it, over the whole stack
    clean: list[slice] = []  # strips without NaN combined before the first NaN was seen
    for y0 in range(0, ny, step):
        sl = slice(y0, min(ny, y0 + step))
        sci = np.stack([s[sl] for s in scis]).astype(np.float32, copy=False)
        if offsets is not None:
            sci -= offsets
        var = np.stack([v[sl] for v in varis]).astype(np.float32, copy=False)
        dq = np.stack([q[sl] for q in dqs])
        bad = (dq & FAIL_BITS) != 0
        all_bad = bad.all(axis=0)
        bad &= ~all_bad  # where every input is bad, use them all and keep the flags
        data = sci
        if bad.any():
            data[bad] = np.nan
        del bad
        if reject == "sigclip" and n > 2:
            out, o_var, n_used = sigma_clipped_mean(data, var, sigma_lower=lsigma,
                                                    sigma_upper=hsigma)
        elif sorted_path:
            nan = np.isnan(data)
            strip_nan = bool(nan.any())
            if strip_nan and not any_nan:
                any_nan = True
                for done in clean:  # their variance as the whole stack gives it
                    vflat = np.stack([v[done] for v in varis]).astype(
                        np.float32, copy=False).reshape(n, -1)
                    out_var[done] = _sorted_variance(
                        vflat, None, np.full(vflat.shape[1], n, np.int64),
                        np.full(vflat.shape[1], n - _rejected(n, lo, hi), np.int64),
                        operation, True).reshape(out_var[done].shape)
                clean.clear()
            elif not strip_nan and not any_nan:
                clean.append(sl)
            out, o_var, n_used = _sorted_combine(data, var, nan, operation=operation,
                                                 nlow=lo, nhigh=hi, any_nan=any_nan)
        else:
            out, o_var, n_used = masked_mean(data, var, ~np.isnan(data))
        out_sci[sl], out_var[sl], out_dq[sl] = _finish(out, o_var, dq, all_bad, n_used == 0)
    return arrays[0].with_(sci=out_sci, var=out_var, dq=out_dq,
                           header=arrays[0].header.copy())


def _finish(out, out_var, dq, all_bad, empty):
    """The combined values, variance and DQ of one strip (as float32, float32, uint16)."""
    out_dq = np.asarray(np.bitwise_and.reduce(dq, axis=0))
    out_dq = np.where(all_bad, np.bitwise_or.reduce(dq, axis=0), out_dq).astype(np.uint16)
    if empty.any():
        out = np.where(empty, 0, out)
        out_dq[empty] |= DQ["no_data"]
    return np.asarray(out, dtype=np.float32), np.asarray(out_var, dtype=np.float32), out_dq


def _network_sort(rows):
    """Sort a small stack (n, npix) along axis 0 with vectorised compare-exchanges.

    Odd-even transposition sort: n passes of elementwise minimum/maximum over whole rows,
    much faster than a per-pixel sort for the handful of frames a sky or flat stack has.
    """
    rows = [r.copy() for r in rows]
    n = len(rows)
    for p in range(n):
        for i in range(p % 2, n - 1, 2):
            a, b = rows[i], rows[i + 1]
            rows[i], rows[i + 1] = np.minimum(a, b), np.maximum(a, b)
    return np.stack(rows)


def _window_combine(srt, n_good, nlow, nhigh, operation):
    """Combine sorted columns ``srt`` (n, k) whose first ``n_good`` values are valid."""
    n = srt.shape[0]
    lo = np.minimum(nlow, np.maximum(n_good - 1, 0))
    hi = np.minimum(nhigh, np.maximum(n_good - 1 - lo, 0))
    m = np.maximum(n_good - lo - hi, 0)
    cols = np.arange(srt.shape[1])
    if operation == "median":
        a = srt[np.minimum(lo + np.maximum(m - 1, 0) // 2, n - 1), cols]
        b = srt[np.minimum(lo + m // 2, n - 1), cols]
        return np.where(m % 2 == 1, a, 0.5 * (a + b)), m
    k = np.arange(n)[:, None]
    window = (k >= lo[None, :]) & (k < (lo + m)[None, :])
    return np.where(window, srt, 0).sum(axis=0) / np.maximum(m, 1), m


def _rejected(n: int, nlow: int, nhigh: int) -> int:
    """How many of ``n`` good values min/max rejection drops (at least one is kept)."""
    lo = min(nlow, n - 1)
    return lo + min(nhigh, max(n - 1 - lo, 0))


def sorted_combine(data: np.ndarray, var: np.ndarray, *, operation: str = "median",
                   nlow: int = 1, nhigh: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median or mean of the values left after dropping ``nlow``/``nhigh`` extremes.

    ``data`` and ``var`` are (N, ...) with NaN marking values not to be used.  Returns the
    float32 combination, its variance (median: mean variance x f(N) / N, see
    :data:`MEDIAN_VARIANCE_FACTOR`; mean: mean variance / N_used) and the number of values
    combined.

    A vectorised sorting network orders the stack (bad values, NaN, sort last); pixels
    with every input good take fixed rows of the sorted stack, the few others a window
    computed per pixel, so no masked-array machinery is needed.
    """
    nan = np.isnan(data)
    return _sorted_combine(data, var, nan, operation=operation, nlow=nlow, nhigh=nhigh,
                           any_nan=bool(nan.any()))


def _sorted_combine(data, var, nan, *, operation, nlow, nhigh, any_nan):
    """:func:`sorted_combine` of a strip whose NaN are ``nan``.

    ``any_nan`` (is there a NaN anywhere in the whole stack, not only this strip) chooses
    how the variance is computed, so that a stack combined strip by strip gives the same
    bits as the whole stack at once (see :func:`_sorted_variance`).
    """
    n = data.shape[0]
    shape = data.shape[1:]
    flat = data.reshape(n, -1)
    nan = nan.reshape(n, -1)
    partial = np.nonzero(nan.any(axis=0))[0]
    srt = _network_sort(np.where(nan, np.float32(np.inf), flat) if partial.size else flat)
    m_full = n - _rejected(n, nlow, nhigh)
    lo = min(nlow, n - 1)
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
    del srt
    out_var = _sorted_variance(var.reshape(n, -1), nan if partial.size else None, n_good, m,
                               operation, any_nan)
    return out.reshape(shape), out_var.reshape(shape), m.reshape(shape)


def _sorted_variance(vflat, nan, n_good, m, operation, any_nan):
    """Variance of a sorted combination of the columns of ``vflat`` (n, k).

    With a NaN anywhere in the stack (``any_nan``) the mean variance is the sum over the
    good values divided by their count in float64, else numpy's float32 mean: the two
    differ in the last bit, and the whole stack decides which applies.
    """
    if any_nan:
        summed = (np.where(nan, 0, vflat) if nan is not None else vflat).sum(axis=0)
        mean_var = summed / np.maximum(n_good, 1)
    else:
        mean_var = vflat.mean(axis=0)
    if operation == "median":
        table = MEDIAN_VARIANCE_FACTOR
        factor = table[np.minimum(n_good, len(table) - 1)]
        factor = np.where(n_good < len(table), factor, np.float32(np.pi / 2))
        return mean_var * factor / np.maximum(n_good, 1)
    return mean_var / np.maximum(m, 1)
