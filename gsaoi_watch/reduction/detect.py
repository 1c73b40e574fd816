"""detectSources: photutils segmentation, object mask and source catalogue per array."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
from photutils.segmentation import detect_sources
from scipy import ndimage

from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array

__all__ = ["CATALOG_COLUMNS", "detect_array", "source_table"]

CATALOG_COLUMNS = ("number", "x", "y", "flux", "flux_err", "fwhm", "ellipticity", "peak",
                   "area")


def source_table(data: np.ndarray, smooth: np.ndarray, labels: np.ndarray,
                 error: np.ndarray | None = None, *,
                 variance: np.ndarray | None = None) -> Table:
    """Measure every segment of a label image at once (vectorised over all sources).

    The same quantities, with the same definitions, as photutils' ``SourceCatalog`` given
    ``convolved_data=smooth``: centroid and ellipticity from the moments of the smoothed
    data in the segment (thin sources regularised in steps of 1/12 as photutils does), flux,
    flux error, peak and area from the unsmoothed data.  FWHM comes from the area above half the
    peak, 2 sqrt(A / pi), which, unlike moment widths, the extended wings of AO PSFs do not
    inflate.  ``SourceCatalog`` measures sources one cutout at a time; on a sky-limited
    2048 x 2048 array with thousands of faint segments this does the same in a few
    whole-array passes.

    Parameters
    ----------
    data, smooth : ndarray
        Background-subtracted data and its smoothed version (masked pixels set to 0).
    labels : ndarray of int
        Segment labels (0 = no source).
    error : ndarray, optional
        1-sigma uncertainty per pixel.
    variance : ndarray, optional
        Variance per pixel, instead of ``error``: the uncertainty is then taken only at
        the source pixels (sqrt of the variance, negative values as 0), not made for the
        whole array.

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
        ellipticity = 1.0 - np.sqrt(minor2) / np.sqrt(half_tr + root)
        ellipticity[bad | (minor2 < 0)] = np.nan
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, ids, d)
        above = d >= 0.5 * peak[ids]
        fwhm = np.where(peak > 0, 2.0 * np.sqrt(per_source(above.astype(np.float64)) / np.pi),
                        np.nan)
        if error is not None:
            pixel_error = error.ravel()[where]
        elif variance is not None:
            pixel_error = np.sqrt(np.maximum(variance.ravel()[where], 0))
        else:
            pixel_error = None
        flux_err = (np.sqrt(per_source(pixel_error.astype(np.float64) ** 2))
                    if pixel_error is not None else np.full(n, np.nan))
    cols = {"number": present, "x": xc[present] + 1.0, "y": yc[present] + 1.0,
            "flux": per_source(d)[present], "flux_err": flux_err[present],
            "fwhm": fwhm[present], "ellipticity": ellipticity[present],
            "peak": peak[present], "area": per_source()[present]}
    return Table({k: cols[k] for k in CATALOG_COLUMNS})


def detect_array(arr: Array, *, detect_thresh: float = 1.5, detect_minarea: int = 20,
                 back_size: int = 256, back_filtersize: int = 5, smooth_fwhm: float = 3.0,
                 catalog: bool = True) -> tuple[Array, Table | None]:
    """Find sources in one sky-subtracted array.

    The background is a photutils ``Background2D`` mesh (``back_size`` px boxes, at most a
    quarter of the array); the background-subtracted data are smoothed with a Gaussian of
    ``smooth_fwhm`` px and thresholded at ``detect_thresh`` times the smoothed noise, keeping
    groups of at least ``detect_minarea`` connected pixels.  Bad and unilluminated pixels
    are masked.  With ``catalog=False`` only the object mask is made (the sky frames' first
    pass needs no catalogue, and measuring thousands of faint sources is most of the cost).

    Returns
    -------
    Array
        ``arr`` with ``objmask`` set (1 on source pixels).
    astropy.table.Table or None
        None with ``catalog=False``; otherwise one row per source: 1-based ``x``, ``y``,
        ``flux`` and ``flux_err`` (electrons), ``fwhm`` (pixels, from the area above half
        maximum), ``ellipticity``, ``peak``, ``area``.
    """
    sci = np.asarray(arr.sci, dtype=np.float32)  # read only: no copy of a float32 array
    mask = ((arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0) if arr.dq is not None else \
        np.zeros(sci.shape, bool)
    ny, nx = sci.shape
    box = int(max(16, min(back_size, ny // 4, nx // 4)))
    # non-finite pixels masked here, not left to photutils (which warns that it clips them):
    # this runs in threads, and warnings.catch_warnings is not thread-safe, so another
    # thread leaving its block can restore an "error" filter while this one is inside
    bkg_mask = mask | ~np.isfinite(sci)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            background = Background2D(sci, box, mask=bkg_mask, filter_size=back_filtersize,
                                      bkg_estimator=MedianBackground(),
                                      interpolator=BkgZoomInterpolator(order=1)).background
        except ValueError:  # too few unmasked pixels per box (tiny or heavily masked array)
            _, median, _ = sigma_clipped_stats(sci[~mask], sigma=3.0, maxiters=5)
            background = np.full(sci.shape, median if np.isfinite(median) else 0.0)
    data = sci - np.asarray(background, dtype=np.float32)
    data[mask] = 0.0
    sigma = smooth_fwhm / 2.3548
    smooth = ndimage.gaussian_filter(data, sigma)
    _, _, noise = sigma_clipped_stats(smooth[~mask][::7], sigma=3.0, maxiters=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoDetectionsWarning: handled below
        segm = detect_sources(smooth, detect_thresh * noise, detect_minarea, mask=mask)
    if segm is None:
        empty = Table(names=CATALOG_COLUMNS,
                      dtype=(int, float, float, float, float, float, float, float, float))
        return arr.with_(objmask=np.zeros(sci.shape, np.uint8)), empty
    if not catalog:
        return arr.with_(objmask=(segm.data > 0).astype(np.uint8)), None
    table = source_table(data, smooth, segm.data, variance=arr.var)
    return arr.with_(objmask=(segm.data > 0).astype(np.uint8)), table
