"""Aperture photometry of reduced frames, and the frame descriptors QA measurements need.

:func:`aperture_photometry` measures one star on one array (flagged pixels filled from the
point-symmetric pixel); :func:`standard_photometry` finds a standard star near a sky
position and measures it in a large aperture.  Pure functions of a
:class:`~gsaoi_watch.reduction.container.Frame`: no file, database or logging I/O.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS
from photutils.aperture import CircularAnnulus, CircularAperture

from gsaoi_watch.data.descriptors import FrameInfo, cd_pixel_scale
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.instrument.tables import ARRAY_BY_ID, NOMINAL_PIXEL_SCALE
from gsaoi_watch.reduction.container import Array, Frame

__all__ = ["StarPhotometry", "aperture_photometry", "array_index", "catalogs", "electrons",
           "frame_filter", "frame_info", "gain_term", "header_pixel_scale", "pixel_scale",
           "standard_photometry"]

#: Bits that make a pixel unusable for photometry.
BAD_BITS = FAIL_BITS | DQ["unilluminated"]


# --- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StarPhotometry:
    """Aperture photometry of one star on one array.

    ``array`` is the 0-based array index (extension number - 1); ``x``, ``y`` are 1-based
    pixel coordinates; ``flux``/``flux_err`` are background-subtracted electrons in the
    aperture; ``background`` is the annulus level per pixel; ``radius``, ``annulus`` are in
    pixels; ``masked_fraction`` is the aperture area that was flagged and filled from the
    point-symmetric pixel; ``saturated`` is True if a saturated or non-linear pixel lies in
    the aperture; ``separation`` (arcsec) is the distance from the expected position.
    """

    array: int
    x: float
    y: float
    flux: float
    flux_err: float
    background: float
    radius: float
    annulus: tuple
    masked_fraction: float
    saturated: bool = False
    separation: float = float("nan")




# --- descriptors ---------------------------------------------------------------------------
def frame_info(frame: Frame) -> FrameInfo:
    """Descriptors and tags of a frame's headers."""
    return FrameInfo(frame.phu, [a.header for a in frame.arrays])


def array_index(frame: Frame, k: int) -> int:
    """0-based GSAOI array index of the k-th array of ``frame`` (by ARRAYID)."""
    spec = ARRAY_BY_ID.get(str(frame.arrays[k].header.get("ARRAYID", "")).strip())
    if spec is not None:
        return spec.index
    return tuple(frame.meta.get("indices", range(len(frame.arrays))))[k]


def header_pixel_scale(header: Any, phu: Any) -> float:
    """Pixel scale (arcsec) from an extension's CD matrix, else PIXSCALE, else nominal.

    The CD-matrix scale is :func:`gsaoi_watch.data.descriptors.cd_pixel_scale`.
    """
    scale = cd_pixel_scale(header)
    if scale:
        return scale
    for h in (header, phu):
        value = h.get("PIXSCALE")
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return NOMINAL_PIXEL_SCALE


def pixel_scale(arr: Array, frame: Frame) -> float:
    """Pixel scale (arcsec) of one array of ``frame`` (see :func:`header_pixel_scale`)."""
    return header_pixel_scale(arr.header, frame.phu)


def frame_filter(frame: Frame) -> str | None:
    """The frame's filter, pretty name (FILTER keyword, else from FILTER1/FILTER2)."""
    value = frame.phu.get("FILTER")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return frame_info(frame).filter_name(pretty=True)


def electrons(arr: Array) -> bool:
    """True if the array is in electrons (BUNIT; the default)."""
    return str(arr.header.get("BUNIT", "electron")).strip().lower().startswith("electron")


def gain_term(arr: Array) -> float:
    """Magnitudes to subtract from a zero point for data in ADU (2.5 log10 gain)."""
    if electrons(arr):
        return 0.0
    gain = arr.header.get("GAIN")
    return 2.5 * math.log10(gain) if isinstance(gain, int | float) and gain > 0 else 0.0


def catalogs(frame: Frame) -> list:
    """The frame's per-array source catalogues (``meta['catalogs']``), detected if absent.

    An array whose catalogue is None (none in its file, or one that could not be used) is
    detected here, the others are taken as they are.
    """
    cats = list(frame.meta.get("catalogs") or [None] * len(frame.arrays))
    cats += [None] * (len(frame.arrays) - len(cats))
    if any(c is None for c in cats):
        from gsaoi_watch.reduction.detect import detect_array
        cats = [c if c is not None else detect_array(a)[1]
                for a, c in zip(frame.arrays, cats)]
    return cats


# --- photometry ----------------------------------------------------------------------------
def aperture_photometry(arr: Array, x: float, y: float, radius: float, r_in: float,
                        r_out: float) -> StarPhotometry:
    """Circular-aperture photometry with a sigma-clipped median background annulus.

    Flagged pixels (DQ bad, saturated, cosmic ray, no data, unilluminated) and pixels off
    the array inside the aperture take the value of the point-symmetric pixel about the
    star, or the background if that one is unusable too; the fraction of the aperture so
    filled is reported.

    Parameters
    ----------
    arr : Array
        A sky-subtracted array (electrons).
    x, y : float
        1-based pixel position of the star.
    radius, r_in, r_out : float
        Aperture radius and annulus radii in pixels.

    Returns
    -------
    StarPhotometry
        With ``array`` = -1 (the caller knows which array it is).
    """
    # work on a box around the star (the aperture and the annulus) only
    half = r_out + 2.0
    ny, nx = arr.shape
    bx0, by0 = max(int(math.floor(x - 1.0 - half)), 0), max(int(math.floor(y - 1.0 - half)), 0)
    bx1 = min(int(math.ceil(x - 1.0 + half)) + 1, nx)
    by1 = min(int(math.ceil(y - 1.0 + half)) + 1, ny)
    if bx0 >= bx1 or by0 >= by1:  # no overlap with the array
        return StarPhotometry(-1, x, y, float("nan"), float("nan"), float("nan"), radius,
                              (r_in, r_out), 1.0, False)
    box = (slice(by0, by1), slice(bx0, bx1))
    sci = np.asarray(arr.sci[box], dtype=np.float64)
    dq = arr.dq[box] if arr.dq is not None else None
    full_var = np.asarray(arr.var[box], np.float64) if arr.var is not None else None
    bad = ((dq & BAD_BITS) != 0) if dq is not None else np.zeros(sci.shape, bool)
    bad |= ~np.isfinite(sci)
    pos = (x - 1.0 - bx0, y - 1.0 - by0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = CircularAnnulus(pos, r_in, r_out).to_mask(method="center")
        values = ann.get_values(sci, mask=bad)
        if values.size >= 10:
            _, bkg, bkg_std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
            bkg_err = bkg_std * math.sqrt(math.pi / 2 / values.size)
        else:
            bkg, bkg_err = 0.0, 0.0
        ap = CircularAperture(pos, radius).to_mask(method="exact")
    weights = ap.data
    data = ap.cutout(sci, fill_value=np.nan)
    flags = ap.cutout(bad.astype(np.uint8), fill_value=1).astype(bool)
    if data is None:  # no overlap with the array
        return StarPhotometry(-1, x, y, float("nan"), float("nan"), float(bkg), radius,
                              (r_in, r_out), 1.0, False)
    saturated = False
    if dq is not None:
        sat = ap.cutout(dq & (DQ["saturated"] | DQ["non_linear"]), fill_value=0)
        saturated = bool(np.any((sat != 0) & (weights > 0)))
    var = None if full_var is None else ap.cutout(full_var, fill_value=0.0)
    flags |= ~np.isfinite(data)
    filled = np.where(flags, np.nan, data)
    if flags.any():
        bbox = ap.bbox
        yy, xx = np.nonzero(flags)
        my = np.rint(2 * pos[1] - (yy + bbox.iymin)).astype(int)
        mx = np.rint(2 * pos[0] - (xx + bbox.ixmin)).astype(int)
        bny, bnx = sci.shape
        ok = (mx >= 0) & (mx < bnx) & (my >= 0) & (my < bny)
        ok[ok] = ~bad[my[ok], mx[ok]]
        mirror = np.full(yy.size, bkg, dtype=np.float64)
        mirror[ok] = sci[my[ok], mx[ok]]
        filled[yy, xx] = mirror
        if var is not None and full_var is not None:
            var[yy, xx] = 0.0
            var[yy[ok], xx[ok]] = full_var[my[ok], mx[ok]]
    area = float(weights.sum())
    flux = float(np.sum(weights * (filled - bkg)))
    noise = area**2 * bkg_err**2
    if var is not None:
        noise += float(np.sum(weights * np.maximum(var, 0.0)))
    return StarPhotometry(-1, float(x), float(y), flux, math.sqrt(noise), float(bkg),
                          float(radius), (float(r_in), float(r_out)),
                          float(np.sum(weights * flags)) / max(area, 1e-9), saturated)


def _world_to_pixel(arr: Array, ra: float, dec: float) -> tuple[float, float] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            x, y = WCS(arr.header).all_world2pix(ra, dec, 1)
        except Exception:  # noqa: BLE001 - a header without a usable WCS
            return None
    return float(x), float(y)


def standard_photometry(frame: Frame, ra: float, dec: float, *, search_arcsec: float = 3.0,
                        radius_arcsec: float = 1.5, radius_fwhm: float = 6.0,
                        annulus: tuple[float, float] = (1.5, 2.0)) -> StarPhotometry | None:
    """Find the standard star near (ra, dec) and measure it in a large aperture.

    The star is the brightest catalogue source within ``search_arcsec`` of where the WCS
    puts (ra, dec), on whichever array that is.  The aperture radius is the larger of
    ``radius_arcsec`` (the AO halo) and ``radius_fwhm`` times the source's FWHM; the
    background annulus runs from ``annulus[0]`` to ``annulus[1]`` times that radius.

    Returns
    -------
    StarPhotometry or None
        None if the star is on no array or no source is found near it.
    """
    cats = catalogs(frame)
    best = None
    for k, arr in enumerate(frame.arrays):
        xy = _world_to_pixel(arr, ra, dec)
        cat = cats[k] if k < len(cats) else None
        if xy is None or cat is None or len(cat) == 0:
            continue
        scale = pixel_scale(arr, frame)
        ny, nx = arr.shape
        margin = search_arcsec / scale
        if not (-margin < xy[0] < nx + margin and -margin < xy[1] < ny + margin):
            continue
        sep = np.hypot(np.asarray(cat["X_IMAGE"]) - xy[0],
                       np.asarray(cat["Y_IMAGE"]) - xy[1]) * scale
        near = np.nonzero((sep <= search_arcsec) & np.isfinite(np.asarray(cat["FLUX_AUTO"])))[0]
        if near.size == 0:
            continue
        j = near[np.argmax(np.asarray(cat["FLUX_AUTO"])[near])]
        if best is None or cat["FLUX_AUTO"][j] > best[3]:
            best = (k, float(cat["X_IMAGE"][j]), float(cat["Y_IMAGE"][j]),
                    float(cat["FLUX_AUTO"][j]), float(cat["FWHM_IMAGE"][j]), scale,
                    float(sep[j]))
    if best is None:
        return None
    k, x, y, _, width, scale, separation = best
    width = width if math.isfinite(width) and width > 0 else 0.0
    radius = max(radius_arcsec / scale, radius_fwhm * width)
    phot = aperture_photometry(frame.arrays[k], x, y, radius, annulus[0] * radius,
                               annulus[1] * radius)
    return StarPhotometry(**{**asdict(phot), "array": array_index(frame, k),
                             "annulus": phot.annulus, "separation": separation})

