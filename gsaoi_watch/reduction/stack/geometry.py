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
from dataclasses import dataclass, replace

import numpy as np
from astropy.wcs import WCS
from numpy.typing import ArrayLike

from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.tables import FULL_SIZE
from gsaoi_watch.reduction.container import Frame

__all__ = ["ArrayCorrection", "FrameGeometry", "apply_affine", "compose", "frame_geometry",
           "invert", "mosaic_pixel_area", "observation_epoch", "plane_to_sky", "sky_to_plane",
           "tangent_plane"]

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


# --- a departure of one array from the static model -----------------------------------------
#: Focal-plane scale (arcsec) on which the terms of an :class:`ArrayCorrection` are
#: normalised: about half an array.
CORRECTION_SCALE = 20.0
#: Names of the terms of an :class:`ArrayCorrection` (in the centred, normalised
#: focal-plane coordinates s, t), in the order of its coefficient columns.
CORRECTION_TERMS = ("1", "s", "t", "s2", "st", "t2")


def correction_terms(s: np.ndarray, t: np.ndarray, n_terms: int) -> np.ndarray:
    """The first ``n_terms`` polynomial terms (1, s, t, s^2, st, t^2), shape (n_terms, ...)."""
    one = np.ones_like(s)
    terms = (one, s, t, s * s, s * t, t * t)
    return np.stack(terms[:n_terms])


@dataclass(frozen=True)
class ArrayCorrection:
    """How one array departs from the static distortion model, on the focal plane.

    The static model puts a pixel at (u, v) (arcsec); the array really sees the sky at

        (u', v') = (u, v) + C @ terms((u - u0) / S, (v - v0) / S),

    where (u0, v0) is the array's centre on the focal plane, S is
    :data:`CORRECTION_SCALE` and the terms are (1, s, t, s^2, st, t^2), as many as ``C``
    has columns: 1 is a shift, 3 a shift with a linear part (rotation, scale, skew) and 6
    adds the second-order terms.  A shift and rotation by a small angle theta (radians,
    counter-clockwise from +u to +v) is ``C = [[du, 0, -theta S], [dv, theta S, 0]]``.

    Attributes
    ----------
    center : (float, float)
        (u0, v0), arcsec.
    coeffs : tuple of tuple of float
        ``C``, 2 rows, 1, 3 or 6 columns (arcsec).
    model : str
        The model fitted ('shift', 'rotation' (shift and rotation), 'similarity',
        'affine', 'quadratic').
    """

    center: tuple
    coeffs: tuple
    model: str = "shift"

    @property
    def matrix(self) -> np.ndarray:
        """``C`` as a (2, n_terms) array."""
        return np.asarray(self.coeffs, dtype=np.float64).reshape(2, -1)

    def offset(self, u: ArrayLike, v: ArrayLike) -> Pair:
        """(u' - u, v' - v) at static focal-plane positions (u, v)."""
        c = self.matrix
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        terms = correction_terms((u - self.center[0]) / CORRECTION_SCALE,
                                 (v - self.center[1]) / CORRECTION_SCALE, c.shape[1])
        d = np.tensordot(c, terms, axes=1)
        return d[0], d[1]

    def apply(self, u: ArrayLike, v: ArrayLike) -> Pair:
        """Static focal-plane position -> where the array really sees it."""
        du, dv = self.offset(u, v)
        return np.asarray(u, float) + du, np.asarray(v, float) + dv

    def invert(self, u: ArrayLike, v: ArrayLike, *, iterations: int = 6) -> Pair:
        """Inverse of :meth:`apply` by fixed-point iteration.

        The correction changes by less than 1 % across an arcsec (an 0.3 degree rotation is
        0.005), so every iteration gains two decimals: six reach 1e-12 arcsec.
        """
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        su, sv = u, v
        for _ in range(iterations):
            du, dv = self.offset(su, sv)
            su, sv = u - du, v - dv
        return su, sv

    def shift_rotation(self) -> tuple[float, float, float]:
        """(du, dv) at the array centre (arcsec) and the rotation (degrees) of the linear part."""
        c = self.matrix
        rot = 0.0
        if c.shape[1] >= 3:
            rot = math.degrees(0.5 * (c[1, 1] - c[0, 2]) / CORRECTION_SCALE)
        return float(c[0, 0]), float(c[1, 0]), rot

    def to_dict(self) -> dict:
        """Plain data (JSON): centre, coefficients, model, shift and rotation."""
        du, dv, rot = self.shift_rotation()
        return {"center": [float(x) for x in self.center], "model": self.model,
                "coeffs": self.matrix.tolist(), "shift_arcsec": [du, dv],
                "rotation_deg": rot}


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
    epoch : float or None
        Time of the exposure as a decimal year (for the proper motions of a reference
        catalogue), None when the headers do not say.
    corrections : tuple of ArrayCorrection or None
        Per array, its departure from the static model (from an astrometric solution);
        None: the static model.
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
    epoch: float | None = None
    corrections: tuple | None = None

    def with_corrections(self, corrections: Sequence | None) -> FrameGeometry:
        """The same frame seen through per-array corrections (None: the static model)."""
        return replace(self, corrections=None if corrections is None else tuple(corrections))

    def _correction(self, index: int) -> ArrayCorrection | None:
        return None if self.corrections is None else self.corrections[index]

    def focal_to_plane(self, u: ArrayLike, v: ArrayLike, center: Sequence[float]) -> Pair:
        """Focal-plane position (arcsec, as the array sees it) -> stack plane about center."""
        fu, fv = distortion.focal_plane_center()
        r = self._rot()
        du, dv = np.asarray(u, float) - fu, np.asarray(v, float) - fv
        ra, dec = plane_to_sky(r[0, 0] * du + r[0, 1] * dv, r[1, 0] * du + r[1, 1] * dv,
                               self.ra, self.dec)
        return sky_to_plane(ra, dec, *center)

    def plane_to_focal(self, east: ArrayLike, north: ArrayLike,
                       center: Sequence[float]) -> Pair:
        """Inverse of :meth:`focal_to_plane`."""
        ra, dec = plane_to_sky(east, north, *center)
        e, n = sky_to_plane(ra, dec, self.ra, self.dec)
        r = self._rot().T
        fu, fv = distortion.focal_plane_center()
        return r[0, 0] * e + r[0, 1] * n + fu, r[1, 0] * e + r[1, 1] * n + fv

    def _rot(self) -> np.ndarray:
        t = math.radians(self.pa)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_plane(self, index: int, x: ArrayLike, y: ArrayLike,
                 center: Sequence[float]) -> Pair:
        """1-based pixels of array ``index`` -> stack plane (east, north arcsec about center)."""
        x0, y0 = self.origins[index]
        u, v = distortion.forward(index, np.asarray(x, float) + x0, np.asarray(y, float) + y0,
                                  size=self.size)
        corr = self._correction(index)
        if corr is not None:
            u, v = corr.apply(u, v)
        return self.focal_to_plane(u, v, center)

    def from_plane(self, index: int, east: ArrayLike, north: ArrayLike,
                   center: Sequence[float]) -> Pair:
        """Inverse of :meth:`to_plane`: stack plane -> 1-based pixels of array ``index``."""
        u, v = self.plane_to_focal(east, north, center)
        corr = self._correction(index)
        if corr is not None:
            u, v = corr.invert(u, v)
        x, y = distortion.inverse(index, u, v, size=self.size)
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
        target_ra=float(phu.get("RA", ra)), target_dec=float(phu.get("DEC", dec)),
        epoch=observation_epoch(phu))


def observation_epoch(phu) -> float | None:
    """Mid-exposure time of a frame as a decimal year (Julian epoch, TT), or None.

    From MJD-OBS, else from the DATE-OBS and UT (TIME-OBS) descriptors, plus half EXPTIME.
    """
    from astropy.time import Time

    from gsaoi_watch.data.descriptors import FrameInfo

    half = 0.0
    try:
        half = max(float(phu.get("EXPTIME", 0.0) or 0.0), 0.0) / 2.0
    except (TypeError, ValueError):
        pass
    mjd = phu.get("MJD-OBS")
    try:
        if isinstance(mjd, int | float) and not isinstance(mjd, bool) and mjd > 0:
            return float(Time(float(mjd) + half / 86400.0, format="mjd", scale="utc").jyear)
        when = FrameInfo(phu, []).ut_datetime()
        if when is None:
            return None
        return float(Time(when, scale="utc").jyear + half / (365.25 * 86400.0))
    except (ValueError, TypeError, OverflowError):
        return None


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
