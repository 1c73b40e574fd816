"""detectSources: photutils segmentation, object mask and source catalogue per array."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
from photutils.segmentation import SourceCatalog, detect_sources
from scipy import ndimage

from gsaoi_watch.instrument import DQ
from gsaoi_watch.reduction.container import Array
from gsaoi_watch.reduction.flat import FAIL_BITS

__all__ = ["CATALOG_COLUMNS", "detect_array"]

CATALOG_COLUMNS = ("number", "x", "y", "flux", "flux_err", "fwhm", "ellipticity", "peak",
                   "area")


def _attr(cat, new, old):
    """Read a catalogue attribute by its photutils 3 name, or the older one."""
    cls = type(cat)
    return getattr(cat, new) if hasattr(cls, new) else getattr(cat, old)


def _half_max_fwhm(cat):
    """FWHM from the area above half the peak: 2 sqrt(A / pi), profile-independent.

    Moment-based widths (photutils' ``fwhm``) are inflated by the extended wings of AO
    PSFs; counting the pixels above half maximum is not.
    """
    out = np.full(len(cat.label), np.nan)
    for k, cutout in enumerate(_attr(cat, "data_cutout_masked", "data_ma")):
        values = np.ma.filled(cutout, np.nan)
        peak = np.nanmax(values) if np.isfinite(values).any() else np.nan
        if peak > 0:
            out[k] = 2.0 * np.sqrt(np.count_nonzero(values >= 0.5 * peak) / np.pi)
    return out


def detect_array(arr: Array, *, detect_thresh=1.5, detect_minarea=20, back_size=256,
                 back_filtersize=5, smooth_fwhm=3.0, catalog=True):
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
    sci = arr.sci.astype(np.float32)
    mask = ((arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0) if arr.dq is not None else \
        np.zeros(sci.shape, bool)
    ny, nx = sci.shape
    box = int(max(16, min(back_size, ny // 4, nx // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            background = Background2D(sci, box, mask=mask, filter_size=back_filtersize,
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
    error = np.sqrt(np.maximum(arr.var, 0)) if arr.var is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = SourceCatalog(data, segm, convolved_data=smooth, error=error, mask=mask)
        cols = {
            "number": np.asarray(cat.label),
            "x": np.asarray(_attr(cat, "x_centroid", "xcentroid")) + 1.0,
            "y": np.asarray(_attr(cat, "y_centroid", "ycentroid")) + 1.0,
            "flux": np.asarray(cat.segment_flux),
            "flux_err": (np.asarray(cat.segment_flux_err) if error is not None
                         else np.full(len(cat.label), np.nan)),
            "fwhm": _half_max_fwhm(cat),
            "ellipticity": np.asarray(getattr(cat.ellipticity, "value", cat.ellipticity)),
            "peak": np.asarray(cat.max_value),
            "area": np.asarray(getattr(cat.area, "value", cat.area)),
        }
    table = Table({c: cols[c] for c in CATALOG_COLUMNS})
    return arr.with_(objmask=(segm.data > 0).astype(np.uint8)), table
