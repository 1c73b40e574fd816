"""Where a frame's pixels fall on the sky, and the stack plane they are aligned on.

The chain for one array pixel is

    array pixel --static distortion--> focal plane (arcsec) --PA, pointing--> sky (RA, Dec)
    --gnomonic about the stack centre--> stack plane (east, north arcsec),

and :meth:`FrameGeometry.from_plane` runs it backwards.  Plane positions are aligned with
2 x 3 affine matrices ``[A | b]`` (:func:`apply_affine`, :func:`compose`, :func:`invert`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from numpy.typing import ArrayLike

from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.tables import FULL_SIZE
from gsaoi_watch.reduction.container import Frame

__all__ = ["FrameGeometry", "apply_affine", "compose", "frame_geometry", "invert",
           "mosaic_pixel_area", "plane_to_sky", "sky_to_plane", "tangent_plane"]

#: A pair of coordinate arrays.
Pair = tuple[np.ndarray, np.ndarray]


# --- the gnomonic projection ---------------------------------------------------------------
def tangent_plane(ra0: float, dec0: float) -> WCS:
    """The gnomonic (TAN) projection about (ra0, dec0) as an astropy WCS.

    Its "pixels" are the standard coordinates (east, north) in arcsec (1-based pixel
    coordinates with CRPIX 0, so that pixel = arcsec): FITS intermediate world coordinates
    are the standard coordinates, east positive.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]
    w.wcs.set()
    return w


def sky_to_plane(ra: ArrayLike, dec: ArrayLike, ra0: float, dec0: float) -> Pair:
    """Gnomonic projection about (ra0, dec0): (east, north) arcsec (the TAN standard coords)."""
    east, north = tangent_plane(ra0, dec0).wcs_world2pix(
        np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64), 1)
    return east, north


def plane_to_sky(east: ArrayLike, north: ArrayLike, ra0: float, dec0: float) -> Pair:
    """Inverse of :func:`sky_to_plane`: (ra, dec) in degrees, RA in [0, 360)."""
    ra, dec = tangent_plane(ra0, dec0).wcs_pix2world(
        np.asarray(east, dtype=np.float64), np.asarray(north, dtype=np.float64), 1)
    return ra, dec


# --- affine transforms of the plane ---------------------------------------------------------
def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply the 2 x 3 affine matrix ``m`` to points ``pts`` of shape (n, 2)."""
    return pts @ m[:, :2].T + m[:, 2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine transform ``outer(inner(p))`` as a 2x3 matrix."""
    a = outer[:, :2] @ inner[:, :2]
    return np.column_stack([a, outer[:, :2] @ inner[:, 2] + outer[:, 2]])


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2 x 3 affine matrix."""
    a = np.linalg.inv(m[:, :2])
    return np.column_stack([a, -a @ m[:, 2]])


# --- one frame ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameGeometry:
    """Where a frame points: everything the pixel-to-sky chain needs.

    Attributes
    ----------
    name : str
        File name (for messages).
    size : int
        Array size in pixels (2048 for real data; smaller for scaled-down simulations).
    origins : tuple of (int, int)
        Per array, 0-based offset of the data in the full array (ROI readouts).
    shapes : tuple of (int, int)
        Per array, (ny, nx) of the data.
    ra, dec : float
        Sky position (deg) of the focal-plane centre of the mosaic (the pointing).
    pa : float
        Instrument position angle, degrees.
    exptime : float
        Exposure time, seconds.
    target_ra, target_dec : float
        Target position (PHU RA/DEC), the default stack centre.
    """

    name: str
    size: int
    origins: tuple
    shapes: tuple
    ra: float
    dec: float
    pa: float
    exptime: float
    target_ra: float
    target_dec: float

    def _rot(self) -> np.ndarray:
        t = math.radians(self.pa)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_plane(self, index: int, x: ArrayLike, y: ArrayLike,
                 center: Sequence[float]) -> Pair:
        """1-based pixels of array ``index`` -> stack plane (east, north arcsec about center)."""
        x0, y0 = self.origins[index]
        u, v = distortion.forward(index, np.asarray(x, float) + x0, np.asarray(y, float) + y0,
                                  size=self.size)
        fu, fv = distortion.focal_plane_center()
        r = self._rot()
        du, dv = u - fu, v - fv
        ra, dec = plane_to_sky(r[0, 0] * du + r[0, 1] * dv, r[1, 0] * du + r[1, 1] * dv,
                               self.ra, self.dec)
        return sky_to_plane(ra, dec, *center)

    def from_plane(self, index: int, east: ArrayLike, north: ArrayLike,
                   center: Sequence[float]) -> Pair:
        """Inverse of :meth:`to_plane`: stack plane -> 1-based pixels of array ``index``."""
        ra, dec = plane_to_sky(east, north, *center)
        e, n = sky_to_plane(ra, dec, self.ra, self.dec)
        r = self._rot().T
        fu, fv = distortion.focal_plane_center()
        x, y = distortion.inverse(index, r[0, 0] * e + r[0, 1] * n + fu,
                                  r[1, 0] * e + r[1, 1] * n + fv, size=self.size)
        x0, y0 = self.origins[index]
        return x - x0, y - y0


def _origin(header) -> tuple[int, int]:
    """0-based (x, y) origin of the array's CCDSEC (0, 0 without one)."""
    sec = parse_section(header.get("CCDSEC"))
    return (0, 0) if sec is None else (sec.x1, sec.y1)


def frame_geometry(frame: Frame) -> FrameGeometry:
    """Read a frame's pointing, position angle, array size and ROI from its headers.

    The pointing is where the telescope WCS of the first array puts the focal-plane centre
    of the mosaic (the reference pixel of the raw GSAOI WCS).

    Raises
    ------
    ReductionError
        If the headers carry no usable celestial WCS or exposure time.
    """
    h0 = frame.arrays[0].header
    phu = frame.phu
    full = parse_section(h0.get("CCDSIZE"))
    size = (full.x2 - full.x1 if full is not None else 0) or max(frame.arrays[0].shape)
    origins = tuple(_origin(a.header) for a in frame.arrays)
    try:
        w = WCS(h0, naxis=2)
        fu, fv = distortion.focal_plane_center()
        x, y = distortion.inverse(0, fu, fv, size=size)
        ra, dec = w.all_pix2world([[float(x) - origins[0][0], float(y) - origins[0][1]]], 1)[0]
        exptime = float(phu["EXPTIME"])
    except Exception as exc:  # astropy raises many kinds for broken WCS
        raise ReductionError(f"{frame.filename}: no usable WCS or EXPTIME ({exc})") from exc
    if not (np.isfinite(ra) and np.isfinite(dec)) or exptime <= 0:
        raise ReductionError(f"{frame.filename}: no usable pointing or exposure time")
    return FrameGeometry(
        name=frame.filename, size=int(size), origins=origins,
        shapes=tuple(a.shape for a in frame.arrays), ra=float(ra), dec=float(dec),
        pa=float(phu.get("PA", 0.0) or 0.0), exptime=exptime,
        target_ra=float(phu.get("RA", ra)), target_dec=float(phu.get("DEC", dec)))


def mosaic_pixel_area(size: int = FULL_SIZE) -> float:
    """Mean on-sky area (arcsec^2) of a ``size``-pixel array pixel over the four arrays.

    A dome flat carries the relative pixel area (it is a uniformly lit surface), and it is
    normalised over the whole mosaic, so a flat-fielded frame is a surface brightness in
    units of this mean pixel area.
    """
    g = np.linspace(0.5, size + 0.5, 65)
    g = 0.5 * (g[1:] + g[:-1])
    xx, yy = np.meshgrid(g, g)
    return float(np.mean([np.abs(np.linalg.det(distortion.jacobian(i, xx, yy, size=size))).mean()
                          for i in range(4)]))
