"""Simulated sky: star catalogues, the galaxy, and their projection onto the arrays.

The gnomonic projection here (:func:`sky_to_tangent`, :func:`tangent_to_sky`) is written
out by hand on purpose, although the pipeline projects through astropy's WCS
(:func:`gsaoi_watch.reduction.stack.geometry.tangent_plane`): the simulator is the checker
of the pipeline, and a checker that shared the projection of what it checks could not
catch an error in it (a wrong sign, axis order or unit would cancel out in the tests that
compare the stack's astrometry with the planted stars).  The two agree to 2e-10 arcsec.
"""

from __future__ import annotations

import math

import numpy as np

from gsaoi_watch.instrument import distortion

__all__ = [
    "MOFFAT_BETA",
    "add_stars",
    "galaxy_surface_brightness",
    "make_star_field",
    "pixel_to_tangent",
    "sky_to_tangent",
    "star_pixels",
    "tangent_to_pixel",
    "tangent_to_sky",
]

#: Moffat index of the simulated PSF.
MOFFAT_BETA = 2.5


def sky_to_tangent(ra, dec, ra0, dec0):
    """Gnomonic projection of (ra, dec) about (ra0, dec0): (east, north) offsets in arcsec."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cosc = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def tangent_to_sky(east, north, ra0, dec0):
    """Inverse gnomonic projection: (east, north) arcsec about (ra0, dec0) to (ra, dec) deg."""
    xi = np.radians(np.asarray(east) / 3600.0)
    eta = np.radians(np.asarray(north) / 3600.0)
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    denom = math.cos(dec0r) - eta * math.sin(dec0r)
    ra = ra0r + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(dec0r) + eta * math.cos(dec0r), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _rotation(pa_deg):
    t = math.radians(pa_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def pixel_to_tangent(index, x, y, *, size, pa, rot, scale, fp0, geometry=None):
    """Map 1-based array pixels to (east, north) arcsec about the pointing centre.

    ``geometry`` (a :class:`~gsaoi_watch.sim.geometry.GeometryPerturbation`) displaces the
    real arrays from the static model: the pixels are first mapped to the static-model
    pixels they see.
    """
    if geometry is not None and not geometry.is_identity:
        x, y = geometry.to_static(index, x, y, size=size)
    u, v = distortion.forward(index, x, y, size=size)
    du, dv = (u - fp0[0]) * scale, (v - fp0[1]) * scale
    r = _rotation(pa + rot)
    return r[0, 0] * du + r[0, 1] * dv, r[1, 0] * du + r[1, 1] * dv


def tangent_to_pixel(index, east, north, *, size, pa, rot, scale, fp0, geometry=None):
    """Inverse of :func:`pixel_to_tangent`."""
    r = _rotation(pa + rot).T
    du = (r[0, 0] * east + r[0, 1] * north) / scale
    dv = (r[1, 0] * east + r[1, 1] * north) / scale
    x, y = distortion.inverse(index, du + fp0[0], dv + fp0[1], size=size)
    if geometry is not None and not geometry.is_identity:
        x, y = geometry.from_static(index, x, y, size=size)
    return x, y


def make_star_field(rng, *, ra0, dec0, half_width, n_stars, mag_range, slope=0.22):
    """Random field stars uniformly in a box, magnitudes from N(<m) ~ 10**(slope m)."""
    east = rng.uniform(-half_width, half_width, n_stars)
    north = rng.uniform(-half_width, half_width, n_stars)
    lo, hi = mag_range
    u = rng.random(n_stars)
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    mags = np.log10(a + u * (b - a)) / slope
    ra, dec = tangent_to_sky(east, north, ra0, dec0)
    return np.asarray(ra), np.asarray(dec), mags


def _moffat_alpha(fwhm):
    return fwhm / (2.0 * math.sqrt(2 ** (1.0 / MOFFAT_BETA) - 1.0))


def _stamp_radius(flux, alpha, cap):
    # Radius where the Moffat wing falls below ~0.05 e-/pixel.
    peak = flux * (MOFFAT_BETA - 1.0) / (math.pi * alpha**2)
    if peak <= 0.05:
        return 3
    r = alpha * math.sqrt((peak / 0.05) ** (1.0 / MOFFAT_BETA) - 1.0)
    return int(min(max(r, 4 * alpha, 8), cap))


def star_pixels(index, ra, dec, *, ra0, dec0, size, pa, rot, scale, fp0, margin,
                geometry=None):
    """Return (k, x, y) of stars whose 1-based pixel position lies within ``margin`` of array.

    ``geometry``: the arrays' departure from the static model (see :func:`pixel_to_tangent`).
    """
    east, north = sky_to_tangent(ra, dec, ra0, dec0)
    # Only stars near the field: the cubic model must not be inverted far outside its domain.
    near = np.nonzero((np.abs(east) < 70.0) & (np.abs(north) < 70.0))[0]
    x = np.full(len(east), np.nan)
    y = np.full(len(east), np.nan)
    if near.size:
        x[near], y[near] = tangent_to_pixel(index, east[near], north[near], size=size,
                                            pa=pa, rot=rot, scale=scale, fp0=fp0,
                                            geometry=geometry)
    keep = (x > 0.5 - margin) & (x < size + 0.5 + margin) & (y > 0.5 - margin) \
        & (y < size + 0.5 + margin)
    k = np.nonzero(keep)[0]
    return k, x[k], y[k]


def add_stars(image, xs, ys, fluxes, fwhm, *, x0=0, y0=0, cap=128):
    """Add Moffat stars (total ``fluxes``) at 1-based positions to ``image`` in place.

    ``x0``/``y0`` are the 0-based coordinates of ``image[0, 0]`` in the array (ROI offset).
    Each stamp is normalised so that it holds the flux that falls inside it; the flux
    beyond the stamp radius (below 0.05 e- per pixel) is left out.
    """
    ny, nx = image.shape
    alpha = _moffat_alpha(fwhm)
    for x, y, flux in zip(xs, ys, fluxes):
        r = _stamp_radius(flux, alpha, cap)
        cx, cy = x - 1.0 - x0, y - 1.0 - y0  # 0-based in image
        ix0, ix1 = int(math.floor(cx - r)), int(math.ceil(cx + r)) + 1
        iy0, iy1 = int(math.floor(cy - r)), int(math.ceil(cy + r)) + 1
        if ix1 <= 0 or iy1 <= 0 or ix0 >= nx or iy0 >= ny:
            continue
        gx = np.arange(ix0, ix1) - cx
        gy = np.arange(iy0, iy1) - cy
        rr = gy[:, None] ** 2 + gx[None, :] ** 2
        prof = (1.0 + rr / alpha**2) ** (-MOFFAT_BETA)
        prof[rr > r * r] = 0.0
        # Analytic fraction inside radius r, so the stamp carries exactly that flux.
        inside = 1.0 - (1.0 + r * r / alpha**2) ** (1.0 - MOFFAT_BETA)
        prof *= flux * inside / prof.sum()
        sx0, sy0 = max(ix0, 0), max(iy0, 0)
        sx1, sy1 = min(ix1, nx), min(iy1, ny)
        image[sy0:sy1, sx0:sx1] += prof[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0].astype(
            image.dtype)


def galaxy_surface_brightness(east, north, galaxy):
    """Galaxy light in e-/s per full-size pixel area at (east, north) arcsec from the target.

    An exponential disc (scale length ``galaxy['scale_arcsec']``, axis ratio, position angle),
    centred ``galaxy['center_east']``, ``galaxy['center_north']`` arcsec from the target,
    tapered smoothly to zero between the two radii of ``galaxy['taper_arcsec']``.
    """
    de = east - galaxy["center_east"]
    dn = north - galaxy["center_north"]
    t = math.radians(galaxy["pa_deg"])
    a = de * math.cos(t) + dn * math.sin(t)
    b = -de * math.sin(t) + dn * math.cos(t)
    r = np.sqrt(a**2 + (b / galaxy["axis_ratio"]) ** 2)
    r1, r2 = galaxy.get("taper_arcsec", (np.inf, np.inf))
    taper = np.clip((r2 - r) / (r2 - r1), 0.0, 1.0) if np.isfinite(r2) else 1.0
    taper = np.sin(0.5 * np.pi * taper) ** 2
    return galaxy["central_rate"] * np.exp(-r / galaxy["scale_arcsec"]) * taper
