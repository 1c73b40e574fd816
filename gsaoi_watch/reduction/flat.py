"""Stacking and flat-field steps: makeLampFlat, normalizeFlat, thresholdFlatfield, flatCorrect."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import sigma_clip

from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.standardize import info, mark

__all__ = [
    'flat_correct', 'make_lamp_flat', 'normalize_flat', 'stack_arrays', 'threshold_flatfield',
]

#: n x variance of the median of n unit normal values (Monte Carlo, 4e5 draws each), n = 1..15;
#: the asymptotic value pi/2 is used beyond.  DRAGONS uses pi/2 / n_used, which overstates
#: the noise of a small median (more so after min/max rejection) by up to ~50 %.
MEDIAN_VARIANCE_FACTOR = np.array([1.0, 0.996, 0.997, 1.344, 1.198, 1.43, 1.288, 1.472, 1.347,
                                   1.494, 1.379, 1.517, 1.405, 1.522, 1.426, 1.526],
                                  dtype=np.float32)


def stack_arrays(arrays, *, operation="mean", reject="sigclip", hsigma=3.0, lsigma=3.0,
                 nlow=1, nhigh=1, zero=None) -> Array:
    """Combine one array from several frames, DQ-aware, as DRAGONS' stackFrames.

    Parameters
    ----------
    arrays : sequence of Array
        The same array of N frames (sci, var, dq all present).
    operation : {'mean', 'median'}
        Combination of the surviving values.
    reject : {'sigclip', 'minmax', 'none'}
        Rejection: median-centred iterative sigma clipping (``hsigma``/``lsigma``), or
        dropping the ``nlow`` lowest and ``nhigh`` highest values.
    zero : sequence of float, optional
        Additive offsets subtracted from each input before combining.

    Returns
    -------
    Array
        sci; var (mean: sum of var / N_used**2; median: mean var x f(N) / N with N the good
        inputs before min/max rejection, since the median of the middle values is the
        median of all, and f(N) the exact small-sample factor -> pi/2); dq (bits set only
        where every input was bad; then all inputs are used).  The header is the first's.
    """
    n = len(arrays)
    sci = np.stack([a.sci for a in arrays]).astype(np.float32, copy=False)
    if zero is not None:
        sci -= np.asarray(zero, dtype=np.float32)[:, None, None]
    var = np.stack([a.var for a in arrays]).astype(np.float32, copy=False)
    dq = np.stack([a.dq for a in arrays])
    bad = (dq & FAIL_BITS) != 0
    all_bad = bad.all(axis=0)
    bad &= ~all_bad  # where every input is bad, use them all and keep the flags
    data = sci
    if bad.any():
        data[bad] = np.nan
    if reject == "sigclip" and n > 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clipped = sigma_clip(data, sigma_lower=lsigma, sigma_upper=hsigma, maxiters=None,
                                 cenfunc="median", stdfunc="std", axis=0, masked=True)
        use = ~np.ma.getmaskarray(clipped)
    elif reject == "minmax" or operation == "median":
        return _sorted_combine(arrays, data, var, dq, all_bad, operation=operation,
                               nlow=nlow if reject == "minmax" else 0,
                               nhigh=nhigh if reject == "minmax" else 0)
    else:
        use = ~np.isnan(data)
    n_used = use.sum(axis=0)
    n_used_safe = np.maximum(n_used, 1).astype(np.float32)
    out = np.where(use, data, 0).sum(axis=0) / n_used_safe
    out_var = np.where(use, var, 0).sum(axis=0) / n_used_safe**2
    return _finish(arrays, out, out_var, dq, all_bad, n_used == 0)


def _finish(arrays, out, out_var, dq, all_bad, empty):
    out_dq = np.bitwise_and.reduce(dq, axis=0)
    out_dq = np.where(all_bad, np.bitwise_or.reduce(dq, axis=0), out_dq).astype(np.uint16)
    if empty.any():
        out = np.where(empty, 0, out)
        out_dq[empty] |= DQ["no_data"]
    return arrays[0].with_(sci=np.asarray(out, dtype=np.float32),
                           var=np.asarray(out_var, dtype=np.float32), dq=out_dq,
                           header=arrays[0].header.copy())


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


def _sorted_combine(arrays, data, var, dq, all_bad, *, operation, nlow, nhigh):
    """Median or mean of the values left after dropping ``nlow``/``nhigh`` extremes.

    A vectorised sorting network orders the stack (bad values, NaN, sort last); pixels
    with every input good take fixed rows of the sorted stack, the few others a window
    computed per pixel, so no masked-array machinery is needed.
    """
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
    return _finish(arrays, out.reshape(shape), out_var.reshape(shape), dq, all_bad,
                   (m == 0).reshape(shape))


def make_lamp_flat(frames, *, hsigma=3.0, lsigma=3.0) -> Frame:
    """Lamp-on stack minus lamp-off stack (3-sigma clipped means); all frames below 1.4 um.

    The result keeps the first lamp-on frame's headers and name, as DRAGONS does.
    """
    if not frames:
        raise ReductionError("makeLampFlat: no input frames")
    tags = [info(f).tags for f in frames]
    on = [f for f, t in zip(frames, tags) if "LAMPON" in t]
    off = [f for f, t in zip(frames, tags) if "LAMPOFF" in t]
    wave = info(frames[0]).effective_wavelength()
    if wave is None:
        raise ReductionError(f"{frames[0].orig_filename}: filter "
                             f"{info(frames[0]).filter_name(pretty=True)!r} has no known "
                             "effective wavelength")
    first = on[0] if on else frames[0]
    n_arr = len(first.arrays)

    def stack(group):
        return [stack_arrays([f.arrays[i] for f in group], hsigma=hsigma, lsigma=lsigma)
                for i in range(n_arr)]

    if wave < 1.4 or not off or not on:
        arrays = stack(frames if wave < 1.4 or not on else on)
        note = f"mean of {len(frames) if wave < 1.4 or not on else len(on)} frames"
    else:
        texp_on = {info(f).exposure_time() for f in on}
        texp_off = {info(f).exposure_time() for f in off}
        if texp_on != texp_off:
            first.meta.setdefault("warnings", []).append(
                f"lamp-on exposure times {sorted(texp_on)} differ from lamp-off "
                f"{sorted(texp_off)}")
        a_on, a_off = stack(on), stack(off)
        arrays = [a.with_(sci=a.sci - b.sci, var=a.var + b.var, dq=a.dq | b.dq)
                  for a, b in zip(a_on, a_off)]
        note = f"{len(on)} lamp-on minus {len(off)} lamp-off"
    out = first.with_(arrays=tuple(arrays))
    out.phu["NCOMBINE"] = (len(frames), "Number of frames combined")
    out.phu["FLATMETH"] = (note, "How the lamp flat was made")
    return mark(out, "LAMPFLAT", "_lampstack", "UT time stamp for makeLampFlat")


def normalize_flat(frame: Frame) -> Frame:
    """Divide every array by one median of the good (DQ == 0) pixels of all arrays."""
    good = np.concatenate([a.sci[a.dq == 0] for a in frame.arrays])
    if good.size == 0:
        raise ReductionError(f"{frame.orig_filename}: no good pixels to normalise the flat")
    norm = np.float32(np.median(good))
    if not norm > 0:
        raise ReductionError(f"{frame.orig_filename}: flat median {norm} is not positive")
    arrays = tuple(a.with_(sci=a.sci / norm, var=a.var / norm**2) for a in frame.arrays)
    out = frame.with_(arrays=arrays)
    out.phu["FLATNORM"] = (float(norm), "Median used to normalise the flat")
    return mark(out, "NORMLIZE", "_normalized", "UT time stamp for normalizeFlat")


def threshold_flatfield(frame: Frame, *, lower=0.01, upper=10.0) -> Frame:
    """Flag flat values outside [lower, upper] as unilluminated (64) and set them to 1."""
    arrays = []
    for a in frame.arrays:
        dq = a.dq.copy()
        outside = ((a.sci > upper) | (a.sci < lower)) & ((dq & DQ["bad_pixel"]) == 0)
        dq[outside] |= DQ["unilluminated"]
        sci = a.sci.copy()
        sci[((dq & DQ["unilluminated"]) != 0) | (sci < lower)] = 1.0
        arrays.append(a.with_(sci=sci, dq=dq))
    return mark(frame.with_(arrays=tuple(arrays)), "TRHFLAT", "_thresholdFlatfielded",
                "UT time stamp for thresholdFlatfield")


def _crop_to(flat_arr: Array, sci_arr: Array) -> Array:
    """Cut a full-frame flat array to a science array's section (DETSEC containment)."""
    if flat_arr.shape == sci_arr.shape:
        return flat_arr
    fsec = parse_section(flat_arr.header.get("CCDSEC"))
    ssec = parse_section(sci_arr.header.get("CCDSEC"))
    if fsec is None or ssec is None or not fsec.contains(ssec):
        raise ReductionError(f"flat section {flat_arr.header.get('CCDSEC')} does not contain "
                             f"the frame's {sci_arr.header.get('CCDSEC')}")
    y0, x0 = ssec.y1 - fsec.y1, ssec.x1 - fsec.x1
    sl = (slice(y0, y0 + ssec.shape[0]), slice(x0, x0 + ssec.shape[1]))
    return flat_arr.with_(sci=flat_arr.sci[sl], var=flat_arr.var[sl], dq=flat_arr.dq[sl])


def flat_correct(frame: Frame, flat: Frame, *, flat_name=None) -> Frame:
    """Divide by a processed flat, cropping a full-frame flat to an ROI frame.

    The flat must have the same raw filter name (FILTER1&FILTER2) as the frame.  Variances
    propagate as for uncorrelated quotients; DQ planes are OR-ed.
    """
    fi, ff = info(frame), info(flat)
    name = frame.orig_filename or frame.filename
    if fi.filter_name() != ff.filter_name():
        raise ReductionError(f"{name}: flat filter {ff.filter_name()!r} does not match the "
                             f"frame's {fi.filter_name()!r}")
    by_id = {a.header.get("ARRAYID"): a for a in flat.arrays}
    arrays = []
    for a in frame.arrays:
        f = by_id.get(a.header.get("ARRAYID"))
        if f is None:
            raise ReductionError(f"{name}: flat has no array {a.header.get('ARRAYID')}")
        f = _crop_to(f, a)
        sci = a.sci / f.sci
        var = (a.var / f.sci**2 + a.sci**2 * f.var / f.sci**4) if a.var is not None else None
        dq = (a.dq | f.dq) if a.dq is not None else f.dq.copy()
        arrays.append(a.with_(sci=sci.astype(np.float32),
                              var=None if var is None else var.astype(np.float32), dq=dq))
    out = frame.with_(arrays=tuple(arrays))
    out.phu["FLATIM"] = (flat_name or flat.filename, "Flat field image used")
    return mark(out, "FLATCORR", "_flatCorrected", "UT time stamp for flatCorrect")

