"""detectSources: photutils segmentation, object mask and source catalogue per array.

The science path runs a detection on every array of every frame (64 per 16-frame sequence,
about a third of its time), so the steps of :func:`detect_array` that the libraries do
slowly at 2048 x 2048 are done here with whole-array numpy operations that compute the
same numbers (each is checked against the library in tests/test_detect.py):
:func:`block_background` for photutils' ``Background2D``, :func:`smooth_gaussian` for
``scipy.ndimage.gaussian_filter``, :func:`clipped_stats` for astropy's
``sigma_clipped_stats`` and :func:`find_segments` for photutils' ``detect_sources``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
from photutils.utils import ShepardIDWInterpolator
from scipy import ndimage

from gsaoi_watch.data.objcat import DETECT_COLUMNS
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array

__all__ = ["CATALOG_COLUMNS", "FLAG_BAD_PIXELS", "FLAG_SATURATED", "FLAG_TRUNCATED",
           "block_background", "clipped_median", "clipped_stats", "detect_array", "empty_catalog",
           "find_segments", "smooth_gaussian", "source_table"]

#: The OBJCAT columns detectSources measures, DRAGONS' names in DRAGONS' order.
CATALOG_COLUMNS = DETECT_COLUMNS


def _at_least(value: float) -> np.float32:
    """The smallest float32 >= ``value``: ``x >= value`` <=> ``x >= _at_least(value)``."""
    t = np.float32(value)
    return np.nextafter(t, np.float32(np.inf)) if float(t) < value else t


def _at_most(value: float) -> np.float32:
    """The largest float32 <= ``value``: ``x <= value`` <=> ``x <= _at_most(value)``."""
    t = np.float32(value)
    return np.nextafter(t, np.float32(-np.inf)) if float(t) > value else t


def _sum_squares(x: np.ndarray) -> float:
    """Sum of squares without BLAS (OpenBLAS threads a 65,536-value dot: 4 ms of CPU)."""
    return float(np.einsum("i,i->", x, x))


def _clip_sorted(v: np.ndarray, sigma: float, maxiters: int, *,
                 typed_bounds: bool, regrow: bool) -> tuple[int, int]:
    """Median-centred iterative sigma clipping of sorted finite values ``v``.

    Every set the iterations keep is a range of values, hence a slice ``v[i0:i1]`` of the
    sorted values: its median is read off, its standard deviation comes from sums updated
    by the values clipped, and the next range from two binary searches, so an iteration
    costs a binary search and the clipped tails instead of a pass over the data.

    ``typed_bounds`` and ``regrow`` select the semantics of the two astropy paths:
    ``sigma_clip(axis=None)`` (the centre, std and bounds in the data's type, float32 for
    float32 data; clipped values stay out; ``typed_bounds=True, regrow=False``) or the C
    path along an axis that Background2D uses (float64 bounds, and the last bounds applied
    to all the values; ``typed_bounds=False, regrow=True``).  Both stop when an iteration
    clips nothing, or clips everything (C path), or after ``maxiters`` iterations.

    Returns
    -------
    i0, i1 : int
        The kept values are ``v[i0:i1]``.  With ``typed_bounds=False`` ``v`` must be
        float32 (its float64 bounds are turned into float32 thresholds).
    """
    n = v.size
    if n == 0:
        return 0, 0
    ftype = v.dtype.type
    # sums of (v - centre) over the kept range, in float64, updated by the clipped tails;
    # relative to a central value, so a large background cancels nothing
    d = v.astype(np.float64)
    d -= float(v[n // 2])
    s1, s2 = float(d.sum()), _sum_squares(d)
    i0, i1 = 0, n
    lo_t = hi_t = v[0]
    for _ in range(maxiters):
        count = i1 - i0
        half = i0 + count // 2
        mean = s1 / count
        var = max(s2 / count - mean * mean, 0.0)
        if typed_bounds:  # numpy's median and std in the data's type (sigma_clip)
            med = v[half] if count % 2 else (v[half - 1] + v[half]) / ftype(2)
            std = ftype(math.sqrt(var))
            lo_t, hi_t = med - std * ftype(sigma), med + std * ftype(sigma)
        else:  # float64 median and std, as astropy's C sigma clipping
            med64 = float(v[half]) if count % 2 else 0.5 * (float(v[half - 1]) + float(v[half]))
            std64 = math.sqrt(var)
            lo_t, hi_t = _at_least(med64 - sigma * std64), _at_most(med64 + sigma * std64)
        j0 = max(i0, int(np.searchsorted(v, lo_t, "left")))
        j1 = max(min(i1, int(np.searchsorted(v, hi_t, "right"))), j0)
        if j1 - j0 == count or (j1 == j0 and not typed_bounds):
            break
        low, high = d[i0:j0], d[j1:i1]
        s1 -= float(low.sum()) + float(high.sum())
        s2 -= _sum_squares(low) + _sum_squares(high)
        i0, i1 = j0, j1
        if i1 == i0:
            break
    if regrow:
        return int(np.searchsorted(v, lo_t, "left")), int(np.searchsorted(v, hi_t, "right"))
    return i0, i1


def _median32(v: np.ndarray) -> np.floating:
    """The median of sorted values as numpy takes it (the middle two averaged in their type)."""
    n = v.size
    if n % 2:
        return v[n // 2]
    return (v[n // 2 - 1] + v[n // 2]) / v.dtype.type(2)


def _clipped(values: np.ndarray, sigma: float,
             maxiters: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(finite values, sorted, i0, i1) of :func:`clipped_stats`: kept = ``sorted[i0:i1]``."""
    flat = np.asarray(values).ravel()
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    finite = np.isfinite(flat)
    if not finite.all():
        flat = flat[finite]
    v = np.sort(flat)
    i0, i1 = _clip_sorted(v, sigma, maxiters, typed_bounds=True, regrow=False)
    return flat, v, i0, i1


def clipped_stats(values: np.ndarray, *, sigma: float = 3.0,
                  maxiters: int = 5) -> tuple[float, float, float]:
    """Mean, median and std of ``values`` after 3-sigma clipping around the median.

    The numbers of ``astropy.stats.sigma_clipped_stats(values, sigma=sigma,
    maxiters=maxiters)`` (non-finite values ignored; float32 or float64 data): the same
    clipped set, found on the sorted values (:func:`_clip_sorted`), then its mean, median
    and std computed by numpy on the kept values in their original order, exactly as
    astropy computes them.  Measured on the 585,000 smoothed pixels detect_array takes its
    noise from: 0.028 s for sigma_clipped_stats (a pass over the data, a median and a std
    in every iteration), 0.012 s here.

    Returns
    -------
    mean, median, std : float
        NaN if no value is finite.
    """
    flat, v, i0, i1 = _clipped(values, sigma, maxiters)
    if i1 <= i0:
        return float("nan"), float("nan"), float("nan")
    if i0 == 0 and i1 == v.size:
        kept = flat
    else:
        kept = flat[(flat >= v[i0]) & (flat <= v[i1 - 1])]
    return float(np.mean(kept)), float(_median32(v[i0:i1])), float(np.std(kept))


def clipped_median(values: np.ndarray, *, sigma: float = 3.0, maxiters: int = 10) -> float:
    """The median of :func:`clipped_stats` alone (NaN if no value is finite)."""
    _, v, i0, i1 = _clipped(values, sigma, maxiters)
    return float(_median32(v[i0:i1])) if i1 > i0 else float("nan")


def block_background(data: np.ndarray, bad: np.ndarray, box: int, *, filter_size: int = 5,
                     sigma: float = 3.0, maxiters: int = 10,
                     exclude_percentile: float = 10.0) -> np.ndarray | None:
    """The ``Background2D(...).background`` of photutils, for arrays tiled by ``box``.

    The computation of ``Background2D(data, box, mask=bad, filter_size=filter_size,
    bkg_estimator=MedianBackground(), interpolator=BkgZoomInterpolator(order=1))``
    (photutils 3.0, default SigmaClip(sigma=3, maxiters=10), exclude_percentile 10): in
    each box, iterative median-centred sigma clipping with float64 bounds, the last bounds
    applied to all the box's pixels (astropy's C path); the box's value is the median of
    the pixels kept, or none if no more than 90 % of its pixels are kept; boxes without a
    value are filled by inverse-distance weighting (photutils' ShepardIDWInterpolator, 10
    neighbours), the mesh is median-filtered ``filter_size`` x ``filter_size`` (NaN beyond
    the edges), and expanded by bilinear interpolation between box centres (scipy's
    ``zoom(order=1, mode='reflect', grid_mode=True)``), clipped to the mesh's range.

    Here the boxes are sorted once (numpy's sort releases the GIL, astropy's clipping does
    not) and clipped on their sorted values (:func:`_clip_sorted`), and the bilinear
    expansion is done band by band (:func:`_bilinear`) instead of by a spline zoom.
    Measured on a sky-subtracted 2048 x 2048 array (box 256), one thread: 0.29 s for Background2D
    (0.13 s clipping, 0.06 s medians, 0.09 s zoom), 0.12 s here; it agrees with it to
    float32 rounding (tests/test_detect.py: 1e-6 relative).

    Parameters
    ----------
    data : ndarray
        The image (float32).
    bad : ndarray of bool
        Pixels not to use (non-finite pixels are never used either).
    box : int
        Box size in pixels.

    Returns
    -------
    ndarray or None
        The float32 background, or None if ``box`` does not tile the array (the caller
        then uses Background2D, which handles the partial boxes at the edges).

    Raises
    ------
    ValueError
        If no box has enough usable pixels (as Background2D).
    """
    ny, nx = data.shape
    if ny % box or nx % box or ny < box or nx < box:
        return None
    nby, nbx = ny // box, nx // box
    def as_blocks(a: np.ndarray) -> np.ndarray:  # (boxes, pixels of a box): one copy
        return a.reshape(nby, box, nbx, box).transpose(0, 2, 1, 3).reshape(nby * nbx, -1)

    blocks = as_blocks(data.astype(np.float32, copy=False))
    if np.may_share_memory(blocks, data):  # one box across: the reshape made no copy
        blocks = blocks.copy()
    blocks[as_blocks(bad)] = np.nan
    blocks.sort(axis=1)  # NaN last
    n_finite = box * box - np.count_nonzero(np.isnan(blocks), axis=1)
    threshold = (1 - exclude_percentile / 100.0) * box * box
    mesh = np.full(nby * nbx, np.nan, np.float32)
    for k in range(nby * nbx):
        v = blocks[k, :n_finite[k]]
        if v.size and (v[0] == -np.inf or v[-1] == np.inf):  # unmasked infinities: ignored
            v = v[np.isfinite(v)]
        i0, i1 = _clip_sorted(v, sigma, maxiters, typed_bounds=False, regrow=True)
        if i1 - i0 > threshold:
            mesh[k] = _median32(v[i0:i1])
    mesh = mesh.reshape(nby, nbx)
    if np.isnan(mesh).all():
        raise ValueError("no box has enough unmasked pixels for a background")
    if np.isnan(mesh).any():  # Background2D._interpolate_grid
        good = ~np.isnan(mesh)
        idw = ShepardIDWInterpolator(np.column_stack(np.nonzero(good)), mesh[good])
        mesh = mesh.copy()
        mesh[~good] = idw(np.column_stack(np.nonzero(~good)), n_neighbors=10, power=1.0,
                          eps=0.0, regularization=0.0)
    if filter_size > 1:
        mesh = ndimage.generic_filter(mesh, np.nanmedian, size=filter_size, mode="constant",
                                      cval=np.nan)
    lo, hi = float(mesh.min()), float(mesh.max())
    if lo == hi:
        return np.full(data.shape, mesh.flat[0], dtype=np.float32)
    out = _bilinear(mesh.astype(np.float64), box, ny, nx)
    return np.clip(out, np.float32(lo), np.float32(hi), out=out)


def _bilinear(mesh: np.ndarray, box: int, ny: int, nx: int) -> np.ndarray:
    """Linear interpolation of the mesh between box centres, edges held.

    scipy's ``zoom(order=1, mode='reflect', grid_mode=True)`` of the mesh, in float64,
    rounded to float32.  Columns between two box centres share their two mesh columns, so
    each such band is two outer products (no BLAS: OpenBLAS threads the equivalent
    (2048 x 8) @ (8 x 2048) product and burns more CPU than the zoom).  Measured at
    2048 x 2048: 0.09 s for the zoom, 0.02 s here.
    """
    nby, nbx = mesh.shape

    def axis(n: int, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = (np.arange(n) + 0.5) / box - 0.5
        j0 = np.floor(u).astype(int)
        f = u - j0
        return np.clip(j0, 0, nb - 1), np.clip(j0 + 1, 0, nb - 1), f

    y0, y1, fy = axis(ny, nby)
    rows = mesh[y0] * (1.0 - fy)[:, None] + mesh[y1] * fy[:, None]  # (ny, nbx)
    x0, x1, fx = axis(nx, nbx)
    out = np.empty((ny, nx), np.float32)
    starts = np.flatnonzero(np.diff(x0 * nbx + x1, prepend=-1))
    for a, b in zip(starts, list(starts[1:]) + [nx]):
        j0, j1 = x0[a], x1[a]
        if j0 == j1:  # beyond the first or last box centre: held
            out[:, a:b] = rows[:, j0:j0 + 1]
            continue
        band = np.multiply.outer(rows[:, j0], 1.0 - fx[a:b])
        band += np.multiply.outer(rows[:, j1], fx[a:b])
        out[:, a:b] = band
    return out


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel (radius int(truncate * sigma + 0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def _correlate_rows(src: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = sum_k w[k] (src[r + i - k] + src[r + i + k])``: float64, scipy's order."""
    r = len(w) // 2
    n = out.shape[0]
    acc = src[r:r + n] * w[r]
    for k in range(r, 0, -1):  # outermost taps first, as ndimage's symmetric loop
        acc += (src[r - k:r - k + n] + src[r + k:r + k + n]) * w[r + k]
    out[...] = acc


def smooth_gaussian(data: np.ndarray, sigma: float, *, strip: int = 32) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(data, sigma)`` for a 2-D float32 image.

    The same separable correlation (scipy's kernel, truncated at 4 sigma, 'reflect'
    edges, the rows pass then the columns pass, each accumulated in float64 in scipy's
    order of taps and rounded to float32), done ``strip`` rows at a time with whole-row
    numpy operations that stay in the cache.  ndimage filters along axis 0 one strided
    column at a time: measured on 2048 x 2048 float32 (sigma 1.27), 0.077 s for
    gaussian_filter (0.060 s of it the axis-0 pass), 0.035 s here; the result is the same
    to the last bit or so (tests/test_detect.py: 1e-6 relative).
    """
    w = _gaussian_weights(sigma)
    r = len(w) // 2
    ny, nx = data.shape
    if data.dtype != np.float32 or ny <= 2 * r or nx <= 2 * r:
        return ndimage.gaussian_filter(data, sigma)
    out = np.empty_like(data)
    rows = np.empty((strip, nx), np.float32)
    padded = np.empty((strip, nx + 2 * r))
    for y0 in range(0, ny, strip):
        y1 = min(ny, y0 + strip)
        n = y1 - y0
        if y0 >= r and y1 + r <= ny:
            src = data[y0 - r:y1 + r].astype(np.float64)
        else:  # reflect at the top and bottom edges: d c b a | a b c d
            idx = np.arange(y0 - r, y1 + r)
            idx = np.where(idx < 0, -idx - 1, np.where(idx >= ny, 2 * ny - idx - 1, idx))
            src = data[idx].astype(np.float64)
        _correlate_rows(src, w, rows[:n])  # axis 0, rounded to float32 as scipy's output
        pad = padded[:n]
        pad[:, r:r + nx] = rows[:n]
        pad[:, :r] = rows[:n, r - 1::-1]
        pad[:, r + nx:] = rows[:n, nx - 1:nx - r - 1:-1]
        _correlate_rows(pad.T, w, out[y0:y1].T)  # axis 1 on the strip
    return out


def find_segments(data: np.ndarray, threshold: float, npixels: int,
                  mask: np.ndarray | None = None) -> np.ndarray | None:
    """The label image of photutils' ``detect_sources(data, threshold, npixels, mask=mask)``.

    Pixels above ``threshold`` (and not masked), 8-connected, groups of fewer than
    ``npixels`` dropped, the rest labelled 1, 2, ... in raster order.  photutils drops the
    small groups one cutout at a time, a Python loop over the thousands of noise groups a
    1.5-sigma threshold gives; one bincount over the labelled pixels does it here (measured
    on a 2048 x 2048 sky-subtracted array: 0.038 s against 0.025 s, 0.014 s of it the
    labelling).

    Returns
    -------
    ndarray of int32 or None
        The label image, or None if nothing is detected.
    """
    above = data > threshold
    if mask is not None:
        above &= ~mask
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    flat = labels.ravel()
    where = np.flatnonzero(flat)  # the labelled pixels only: a few percent of the array
    ids = flat[where]
    keep = np.bincount(ids, minlength=n + 1) >= npixels
    keep[0] = False
    n_keep = int(keep.sum())
    if n_keep == 0:
        return None
    if n_keep < n:
        mapping = np.zeros(n + 1, labels.dtype)
        mapping[keep] = np.arange(1, n_keep + 1, dtype=labels.dtype)
        flat[where] = mapping[ids]
    return labels


#: SExtractor's extraction flags that detectSources sets (SExtractor's manual, "FLAGS").
FLAG_BAD_PIXELS = 1  # bad pixels are more than 10 % of the object's area
FLAG_SATURATED = 4  # at least one pixel of the object is saturated
FLAG_TRUNCATED = 8  # the object touches the array's edge


def _dq_flags(labels: np.ndarray, dq: np.ndarray, where: np.ndarray, ids: np.ndarray,
              n: int, masked: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IMAFLAGS_ISO, NIMAFLAGS_ISO, bad-pixel count) per label: DQ over each segment.

    The segment's pixels, and the masked pixels next to it (detection masks bad and
    saturated pixels, so a saturated core is a hole in its segment; its rim is counted):
    the OR of their DQ bits, the number of them with any bit set, and the number with a
    bit other than saturated or non-linear set.  ``masked``: the pixels detection masked
    (boolean image; from ``dq`` if not given).
    """
    ny, nx = labels.shape
    flat = labels.ravel()
    dq_flat = dq.ravel()
    if masked is None:
        masked = (dq & (FAIL_BITS | DQ["unilluminated"])) != 0
    # masked pixels (a per cent or so of an array) next to a segment: their 8 neighbours
    cand = np.flatnonzero(masked.ravel())
    cand = cand[flat[cand] == 0]
    rim_label = np.zeros(cand.size, flat.dtype)
    if cand.size:
        cy, cx = np.divmod(cand, nx)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                if oy == 0 and ox == 0:
                    continue
                ok = (cy + oy >= 0) & (cy + oy < ny) & (cx + ox >= 0) & (cx + ox < nx)
                lab = np.zeros(cand.size, flat.dtype)
                lab[ok] = flat[cand[ok] + (oy * nx + ox)]
                np.maximum(rim_label, lab, out=rim_label)
    rim = cand[rim_label > 0]
    rim_id = rim_label[rim_label > 0]
    all_ids = np.concatenate([ids, rim_id])
    values = np.concatenate([dq_flat[where], dq_flat[rim]]).astype(np.int64)
    imaflags = np.zeros(n, np.int64)
    seen = int(np.bitwise_or.reduce(values)) if values.size else 0
    for bit in (b for b in range(16) if seen >> b & 1):
        has = (values >> bit) & 1
        imaflags |= (np.bincount(all_ids, has, minlength=n) > 0).astype(np.int64) << bit
    nflag = np.bincount(all_ids, values != 0, minlength=n)
    nbad = np.bincount(all_ids, (values & ~(DQ["saturated"] | DQ["non_linear"])) != 0,
                       minlength=n)
    return imaflags, nflag, nbad


def _flux_radius(ids: np.ndarray, r2: np.ndarray, d: np.ndarray, flux: np.ndarray,
                 n: int) -> np.ndarray:
    """Radius from the centroid holding half of each segment's flux (pixels; NaN if <= 0).

    The segment's pixels sorted by distance (one sort over all segments: label, then
    distance), their flux summed outwards, the distance of the first pixel at which the
    sum reaches half the segment's flux.
    """
    out = np.full(n, np.nan)
    if ids.size == 0:
        return out
    key = ids.astype(np.float64) * (float(r2.max()) + 1.0) + r2
    order = np.argsort(key, kind="stable")
    sid, sr2 = ids[order], r2[order]
    cum = np.cumsum(d[order])
    counts = np.bincount(sid, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    before = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    cum -= before[sid]
    reached = np.flatnonzero(cum >= 0.5 * flux[sid])
    if reached.size:
        label, at = np.unique(sid[reached], return_index=True)
        out[label] = np.sqrt(sr2[reached[at]])
    out[~(flux > 0)] = np.nan
    return out


def _class_star(fwhm: np.ndarray, ellipticity: np.ndarray, snr: np.ndarray,
                clean: np.ndarray) -> np.ndarray:
    """A stellarity index in [0, 1] from the FWHM of the array's point sources.

    Not SExtractor's neural network: a star is as wide as the array's point sources and
    round.  The point-source width is the most common FWHM among the clean sources
    (``clean``: no flag, no flagged pixel) with S/N >= 20: the median of those within 20 %
    of the width most of them share (the narrower on a tie; galaxies, knots and blends are
    wider than the stars, and fewer alike).  The score ``exp(-((FWHM/FWHM_star - 1) /
    0.25)**2 / 2) * exp(-(ellipticity / 0.3)**2 / 2)`` (0.25: the half-maximum FWHM of a
    few-pixel core is a count of pixels, it scatters by ~10 %) is pulled towards 0.5
    (undecided) at low S/N, by ``w = clip((S/N - 5) / 15, 0, 1)``: ``CLASS_STAR = 0.5 +
    w (score - 0.5)``.  Stars come out above 0.8, galaxies, blends and cosmic rays near
    0, sources too faint to tell near 0.5 (as SExtractor's).
    """
    good = np.isfinite(fwhm) & (fwhm > 0)
    cand = fwhm[good & clean & (snr >= 20.0)]
    if cand.size == 0:
        cand = fwhm[good & (snr >= 10.0)]
    if cand.size == 0:
        return np.full(fwhm.shape, 0.5)
    cand = np.sort(cand)
    counts = (np.searchsorted(cand, 1.2 * cand, "left")
              - np.searchsorted(cand, 0.8 * cand, "right"))  # within 20 % of each width
    mode = cand[int(np.argmax(counts))]  # the first maximum: the narrower on a tie
    star = float(np.median(cand[np.abs(cand / mode - 1.0) < 0.2]))
    with np.errstate(invalid="ignore"):
        score = np.exp(-0.5 * ((fwhm / star - 1.0) / 0.25) ** 2)
        score *= np.exp(-0.5 * (np.nan_to_num(ellipticity, nan=1.0) / 0.3) ** 2)
    score = np.where(good, score, 0.0)
    weight = np.clip((np.nan_to_num(snr, nan=0.0, posinf=1e9) - 5.0) / 15.0, 0.0, 1.0)
    return 0.5 + weight * (score - 0.5)


def source_table(data: np.ndarray, smooth: np.ndarray, labels: np.ndarray,
                 error: np.ndarray | None = None, *, background: np.ndarray | None = None,
                 dq: np.ndarray | None = None, masked: np.ndarray | None = None) -> Table:
    """Measure every segment of a label image at once (vectorised over all sources).

    The columns of DRAGONS' OBJCAT that detectSources measures (:data:`CATALOG_COLUMNS`,
    in OBJCAT order; gsaoi_watch.data.objcat adds the world columns when the catalogue is
    written).  Centroid (X_IMAGE, Y_IMAGE, 1-based), second moments (A_IMAGE, B_IMAGE,
    THETA_IMAGE, ELLIPTICITY = 1 - B/A) as photutils' ``SourceCatalog`` given
    ``convolved_data=smooth`` computes them (moments of the smoothed data in the segment,
    thin sources regularised in steps of 1/12); flux (FLUX_AUTO: the segment's flux, the
    isophotal flux, not a Kron aperture), its error, the peak (FLUX_MAX) and area
    (ISOAREA_IMAGE) from the unsmoothed data.  FWHM_IMAGE comes from the area above half
    the peak, 2 sqrt(A / pi) (as DRAGONS' PROFILE_FWHM), which, unlike moment widths, the
    extended wings of AO PSFs do not inflate.  FLUX_RADIUS is the radius holding half of
    FLUX_AUTO; MAG_AUTO = -2.5 log10(FLUX_AUTO) (zero point 0, as DRAGONS runs
    SExtractor; 99 for a flux <= 0, as SExtractor); CLASS_STAR see :func:`_class_star`;
    FLAGS, IMAFLAGS_ISO and NIMAFLAGS_ISO see :func:`_dq_flags` and the ``FLAG_*``
    constants; BACKGROUND the background taken off at the centroid.  ``SourceCatalog``
    measures sources one cutout at a time; on a sky-limited 2048 x 2048 array with
    thousands of faint segments this does the same in a few whole-array passes.

    Parameters
    ----------
    data, smooth : ndarray
        Background-subtracted data and its smoothed version (masked pixels set to 0).
    labels : ndarray of int
        Segment labels (0 = no source).
    error : ndarray, optional
        1-sigma uncertainty per pixel (FLUXERR_AUTO NaN without it).
    background : ndarray, optional
        The background subtracted (BACKGROUND; 0 without it).
    dq : ndarray of uint16, optional
        The array's DQ (FLAGS from the edges only, IMAFLAGS_ISO 0, without it).
    masked : ndarray of bool, optional
        The pixels detection masked (computed from ``dq`` if not given).

    Returns
    -------
    astropy.table.Table
        One row per label present, in label order (see :data:`CATALOG_COLUMNS`).
    """
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids = flat[where]
    present = np.unique(ids)
    n = int(present[-1]) + 1 if present.size else 1
    ny, nx = labels.shape
    yy, xx = np.divmod(where, nx)
    d = data.ravel()[where].astype(np.float64)
    c = smooth.ravel()[where].astype(np.float64)

    def per_source(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(ids, weights, minlength=n)

    with np.errstate(invalid="ignore", divide="ignore"):
        m0 = per_source(c)
        xc = per_source(c * xx) / m0
        yc = per_source(c * yy) / m0
        dx, dy = xx - xc[ids], yy - yc[ids]
        cxx = per_source(c * dx * dx) / m0
        cyy = per_source(c * dy * dy) / m0
        cxy = per_source(c * dx * dy) / m0
        det = cxx * cyy - cxy**2
        bad = det < 0  # not positive semidefinite
        thin = det < (1.0 / 12.0) ** 2  # "infinitely" thin: SourceExtractor's 1/12 steps
        while thin.any():
            cxx[thin] += 1.0 / 12.0
            cyy[thin] += 1.0 / 12.0
            det = cxx * cyy - cxy**2
            thin = ~bad & (det < (1.0 / 12.0) ** 2)
        half_tr = 0.5 * (cxx + cyy)
        root = np.sqrt(np.maximum(half_tr**2 - det, 0.0))
        minor2 = half_tr - root
        a_axis = np.sqrt(half_tr + root)
        b_axis = np.sqrt(np.maximum(minor2, 0.0))
        ellipticity = 1.0 - np.sqrt(minor2) / a_axis
        ellipticity[bad | (minor2 < 0)] = np.nan
        b_axis[bad | (minor2 < 0)] = np.nan
        theta = np.degrees(0.5 * np.arctan2(2.0 * cxy, cxx - cyy))
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, ids, d)
        above = d >= 0.5 * peak[ids]
        fwhm = np.where(peak > 0, 2.0 * np.sqrt(per_source(above.astype(np.float64)) / np.pi),
                        np.nan)
        flux_err = (np.sqrt(per_source(error.ravel()[where].astype(np.float64) ** 2))
                    if error is not None else np.full(n, np.nan))
        flux = per_source(d)
        snr = flux / flux_err
        positive = flux > 0
        mag = np.where(positive, -2.5 * np.log10(np.where(positive, flux, 1.0)), 99.0)
        magerr = np.where(positive & np.isfinite(flux_err),
                          2.5 / np.log(10.0) * flux_err / np.where(positive, flux, 1.0), 99.0)
    area = np.bincount(ids, minlength=n)
    radius = _flux_radius(ids, dx * dx + dy * dy, d, flux, n)
    edge = per_source(((xx == 0) | (yy == 0) | (xx == nx - 1) | (yy == ny - 1))
                      .astype(np.float64)) > 0
    if dq is not None:
        imaflags, nflag, nbad = _dq_flags(labels, dq, where, ids, n, masked)
    else:
        imaflags = nflag = nbad = np.zeros(n, np.int64)
    flags = (np.where(edge, FLAG_TRUNCATED, 0) | np.where(imaflags & DQ["saturated"],
                                                           FLAG_SATURATED, 0)
             | np.where(nbad > 0.1 * area, FLAG_BAD_PIXELS, 0))
    if background is not None:
        bx = np.clip(np.rint(np.nan_to_num(xc)).astype(int), 0, nx - 1)
        by = np.clip(np.rint(np.nan_to_num(yc)).astype(int), 0, ny - 1)
        bkg = np.asarray(background)[by, bx].astype(np.float64)
    else:
        bkg = np.zeros(n)
    p = present
    cols = {"NUMBER": p, "X_IMAGE": xc[p] + 1.0, "Y_IMAGE": yc[p] + 1.0,
            "A_IMAGE": a_axis[p], "B_IMAGE": b_axis[p], "THETA_IMAGE": theta[p],
            "FWHM_IMAGE": fwhm[p], "FLUX_RADIUS": radius[p], "ELLIPTICITY": ellipticity[p],
            "FLUX_AUTO": flux[p], "FLUXERR_AUTO": flux_err[p], "MAG_AUTO": mag[p],
            "MAGERR_AUTO": magerr[p], "FLUX_MAX": peak[p],
            "CLASS_STAR": _class_star(fwhm[p], ellipticity[p], snr[p],
                                      (flags[p] == 0) & (nflag[p] == 0)),
            "ISOAREA_IMAGE": area[p], "FLAGS": flags[p].astype(np.int16),
            "IMAFLAGS_ISO": imaflags[p].astype(np.int32),
            "NIMAFLAGS_ISO": nflag[p].astype(np.int32), "BACKGROUND": bkg[p]}
    return Table({k: cols[k] for k in CATALOG_COLUMNS})


def empty_catalog() -> Table:
    """A catalogue without sources, with the columns and types of :func:`source_table`."""
    ints = {"NUMBER": np.int64, "ISOAREA_IMAGE": np.int64, "FLAGS": np.int16,
            "IMAFLAGS_ISO": np.int32, "NIMAFLAGS_ISO": np.int32}
    return Table(names=CATALOG_COLUMNS,
                 dtype=[ints.get(k, np.float64) for k in CATALOG_COLUMNS])


def detect_array(arr: Array, *, detect_thresh: float = 1.5, detect_minarea: int = 20,
                 back_size: int = 256, back_filtersize: int = 5, smooth_fwhm: float = 3.0,
                 catalog: bool = True) -> tuple[Array, Table | None]:
    """Find sources in one sky-subtracted array.

    The background is a photutils ``Background2D`` mesh (``back_size`` px boxes, at most a
    quarter of the array; computed by :func:`block_background` when the boxes tile the
    array); the background-subtracted data are smoothed with a Gaussian of ``smooth_fwhm``
    px (:func:`smooth_gaussian`) and thresholded at ``detect_thresh`` times the smoothed
    noise (:func:`clipped_stats`), keeping groups of at least ``detect_minarea``
    8-connected pixels (:func:`find_segments`).  Bad and unilluminated pixels
    are masked.  With ``catalog=False`` only the object mask is made (the sky frames' first
    pass needs no catalogue, and measuring thousands of faint sources is most of the cost).

    Returns
    -------
    Array
        ``arr`` with ``objmask`` set (1 on source pixels).
    astropy.table.Table or None
        None with ``catalog=False``; otherwise one row per source, DRAGONS' OBJCAT
        columns (:data:`CATALOG_COLUMNS`, see :func:`source_table`): 1-based X_IMAGE,
        Y_IMAGE, FLUX_AUTO and FLUXERR_AUTO (the array's units), FWHM_IMAGE (pixels, from
        the area above half maximum), ELLIPTICITY, FLUX_MAX, ISOAREA_IMAGE, FLAGS...
    """
    sci = arr.sci.astype(np.float32, copy=False)
    mask = ((arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0) if arr.dq is not None else \
        np.zeros(sci.shape, bool)
    ny, nx = sci.shape
    box = int(max(16, min(back_size, ny // 4, nx // 4)))
    # non-finite pixels masked here, not left to photutils (which warns that it clips them):
    # this runs in threads, and warnings.catch_warnings is not thread-safe, so another
    # thread leaving its block can restore an "error" filter while this one is inside
    bkg_mask = mask | ~np.isfinite(sci)
    try:
        background = block_background(sci, bkg_mask, box, filter_size=back_filtersize)
        if background is None:  # partial boxes at the edges: photutils itself
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                background = Background2D(sci, box, mask=bkg_mask, filter_size=back_filtersize,
                                          bkg_estimator=MedianBackground(),
                                          interpolator=BkgZoomInterpolator(order=1)).background
    except ValueError:  # too few unmasked pixels per box (tiny or heavily masked array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, median, _ = sigma_clipped_stats(sci[~mask], sigma=3.0, maxiters=5)
        background = np.full(sci.shape, median if np.isfinite(median) else 0.0)
    data = sci - np.asarray(background, dtype=np.float32)
    data[mask] = 0.0
    smooth = smooth_gaussian(data, smooth_fwhm / 2.3548)
    _, _, noise = clipped_stats(smooth[~mask][::7], sigma=3.0, maxiters=5)
    labels = find_segments(smooth, detect_thresh * noise, detect_minarea, mask=mask)
    if labels is None:
        return arr.with_(objmask=np.zeros(sci.shape, np.uint8)), empty_catalog()
    objmask = (labels > 0).view(np.uint8)
    if not catalog:
        return arr.with_(objmask=objmask), None
    error = np.sqrt(np.maximum(arr.var, 0)) if arr.var is not None else None
    table = source_table(data, smooth, labels, error, background=background, dq=arr.dq,
                         masked=mask if arr.dq is not None else None)
    return arr.with_(objmask=objmask), table
