"""Distortion correction and stacking (disco_stu): align frames, resample north up, combine.

The numerical core of ``gsaoi-watch stack``: pure functions on :class:`Frame` containers,
no file or database I/O.  The chain for one array pixel is

    array pixel --static distortion--> focal plane (arcsec) --PA, pointing--> sky (RA, Dec)
    --gnomonic about the stack centre--> stack plane (east, north arcsec)
    --per-frame affine correction--> aligned stack plane --> output pixel,

and resampling runs it backwards for every output pixel (on a coarse grid, interpolated).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.instrument.tables import FULL_SIZE
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.detect import detect_array

__all__ = ["FrameGeometry", "OutputGrid", "align_catalogs", "frame_catalog",
           "frame_geometry", "mosaic_pixel_area", "output_grid", "stack_frames"]

log = logging.getLogger(__name__)

#: Output pixel scale of a full-size (2048) stack, arcsec (DRAGONS resampleToCommonFrame).
PIXEL_SCALE = 0.02
#: DQ bits that exclude an input pixel from the combination.
REJECT_BITS = FAIL_BITS | DQ["unilluminated"]
#: Output pixels per node of the coarse grid on which the geometric chain is evaluated.
_NODE_STEP = 16


# --- geometry ------------------------------------------------------------------------------
def _sky_to_plane(ra, dec, ra0, dec0):
    """Gnomonic projection about (ra0, dec0): (east, north) arcsec (the TAN standard coords)."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cosc = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def _plane_to_sky(east, north, ra0, dec0):
    """Inverse of :func:`_sky_to_plane`: (ra, dec) in degrees."""
    xi = np.radians(np.asarray(east, dtype=np.float64) / 3600.0)
    eta = np.radians(np.asarray(north, dtype=np.float64) / 3600.0)
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    denom = math.cos(dec0r) - eta * math.sin(dec0r)
    ra = ra0r + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(dec0r) + eta * math.cos(dec0r), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _section_origin(header, key):
    """0-based (x, y) origin of a FITS section keyword such as CCDSEC '[1:2048,1:2048]'."""
    text = str(header.get(key, "")).strip()
    try:
        xs, ys = text.strip("[]").split(",")
        return int(xs.split(":")[0]) - 1, int(ys.split(":")[0]) - 1
    except (ValueError, AttributeError):
        return 0, 0


def _section_size(header, key):
    text = str(header.get(key, "")).strip()
    try:
        xs, _ = text.strip("[]").split(",")
        lo, hi = (int(v) for v in xs.split(":"))
        return abs(hi - lo) + 1
    except (ValueError, AttributeError):
        return None


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

    def _rot(self):
        t = math.radians(self.pa)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_plane(self, index, x, y, center):
        """1-based pixels of array ``index`` -> stack plane (east, north arcsec about center)."""
        x0, y0 = self.origins[index]
        u, v = distortion.forward(index, np.asarray(x, float) + x0, np.asarray(y, float) + y0,
                                  size=self.size)
        fu, fv = distortion.focal_plane_center()
        r = self._rot()
        du, dv = u - fu, v - fv
        ra, dec = _plane_to_sky(r[0, 0] * du + r[0, 1] * dv, r[1, 0] * du + r[1, 1] * dv,
                                self.ra, self.dec)
        return _sky_to_plane(ra, dec, *center)

    def from_plane(self, index, east, north, center):
        """Inverse of :meth:`to_plane`: stack plane -> 1-based pixels of array ``index``."""
        ra, dec = _plane_to_sky(east, north, *center)
        e, n = _sky_to_plane(ra, dec, self.ra, self.dec)
        r = self._rot().T
        fu, fv = distortion.focal_plane_center()
        x, y = distortion.inverse(index, r[0, 0] * e + r[0, 1] * n + fu,
                                  r[1, 0] * e + r[1, 1] * n + fv, size=self.size)
        x0, y0 = self.origins[index]
        return x - x0, y - y0


def frame_geometry(frame: Frame) -> FrameGeometry:
    """Read a frame's pointing, position angle, array size and ROI from its headers.

    The pointing is where the telescope WCS of the first array puts the focal-plane centre
    of the mosaic (the reference pixel of the raw GSAOI WCS).

    Raises
    ------
    ReductionError
        If the headers carry no usable celestial WCS or exposure time.
    """
    from astropy.wcs import WCS

    h0 = frame.arrays[0].header
    phu = frame.phu
    size = _section_size(h0, "CCDSIZE") or max(frame.arrays[0].shape)
    origins = tuple(_section_origin(a.header, "CCDSEC") for a in frame.arrays)
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


def mosaic_pixel_area(size=FULL_SIZE):
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


# --- catalogues and alignment -------------------------------------------------------------
def frame_catalog(cats, geom: FrameGeometry, center, *, max_sources=500):
    """Sources of a frame projected on the stack plane, brightest first.

    Parameters
    ----------
    cats : list of Table or None
        Per array, a detectSources catalogue (OBJCAT: 1-based ``x``, ``y``, ``flux``,
        optionally ``fwhm``).
    geom : FrameGeometry
        The frame's geometry.
    center : (float, float)
        Tangent point of the stack plane (ra, dec), degrees.
    max_sources : int
        Keep at most this many sources (the brightest).

    Sources wider than 3 times the median FWHM are left out.

    Returns
    -------
    astropy.table.Table
        ``east``, ``north`` (arcsec about ``center``), ``flux``, ``array`` (0-3), ``x``,
        ``y`` (1-based array pixels), ``fwhm`` (pixels), ``sigma`` (centroid error, arcsec).
    """
    rows = []
    widths = np.concatenate([np.asarray(c["fwhm"], float) for c in cats
                             if c is not None and len(c) and "fwhm" in c.colnames] or [[]])
    widths = widths[np.isfinite(widths) & (widths > 0)]
    max_fwhm = 3.0 * np.median(widths) if len(widths) else np.inf
    pixel = math.sqrt(mosaic_pixel_area(geom.size))
    for i, cat in enumerate(cats):
        if cat is None or len(cat) == 0:
            continue
        x = np.asarray(cat["x"], float)
        y = np.asarray(cat["y"], float)
        flux = np.asarray(cat["flux"], float)
        fwhm = (np.asarray(cat["fwhm"], float) if "fwhm" in cat.colnames
                else np.full(len(x), np.nan))
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
        ok &= ~(fwhm > max_fwhm)  # extended sources (galaxy knots, blends) align poorly
        if not ok.any():
            continue
        e, n = geom.to_plane(i, x[ok], y[ok], center)
        # centroid error ~ FWHM / (2.35 S/N), floored; 1" when the catalogue has no errors
        err = (np.asarray(cat["flux_err"], float)[ok] if "flux_err" in cat.colnames
               else np.full(ok.sum(), np.nan))
        width = np.where(np.isfinite(fwhm[ok]), fwhm[ok], np.median(widths) if len(widths)
                         else 3.0) * pixel
        sigma = np.where(np.isfinite(err) & (err > 0), width * err / (2.35 * flux[ok]), 1.0)
        sigma = np.maximum(sigma, 0.01 * pixel)
        rows.append((e, n, flux[ok], np.full(ok.sum(), i), x[ok], y[ok], fwhm[ok], sigma))
    names = ("east", "north", "flux", "array", "x", "y", "fwhm", "sigma")
    if not rows:
        return Table(names=names, dtype=(float, float, float, int, float, float, float, float))
    cols = [np.concatenate(c) for c in zip(*rows)]
    order = np.argsort(-cols[2])[:max_sources]
    return Table([c[order] for c in cols], names=names)


def _vote_shift(ref, src, radius, bin_size):
    """Most common offset ref - src within ``radius`` (a 2-D histogram vote), refined."""
    d = ref[None, :, :] - src[:, None, :]
    d = d.reshape(-1, 2)
    d = d[(np.abs(d[:, 0]) < radius) & (np.abs(d[:, 1]) < radius)]
    if len(d) == 0:
        return None, 0
    nb = max(int(math.ceil(2 * radius / bin_size)), 1)
    h, xe, ye = np.histogram2d(d[:, 0], d[:, 1], bins=nb, range=[[-radius, radius]] * 2)
    # sum of 2x2 neighbours so that a peak split over a bin edge still wins
    hs = h + np.roll(h, 1, 0) + np.roll(h, 1, 1) + np.roll(np.roll(h, 1, 0), 1, 1)
    k = np.unravel_index(np.argmax(hs), hs.shape)
    guess = np.array([xe[k[0]], ye[k[1]]])
    near = np.hypot(*(d - guess).T) < 1.5 * bin_size
    if not near.any():
        return None, 0
    return np.median(d[near], axis=0), int(near.sum())


def _match(ref, src, radius):
    """Mutual nearest neighbours within ``radius``: index arrays (i_src, i_ref)."""
    from scipy.spatial import cKDTree

    if len(ref) == 0 or len(src) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tr, ts = cKDTree(ref), cKDTree(src)
    d, j = tr.query(src, distance_upper_bound=radius)
    _, back = ts.query(ref, distance_upper_bound=radius)
    i = np.nonzero(np.isfinite(d))[0]
    j = j[i]
    mutual = back[j] == i
    return i[mutual], j[mutual]


def _fit_model(src, ref, weights, model):
    """Weighted least-squares transform ref = A @ src + b of the given model.

    ``model`` is 'shift' (2 parameters), 'similarity' (rotation and scale, 4) or 'affine'
    (6).  Returns the 2x3 matrix [A | b] and the weighted sum of squared residuals.
    """
    w = np.sqrt(weights)
    sx, sy = src[:, 0], src[:, 1]
    n = len(src)
    one, zero = np.ones(n), np.zeros(n)
    if model == "shift":
        d = ref - src
        b = np.sum(d * weights[:, None], axis=0) / np.sum(weights)
        m = np.array([[1.0, 0.0, b[0]], [0.0, 1.0, b[1]]])
    elif model == "similarity":
        # ref_x = a sx - c sy + bx ; ref_y = c sx + a sy + by
        design = np.vstack([np.column_stack([sx, -sy, one, zero]),
                            np.column_stack([sy, sx, zero, one])])
        rhs = np.concatenate([ref[:, 0], ref[:, 1]])
        ww = np.concatenate([w, w])
        p, *_ = np.linalg.lstsq(design * ww[:, None], rhs * ww, rcond=None)
        m = np.array([[p[0], -p[1], p[2]], [p[1], p[0], p[3]]])
    else:
        design = np.column_stack([sx, sy, one]) * w[:, None]
        coef, *_ = np.linalg.lstsq(design, ref * w[:, None], rcond=None)
        m = coef.T
    chi2 = float(np.sum(weights * np.sum((_apply(m, src) - ref) ** 2, axis=1)))
    return m, chi2


_MODELS = (("shift", 2), ("similarity", 4), ("affine", 6))


def _fit_best(src, ref, weights, *, p_value=0.001):
    """Fit a shift, then a similarity, then an affine transform; keep the richest significant.

    A richer model is kept only when an F-test says it explains the residuals better
    (false-alarm probability ``p_value``).
    """
    from scipy.stats import f as f_dist

    n_obs = 2 * len(src)
    m, chi2 = _fit_model(src, ref, weights, "shift")
    best, p_best = "shift", 2
    for model, p in _MODELS[1:]:
        if n_obs - p < 4:
            break
        m2, chi2_2 = _fit_model(src, ref, weights, model)
        dof = n_obs - p
        if chi2_2 <= 0:
            m, chi2, best, p_best = m2, chi2_2, model, p
            break
        stat = ((chi2 - chi2_2) / (p - p_best)) / (chi2_2 / dof)
        if stat > f_dist.ppf(1.0 - p_value, p - p_best, dof):
            m, chi2, best, p_best = m2, chi2_2, model, p
    return m, best


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def align_catalogs(src: Table, ref: Table, *, search_radius=3.0, match_radius=0.5,
                   bin_size=0.05, min_matches=6, max_iter=5, clip_sigma=3.0):
    """Affine transform taking a frame's sources onto a reference catalogue (stack plane).

    A shift is voted first from all pairs closer than ``search_radius`` (a 2-D histogram of
    pair offsets with ``bin_size`` bins); sources are then matched as mutual nearest
    neighbours within ``match_radius`` and a transform is fitted by weighted least squares
    (weights from the ``sigma`` columns, the centroid errors, when present) with
    ``clip_sigma`` rejection, rematching after each fit (at most ``max_iter`` times).  The
    transform is a shift, or a shift with rotation and scale, or a full affine, the richer
    models being kept only when an F-test finds them significant: with a few dozen noisy
    centroids a free affine fit adds more error than it removes.

    Returns
    -------
    matrix : ndarray (2, 3) or None
        ``[A | b]`` with aligned = A @ (east, north) + b; None if fewer than
        ``min_matches`` sources agree with the voted shift.
    info : dict
        ``n_match`` (matches used in the last fit), ``rms`` (arcsec), ``shift`` (voted),
        ``model`` (the transform kept).
    """
    s = np.column_stack([src["east"], src["north"]]) if len(src) else np.zeros((0, 2))
    r = np.column_stack([ref["east"], ref["north"]]) if len(ref) else np.zeros((0, 2))
    info = {"n_match": 0, "rms": float("nan"), "shift": None}
    if len(s) < min_matches or len(r) < min_matches:
        info["n_match"] = min(len(s), len(r))
        return None, info
    shift, votes = _vote_shift(r, s, search_radius, bin_size)
    info["shift"] = None if shift is None else shift.tolist()
    if shift is None or votes < min_matches:
        info["n_match"] = votes
        return None, info
    m = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    sig_s = np.asarray(src["sigma"], float) if "sigma" in src.colnames else np.ones(len(s))
    sig_r = np.asarray(ref["sigma"], float) if "sigma" in ref.colnames else np.ones(len(r))
    keep_prev = None
    for _ in range(max_iter):
        i, j = _match(r, _apply(m, s), match_radius)
        if len(i) < min_matches:
            break
        keep = np.ones(len(i), bool)
        for _ in range(3):
            weights = 1.0 / (sig_s[i] ** 2 + sig_r[j] ** 2)
            trial, model = _fit_best(s[i[keep]], r[j[keep]], weights[keep])
            # normalised residuals; their scale from the median (1.1774 sigma in 2-D)
            res = np.hypot(*(_apply(trial, s[i]) - r[j]).T)
            z = res * np.sqrt(weights)
            sig = np.median(z[keep]) / 1.1774 if keep.sum() else 0.0
            new = z <= max(clip_sigma * sig, 1e-9)
            if new.sum() < min_matches or np.array_equal(new, keep):
                break
            keep = new
        m = trial
        info["n_match"] = int(keep.sum())
        info["rms"] = float(np.sqrt(np.mean(res[keep] ** 2)))
        info["model"] = model
        pair = (tuple(i[keep]), tuple(j[keep]))
        if pair == keep_prev:
            break
        keep_prev = pair
    if info["n_match"] < min_matches:
        return None, info
    return m, info


# --- output grid -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputGrid:
    """A north-up, east-left TAN pixel grid.

    Attributes
    ----------
    ra, dec : float
        Tangent point (CRVAL), degrees.
    scale : float
        Pixel scale, arcsec.
    crpix : (float, float)
        1-based pixel of the tangent point.
    shape : (int, int)
        (ny, nx).
    """

    ra: float
    dec: float
    scale: float
    crpix: tuple
    shape: tuple

    @property
    def center(self):
        """Tangent point (ra, dec)."""
        return (self.ra, self.dec)

    def pixel_to_plane(self, x, y):
        """1-based output pixels -> (east, north) arcsec."""
        return (-(np.asarray(x, float) - self.crpix[0]) * self.scale,
                (np.asarray(y, float) - self.crpix[1]) * self.scale)

    def plane_to_pixel(self, east, north):
        """(east, north) arcsec -> 1-based output pixels."""
        return (self.crpix[0] - np.asarray(east, float) / self.scale,
                self.crpix[1] + np.asarray(north, float) / self.scale)

    def header(self):
        """FITS WCS keywords of the grid."""
        h = fits.Header()
        for key, value, comment in (
                ("CTYPE1", "RA---TAN", "R.A. in tangent plane projection"),
                ("CTYPE2", "DEC--TAN", "DEC. in tangent plane projection"),
                ("CRPIX1", float(self.crpix[0]), "Ref pix of axis 1"),
                ("CRPIX2", float(self.crpix[1]), "Ref pix of axis 2"),
                ("CRVAL1", float(self.ra), "RA at Ref pix in decimal degrees"),
                ("CRVAL2", float(self.dec), "DEC. at Ref pix in decimal degrees"),
                ("CD1_1", -self.scale / 3600.0, "partial of first axis coord w.r.t. x"),
                ("CD1_2", 0.0, "partial of first axis coord w.r.t. y"),
                ("CD2_1", 0.0, "partial of second axis coord w.r.t. x"),
                ("CD2_2", self.scale / 3600.0, "partial of second axis coord w.r.t. y"),
                ("CUNIT1", "deg", ""), ("CUNIT2", "deg", ""),
                ("RADESYS", "FK5", "R.A./DEC. coordinate system reference"),
                ("EQUINOX", 2000.0, "Equinox of coordinate system"),
                ("PIXSCALE", self.scale, "Pixel scale in arcsec/pixel")):
            h[key] = (value, comment)
        return h


def _array_outline(geom, index, n=17):
    ny, nx = geom.shapes[index]
    t = np.linspace(0.5, 1.0, n)
    xs = np.concatenate([0.5 + (nx) * (t - 0.5) * 2, np.full(n, nx + 0.5),
                         0.5 + nx * (t - 0.5) * 2, np.full(n, 0.5)])
    ys = np.concatenate([np.full(n, 0.5), 0.5 + ny * (t - 0.5) * 2, np.full(n, ny + 0.5),
                         0.5 + ny * (t - 0.5) * 2])
    return xs, ys


def output_grid(geoms, transforms, center, scale, *, margin=2):
    """The smallest grid holding every array of every frame, tangent point ``center``."""
    es, ns = [], []
    for geom, m in zip(geoms, transforms):
        for i in range(len(geom.shapes)):
            e, n = geom.to_plane(i, *_array_outline(geom, i), center)
            p = _apply(m, np.column_stack([e, n]))
            es.append(p[:, 0])
            ns.append(p[:, 1])
    e, n = np.concatenate(es), np.concatenate(ns)
    crpix1 = 0.5 + margin + e.max() / scale
    crpix2 = 0.5 + margin - n.min() / scale
    nx = int(math.ceil((e.max() - e.min()) / scale)) + 2 * margin
    ny = int(math.ceil((n.max() - n.min()) / scale)) + 2 * margin
    return OutputGrid(float(center[0]), float(center[1]), float(scale),
                      (float(crpix1), float(crpix2)), (ny, nx))


# --- resampling ------------------------------------------------------------------------------
@dataclass
class _PreparedArray:
    index: int
    coeffs: np.ndarray      # cubic-spline coefficients of sci (bad pixels filled), float32
    var: np.ndarray         # float32
    dq: np.ndarray          # uint16, OR over each pixel's 3x3 neighbourhood
    box: tuple              # (x0, x1, y0, y1) inclusive 1-based output bounding box
    nodes_x: np.ndarray     # input x at coarse nodes, float64
    nodes_y: np.ndarray
    jac: np.ndarray         # input pixels per output pixel at the nodes


def _fill_bad(sci, bad):
    """Replace flagged pixels by the mean of their good 3x3 neighbours (0 if none)."""
    ys, xs = np.nonzero(bad)
    if not len(ys):
        return sci
    ny, nx = sci.shape
    total = np.zeros(len(ys))
    count = np.zeros(len(ys))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
            ok &= ~bad[yy, xx]
            total += np.where(ok, sci[yy, xx], 0.0)
            count += ok
    out = sci.copy()
    out[ys, xs] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return out


def _or_dilate(dq):
    """Bitwise OR of each pixel's 3x3 neighbourhood."""
    p = np.pad(dq, 1, mode="edge")
    out = np.zeros_like(dq)
    ny, nx = dq.shape
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + ny, dx:dx + nx]
    return out


def _prepare_array(arr: Array, index, geom, m_inv, grid):
    sci = np.nan_to_num(arr.sci.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    dq = arr.dq if arr.dq is not None else np.zeros(sci.shape, np.uint16)
    dq = dq | np.where(np.isfinite(arr.sci), 0, DQ["bad_pixel"]).astype(np.uint16)
    bad = (dq & REJECT_BITS) != 0
    coeffs = ndimage.spline_filter(_fill_bad(sci, bad), order=3, output=np.float32,
                                   mode="mirror")
    var = np.zeros(sci.shape, np.float32) if arr.var is None else np.nan_to_num(
        arr.var.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # bounding box on the output grid
    e, n = geom.to_plane(index, *_array_outline(geom, index), grid.center)
    minv = _invert(m_inv)  # forward transform (frame plane -> aligned plane)
    p = _apply(minv, np.column_stack([e, n]))
    xo, yo = grid.plane_to_pixel(p[:, 0], p[:, 1])
    ny, nx = grid.shape
    x0, x1 = max(int(math.floor(xo.min())) - 1, 1), min(int(math.ceil(xo.max())) + 1, nx)
    y0, y1 = max(int(math.floor(yo.min())) - 1, 1), min(int(math.ceil(yo.max())) + 1, ny)
    gx = np.arange(x0, x1 + _NODE_STEP, _NODE_STEP, dtype=float)
    gy = np.arange(y0, y1 + _NODE_STEP, _NODE_STEP, dtype=float)
    mx, my = np.meshgrid(gx, gy)
    e, n = grid.pixel_to_plane(mx, my)
    q = _apply(m_inv, np.column_stack([e.ravel(), n.ravel()]))
    ix, iy = geom.from_plane(index, q[:, 0], q[:, 1], grid.center)
    ix, iy = ix.reshape(mx.shape), iy.reshape(mx.shape)
    dxdy = np.gradient(ix, _NODE_STEP)
    dydy = np.gradient(iy, _NODE_STEP)
    jac = np.abs(dxdy[1] * dydy[0] - dxdy[0] * dydy[1])
    return _PreparedArray(index, coeffs, var, _or_dilate(dq), (x0, x1, y0, y1), ix, iy, jac)


def _compose(outer, inner):
    """The affine transform ``outer(inner(p))`` as a 2x3 matrix."""
    a = outer[:, :2] @ inner[:, :2]
    return np.column_stack([a, outer[:, :2] @ inner[:, 2] + outer[:, 2]])


def _invert(m):
    a = np.linalg.inv(m[:, :2])
    return np.column_stack([a, -a @ m[:, 2]])


@dataclass
class _PreparedFrame:
    name: str
    arrays: list
    factor: float           # flux scale: exposure time and pixel area
    jacobian: bool          # multiply by the local Jacobian too


def _prepare_frame(frame, geom, transform, grid, *, t_ref, flux_mode, area_ref):
    m_inv = _invert(transform)
    arrays = [_prepare_array(a, i, geom, m_inv, grid) for i, a in enumerate(frame.arrays)]
    t_scale = t_ref / geom.exptime
    if flux_mode == "surface":
        factor = t_scale * grid.scale**2 / area_ref
    else:
        factor = t_scale
    return _PreparedFrame(geom.name, arrays, factor, flux_mode == "jacobian")


def _interp_matrix(positions, n_nodes):
    """Dense (len(positions), n_nodes) matrix of linear-interpolation weights."""
    t = np.clip(positions, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(t).astype(int), max(n_nodes - 2, 0))
    w = t - i0
    m = np.zeros((len(positions), n_nodes))
    rows = np.arange(len(positions))
    m[rows, i0] += 1.0 - w
    if n_nodes > 1:
        m[rows, np.minimum(i0 + 1, n_nodes - 1)] += w
    return m


def _interp_index(positions, n_nodes):
    """Left node and weight of linear interpolation at ``positions`` (node units)."""
    t = np.clip(positions, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(t).astype(np.intp), max(n_nodes - 2, 0))
    return i0, t - i0


def _interp_columns(a, i0, w):
    """Linear interpolation of the columns of ``a`` at (left node, weight) ``i0``, ``w``."""
    if a.shape[1] == 1:
        return np.repeat(a, len(i0), axis=1)
    return a[:, i0] * (1.0 - w) + a[:, i0 + 1] * w


def _resample_strip(pf: _PreparedFrame, row0, row1, out_sci, out_var, out_dq, out_cov):
    """Resample frame ``pf`` into output rows [row0, row1) (1-based, exclusive end)."""
    for pa in pf.arrays:
        x0, x1, y0, y1 = pa.box
        r0, r1 = max(row0, y0), min(row1 - 1, y1)
        if r0 > r1:
            continue
        wy = _interp_matrix((np.arange(r0, r1 + 1) - y0) / _NODE_STEP, pa.nodes_x.shape[0])
        i0, w = _interp_index((np.arange(x0, x1 + 1) - x0) / _NODE_STEP, pa.nodes_x.shape[1])
        ix = _interp_columns(wy @ pa.nodes_x, i0, w)  # bilinear interpolation of the nodes
        iy = _interp_columns(wy @ pa.nodes_y, i0, w)
        ny, nxa = pa.coeffs.shape
        inside = (ix > 0.5) & (ix < nxa + 0.5) & (iy > 0.5) & (iy < ny + 0.5)
        if not inside.any():
            continue
        ix -= 1.0
        iy -= 1.0
        sci = ndimage.map_coordinates(pa.coeffs, np.stack([iy, ix]), order=3,
                                      prefilter=False, mode="mirror", output=np.float32)
        # VAR and DQ from the nearest input pixel
        flat = (np.clip(np.rint(iy), 0, ny - 1).astype(np.intp) * nxa
                + np.clip(np.rint(ix), 0, nxa - 1).astype(np.intp))
        var = np.take(pa.var, flat)
        dq = np.take(pa.dq, flat)
        factor = np.float32(pf.factor)
        if pf.jacobian:
            factor = _interp_columns(wy @ pa.jac, i0, w).astype(np.float32) * factor
        sci *= factor
        var *= factor * factor
        rows = slice(r0 - row0, r1 - row0 + 1)
        cols = slice(x0 - 1, x1)
        np.copyto(out_sci[rows, cols], sci, where=inside)
        np.copyto(out_var[rows, cols], var, where=inside)
        np.copyto(out_dq[rows, cols], dq, where=inside)
        out_cov[rows, cols] |= inside


def _combine(sci, var, dq, cov, *, sigma, maxiters):
    """Sigma-clipped mean over axis 0 (median centre); returns sci, var, dq, n_used.

    The good values are sorted once; a symmetric clip about the median keeps a contiguous
    run of the sorted values, so every iteration works on run ends and cumulative sums.
    """
    good = cov & ((dq & REJECT_BITS) == 0)
    data = np.where(good, sci, np.nan)
    s = np.sort(data, axis=0)  # NaN last
    n_good = good.sum(axis=0)
    lo = np.zeros(n_good.shape, np.int64)
    hi = n_good.astype(np.int64)

    def at(arr, idx):
        return np.take_along_axis(arr, np.clip(idx, 0, arr.shape[0] - 1)[None], 0)[0]

    # sums of values relative to the first median keep float32 cumulative sums exact enough
    ref = np.nan_to_num(at(s, (hi - 1) // 2)).astype(np.float32)
    zero = np.zeros((1,) + s.shape[1:], np.float32)
    filled = np.nan_to_num(s - ref[None])
    cs = np.concatenate([zero, np.cumsum(filled, axis=0, dtype=np.float32)])
    cs2 = np.concatenate([zero, np.cumsum(filled**2, axis=0, dtype=np.float32)])
    del filled

    for _ in range(maxiters):
        n = hi - lo
        nn = np.maximum(n, 1)
        med = 0.5 * (at(s, lo + (n - 1) // 2) + at(s, lo + n // 2))
        mean = (at(cs, hi) - at(cs, lo)) / nn  # relative to ref
        std = np.sqrt(np.maximum((at(cs2, hi) - at(cs2, lo)) / nn - mean**2, 0.0))
        with np.errstate(invalid="ignore"):
            new_lo = np.sum(s < (med - sigma * std), axis=0)
            new_hi = np.sum(s <= (med + sigma * std), axis=0)
        clip = n >= 3
        new_lo = np.where(clip, new_lo, lo)
        new_hi = np.where(clip, np.maximum(new_hi, new_lo), hi)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    n = hi - lo
    nn = np.maximum(n, 1)
    out_sci = np.where(n > 0, ref + (at(cs, hi) - at(cs, lo)) / nn, 0.0)
    with np.errstate(invalid="ignore"):
        keep = good & (data >= at(s, lo)[None]) & (data <= at(s, hi - 1)[None])
    out_var = np.where(n > 0, np.sum(np.where(keep, var, 0.0), axis=0) / nn**2, 0.0)
    covered = cov.any(axis=0)
    bits = np.bitwise_or.reduce(np.where(cov, dq, 0), axis=0).astype(np.uint16)
    out_dq = np.where(n > 0, 0, np.where(covered, bits & REJECT_BITS, DQ["no_data"]))
    out_dq = np.where((n == 0) & covered & (out_dq == 0), DQ["bad_pixel"], out_dq)
    return (out_sci.astype(np.float32), out_var.astype(np.float32),
            out_dq.astype(np.uint16), n)


def _strip(prepared, row0, row1, nx, sigma, maxiters):
    """Resample every frame into output rows [row0, row1) and combine them."""
    nf, h = len(prepared), row1 - row0
    s_sci = np.zeros((nf, h, nx), np.float32)
    s_var = np.zeros((nf, h, nx), np.float32)
    s_dq = np.zeros((nf, h, nx), np.uint16)
    s_cov = np.zeros((nf, h, nx), bool)
    for f, pf in enumerate(prepared):
        _resample_strip(pf, row0, row1, s_sci[f], s_var[f], s_dq[f], s_cov[f])
    sci, var, dq, n = _combine(s_sci, s_var, s_dq, s_cov, sigma=sigma, maxiters=maxiters)
    return sci, var, dq, n.astype(np.uint8)


#: What forked strip workers read (set just before the fork, cleared after): the prepared
#: inputs are shared copy-on-write instead of being pickled.
_FORK_STATE = {}


def _strip_job(bounds):
    prepared, nx, sigma, maxiters = _FORK_STATE["job"]
    return bounds[0], _strip(prepared, bounds[0], bounds[1], nx, sigma, maxiters)


def _prepare_job(index):
    jobs, grid, t_ref, flux_mode, area_ref = _FORK_STATE["prepare"]
    load, geom, m = jobs[index]
    return _prepare_frame(load(), geom, m, grid, t_ref=t_ref, flux_mode=flux_mode,
                          area_ref=area_ref)


def _can_fork(workers, n):
    import multiprocessing as mp

    return (workers > 1 and n > 1 and "fork" in mp.get_all_start_methods()
            and not mp.current_process().daemon)


def _map_prepare(jobs, grid, t_ref, flux_mode, area_ref, workers):
    """Load and prepare every frame (in forked workers when ``workers`` > 1)."""
    import multiprocessing as mp

    if _can_fork(workers, len(jobs)):
        _FORK_STATE["prepare"] = (jobs, grid, t_ref, flux_mode, area_ref)
        try:
            with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                return pool.map(_prepare_job, range(len(jobs)), chunksize=1)
        finally:
            _FORK_STATE.clear()
    return [_prepare_frame(load(), geom, m, grid, t_ref=t_ref, flux_mode=flux_mode,
                           area_ref=area_ref) for load, geom, m in jobs]


def _map_strips(prepared, strips, nx, sigma, maxiters, workers):
    """Yield (row0, strip result) for every strip, in forked processes when ``workers`` > 1.

    Forked workers share the prepared inputs with this process (copy-on-write), so the
    memory is the inputs once plus one strip per worker.  Without fork (or in a daemonic
    process) the strips run here, one after the other.
    """
    import multiprocessing as mp

    if _can_fork(workers, len(strips)):
        _FORK_STATE["job"] = (prepared, nx, sigma, maxiters)
        try:
            with mp.get_context("fork").Pool(min(workers, len(strips))) as pool:
                yield from pool.imap_unordered(_strip_job, strips)
        finally:
            _FORK_STATE.clear()
        return
    for row0, row1 in strips:
        yield row0, _strip(prepared, row0, row1, nx, sigma, maxiters)


# --- the step ---------------------------------------------------------------------------------
def stack_frames(frames, *, reference_catalog=None, pixel_scale=None, center=None,
                 flux_mode="surface", sigma=3.0, maxiters=3, min_matches=6,
                 search_radius=3.0, match_radius=None, strip_rows=256, geometries=None,
                 catalogs=None, detect=True, workers=1):
    """Correct the distortion of sky-subtracted frames, align them and stack them north up.

    Parameters
    ----------
    frames : sequence of Frame or callable
        ``_skyCorrected`` frames (4 arrays, electrons, SCI/VAR/DQ), with their source
        catalogues in ``meta['catalogs']`` (detected here if absent).  An item may also be
        a zero-argument callable returning the Frame, so that a caller can load frames
        one at a time and keep memory bounded.
    reference_catalog : Table or tuple of arrays, optional
        RA/Dec (degrees) of reference sources (columns ``ra``, ``dec``).  Given, every
        frame is aligned to it (absolute astrometry); else frames are aligned to the first
        frame that has enough sources, and the stack is put on the mean geometry of the
        aligned frames (so that no single frame's pointing, rotation or scale error is
        inherited whole).
    pixel_scale : float, optional
        Output pixel scale in arcsec (default 0.02" scaled by 2048 / array size).
    center : (ra, dec), optional
        Tangent point of the output grid (default: the first frame's target RA/DEC).
    flux_mode : {'surface', 'jacobian'}
        'surface' (default): the flat-fielded input is a surface brightness in units of the
        mean mosaic pixel area (the dome flat carries the pixel area), so output = input x
        (output pixel area / mean input pixel area): point-source fluxes are preserved
        exactly.  'jacobian': output = input x local input-pixels-per-output-pixel (DRAGONS'
        conserve=True), right for data that are counts per pixel.
    sigma, maxiters : float, int
        Median-centred sigma clipping of the mean combination.
    min_matches : int
        Fewest matched sources with which a frame is aligned; other frames are left out.
    search_radius, match_radius : float
        Shift search and match radii in arcsec (match default: 5 output pixels, >= 0.1").
    strip_rows : int
        Output rows resampled and combined at a time (bounds the memory).
    geometries, catalogs : list, optional
        Per frame, a precomputed :class:`FrameGeometry` and per-array source catalogues
        (OBJCAT tables).  With both, the first pass (alignment) does not load the frames.
    detect : bool
        Detect sources in frames that carry no catalogues (else they have no sources).
    workers : int
        Processes (forked) that load and prepare the frames and then resample and combine
        the strips; 1: everything in this process.

    Returns
    -------
    Frame
        One array: ``sci`` (electrons in the reference exposure time, i.e. the first used
        frame's), ``var``, ``dq`` (no_data where no input falls); the header holds the TAN
        WCS.  ``meta`` holds ``used``, ``skipped`` [(file, reason)], ``transforms``,
        ``align`` (per-frame match count and rms), ``grid`` (OutputGrid) and ``ncombine``
        (per-pixel number of combined inputs, uint8).

    Raises
    ------
    ReductionError
        If no frame can be aligned.
    """
    if flux_mode not in ("surface", "jacobian"):
        raise ValueError(f"flux_mode must be 'surface' or 'jacobian', not {flux_mode!r}")
    loaders = [f if callable(f) else (lambda f=f: f) for f in frames]
    skipped = []
    cat_list = []
    first_frame = None
    for k, load in enumerate(loaders):
        geom = geometries[k] if geometries is not None else None
        cats = catalogs[k] if catalogs is not None else None
        frame = None
        if geom is None or cats is None:
            frame = load()
        name = geom.name if geom is not None else frame.filename
        try:
            geom = geom or frame_geometry(frame)
        except ReductionError as exc:
            skipped.append((name, str(exc)))
            log.warning("stack: %s left out: %s", name, exc)
            continue
        if cats is None:
            cats = frame.meta.get("catalogs")
            if cats is None and detect:
                cats = [detect_array(a)[1] for a in frame.arrays]
        if center is None:
            center = (geom.target_ra, geom.target_dec)
        if first_frame is None:
            first_frame = geom
        cat_list.append((k, geom, frame_catalog(cats or [], geom, center)))
        del frame
    if not cat_list:
        raise ReductionError("stack: no usable frames ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
    size = first_frame.size
    scale = pixel_scale or PIXEL_SCALE * FULL_SIZE / size
    match_radius = match_radius or max(5 * scale, 0.1)
    bin_size = 2.0 * scale

    if reference_catalog is not None:
        ref_ra = np.asarray(reference_catalog["ra"], float)
        ref_dec = np.asarray(reference_catalog["dec"], float)
        re_, rn_ = _sky_to_plane(ref_ra, ref_dec, *center)
        ref = Table([re_, rn_], names=("east", "north"))
        ref_name = "the reference catalogue"
    else:
        ref = None
        ref_name = None
    used, transforms, align = [], [], {}
    for k, geom, cat in cat_list:
        if ref is None:
            if len(cat) < min_matches:
                reason = (f"too few sources to serve as the alignment reference "
                          f"({len(cat)}, need {min_matches})")
                skipped.append((geom.name, reason))
                log.warning("stack: %s left out: %s", geom.name, reason)
                continue
            ref, ref_name = cat, geom.name
            m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            info = {"n_match": len(cat), "rms": 0.0, "shift": [0.0, 0.0]}
        else:
            m, info = align_catalogs(cat, ref, search_radius=search_radius,
                                     match_radius=match_radius, bin_size=bin_size,
                                     min_matches=min_matches)
            if m is None:
                reason = (f"too few sources matched to {ref_name} to align "
                          f"({info['n_match']}, need {min_matches})")
                skipped.append((geom.name, reason))
                log.warning("stack: %s left out: %s", geom.name, reason)
                continue
        log.info("stack: %s aligned to %s with %d sources, rms %.3f\"", geom.name, ref_name,
                 info["n_match"], info["rms"])
        used.append((k, geom))
        transforms.append(m)
        align[geom.name] = info
    if not used:
        raise ReductionError("stack: no frame could be aligned ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
    if reference_catalog is None and len(transforms) > 1:
        # Every frame's telescope WCS is equally good: put the stack on the mean of the
        # frames' geometries rather than on the first frame's, whose pointing, rotation and
        # scale errors would otherwise be inherited whole.
        mean = np.mean(transforms, axis=0)
        inv = _invert(mean)
        transforms = [_compose(inv, m) for m in transforms]
        for (_, g), m in zip(used, transforms):
            align[g.name]["to_stack"] = m.tolist()

    grid = output_grid([g for _, g in used], transforms, center, scale)
    t_ref = used[0][1].exptime
    area_ref = mosaic_pixel_area(size)
    jobs = [(loaders[k], geom, m) for (k, geom), m in zip(used, transforms)]
    prepared = _map_prepare(jobs, grid, t_ref, flux_mode, area_ref, workers)
    ny, nx = grid.shape
    out_sci = np.zeros((ny, nx), np.float32)
    out_var = np.zeros((ny, nx), np.float32)
    out_dq = np.zeros((ny, nx), np.uint16)
    ncomb = np.zeros((ny, nx), np.uint8)
    strips = [(r, min(r + strip_rows, ny + 1)) for r in range(1, ny + 1, strip_rows)]
    for row0, (sci, var, dq, n) in _map_strips(prepared, strips, nx, sigma, maxiters,
                                               workers):
        rows = slice(row0 - 1, row0 - 1 + sci.shape[0])
        out_sci[rows], out_var[rows], out_dq[rows], ncomb[rows] = sci, var, dq, n
    header = grid.header()
    header["BUNIT"] = ("electrons", "Electrons in EXPTIME seconds")
    header["EXPTIME"] = (t_ref, "Reference exposure time of the stack (s)")
    names_used = [g.name for _, g in used]
    meta = {"used": names_used, "skipped": skipped, "grid": grid, "align": align,
            "transforms": {g.name: m.tolist() for (_, g), m in zip(used, transforms)},
            "ncombine": ncomb, "reference": ref_name, "flux_mode": flux_mode}
    phu = fits.Header()
    return Frame(phu=phu, arrays=(Array(out_sci, out_var, out_dq, header),),
                 filename="disco_stack.fits", orig_filename="disco_stack.fits", meta=meta)
