"""Absolute astrometry: frames and arrays solved on a reference catalogue.

The frames' telescope WCS and the arrays' departures from the static model are solved.

The static distortion model (:mod:`gsaoi_watch.instrument.distortion`) is where the arrays
sat when it was measured; after an intervention an array can sit several pixels and a
few tenths of a degree away.  Dithers of a few arcsec keep almost every star on the same
array, so a relative alignment of the frames cannot see that, and the stack is then wrong
across array boundaries.  A reference catalogue (Gaia) can: every frame's sources are
matched to it, and two sets of unknowns are solved together,

- per frame, an affine transform of the stack plane (pointing, position angle and scale
  errors of the telescope WCS: :func:`~gsaoi_watch.reduction.stack.align._fit_best`), and
- per array, an :class:`~gsaoi_watch.reduction.stack.geometry.ArrayCorrection` on the
  focal plane, common to all the frames (the instrument's geometry): a shift and rotation,
  and, where the stars allow it (an F-test and enough matches), a scale, a full linear
  part and second-order terms,

alternately, matching again after each round with a radius that shrinks with the residuals.

Everything here is pure (tables in, tables out); reading the catalogue file is
:mod:`gsaoi_watch.data.refcat`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from gsaoi_watch.instrument import distortion
from gsaoi_watch.reduction.stack.align import _fit_best, _fit_model, _match, _vote_shift
from gsaoi_watch.reduction.stack.geometry import (
    CORRECTION_SCALE,
    ArrayCorrection,
    FrameGeometry,
    correction_terms,
    invert,
    mosaic_pixel_area,
    sky_to_plane,
)
from gsaoi_watch.reduction.stack.geometry import apply_affine as _apply

__all__ = ["AstrometricSolution", "PM_PRIOR", "reference_on_plane", "solve_astrometry"]

log = logging.getLogger(__name__)

#: Proper-motion uncertainty (mas/yr per axis) given to a source without a proper motion
#: (a Gaia 2-parameter solution, or a catalogue without proper motions): the spread of
#: field-star proper motions.
PM_PRIOR = 5.0
#: Position uncertainty (arcsec per axis) of a source whose catalogue gives none.
DEFAULT_SIGMA = 0.02
#: Models of an array's correction, simplest first: (name, number of parameters).
ARRAY_MODELS = (("shift", 2), ("rotation", 3), ("similarity", 4), ("affine", 6),
                ("quadratic", 12))
#: The model of a frame's transform: the telescope WCS errs in pointing, position angle
#: and scale; anything else is the instrument's (the arrays' corrections), and a richer
#: frame model would make part of the arrays' departures indistinguishable from it.
FRAME_MODEL = "similarity"
#: Fewest matches per parameter before a model is tried.
MATCHES_PER_PARAMETER = 4


# --- the reference catalogue on the stack plane ---------------------------------------------
def reference_on_plane(catalog: Table, center: Sequence[float], epoch: float | None, *,
                       radius: float = 120.0) -> Table:
    """Reference sources at the epoch of the observation, on the stack plane.

    Parameters
    ----------
    catalog : astropy.table.Table
        Columns ``ra``, ``dec`` (degrees, at ``epoch`` of the catalogue); optional
        ``ra_error``, ``dec_error`` (mas), ``pmra`` (mu_alpha cos(dec)), ``pmdec`` (mas/yr),
        ``pmra_error``, ``pmdec_error`` (mas/yr), ``epoch`` (decimal year); NaN where a
        source has no value (see :func:`gsaoi_watch.data.refcat.read_reference_catalog`).
    center : (ra, dec)
        Tangent point of the stack plane, degrees.
    epoch : float or None
        Epoch of the observation (decimal year); None: positions are taken as they are
        (and uncertain by the proper motions over 10 years).
    radius : float
        Keep sources within this many arcsec of ``center`` (a GSAOI field is 85").

    Returns
    -------
    astropy.table.Table
        ``east``, ``north`` (arcsec), ``sigma`` (arcsec per axis, position error at the
        epoch), ``row`` (the source's row in ``catalog``).

    Notes
    -----
    Proper motions are applied linearly on the sky (dec + mu_delta t, ra + mu_alpha* t /
    cos dec): for the |mu t| < 1" of a decade of field-star motion the error of the
    linear step is below 1e-6", and it needs no parallaxes or radial velocities, which a
    user's catalogue does not have (astropy's ``apply_space_motion`` would need them).
    """
    n = len(catalog)

    def column(name: str, default: float) -> np.ndarray:
        if name in catalog.colnames:
            return np.asarray(catalog[name], dtype=np.float64)
        return np.full(n, default)

    ra, dec = column("ra", np.nan), column("dec", np.nan)
    cat_epoch = column("epoch", np.nan)
    pmra, pmdec = column("pmra", np.nan), column("pmdec", np.nan)
    sig_pos = np.hypot(column("ra_error", np.nan), column("dec_error", np.nan)) / math.sqrt(2)
    sig_pos = np.where(np.isfinite(sig_pos), sig_pos / 1000.0, DEFAULT_SIGMA)
    has_pm = np.isfinite(pmra) & np.isfinite(pmdec)
    sig_pm = np.hypot(column("pmra_error", np.nan), column("pmdec_error", np.nan)) / math.sqrt(2)
    sig_pm = np.where(has_pm & np.isfinite(sig_pm), sig_pm, np.where(has_pm, 0.0, PM_PRIOR))
    dt = np.where(np.isfinite(cat_epoch), (epoch - cat_epoch) if epoch is not None else 10.0,
                  0.0)
    dt = np.where(np.isfinite(dt), dt, 10.0)
    move = np.where(has_pm & (epoch is not None), 1.0, 0.0) * dt
    dec_t = dec + np.where(has_pm, pmdec, 0.0) * move / 3.6e6
    ra_t = ra + np.where(has_pm, pmra, 0.0) * move / 3.6e6 / np.cos(np.radians(dec_t))
    sigma = np.hypot(sig_pos, np.abs(dt) * sig_pm / 1000.0)
    ok = np.isfinite(ra_t) & np.isfinite(dec_t)
    rows = np.nonzero(ok)[0]
    east, north = sky_to_plane(ra_t[rows], dec_t[rows], *center)
    near = (np.abs(east) < radius) & (np.abs(north) < radius)
    return Table([east[near], north[near], sigma[rows][near], rows[near]],
                 names=("east", "north", "sigma", "row"))


# --- the solution ---------------------------------------------------------------------------
@dataclass
class AstrometricSolution:
    """Per frame, the transform onto the catalogue's frame; per array, its correction.

    Attributes
    ----------
    used : list of (key, FrameGeometry)
        Frames solved, their geometries carrying the array corrections.
    transforms : list of ndarray (2, 3)
        Per used frame, the affine transform of its stack plane onto the catalogue's.
    corrections : tuple of ArrayCorrection or None
        Per array (None where no source of any frame matched).
    skipped : list of (name, reason)
    info : dict
        ``n_stars`` (distinct reference sources matched), ``n_matches``, ``rms`` (arcsec,
        2-D, of the matched sources after the fit), ``arrays`` (per array: ``n_matches``,
        ``rms``, the correction), ``frames`` (per frame: ``n_match``, ``rms``, ``model``).
    """

    used: list
    transforms: list
    corrections: tuple
    skipped: list
    info: dict = field(default_factory=dict)


def _array_centers(size: int) -> list[tuple[float, float]]:
    c = 0.5 * (size + 1)
    out = []
    for i in range(4):
        u, v = distortion.forward(i, c, c, size=size)
        out.append((float(u), float(v)))
    return out


def _basis(model: str, n_terms: int = 6) -> list[np.ndarray]:
    """The coefficient matrices spanned by an array model (each 2 x n_terms)."""
    def unit(r: int, c: int) -> np.ndarray:
        e = np.zeros((2, n_terms))
        e[r, c] = 1.0
        return e

    shift = [unit(0, 0), unit(1, 0)]
    if model == "shift":
        return shift
    if model == "rotation":
        return shift + [unit(1, 1) - unit(0, 2)]
    if model == "similarity":
        return shift + [unit(1, 1) - unit(0, 2), unit(0, 1) + unit(1, 2)]
    linear = [unit(r, c) for r in (0, 1) for c in (1, 2)]
    if model == "affine":
        return shift + linear
    return shift + linear + [unit(r, c) for r in (0, 1) for c in (3, 4, 5)]


def _fit_array(us: np.ndarray, vs: np.ndarray, du: np.ndarray, dv: np.ndarray,
               weights: np.ndarray, center: tuple, *, p_value: float = 0.001
               ) -> tuple[ArrayCorrection, np.ndarray]:
    """The richest significant model of an array's correction: (correction, residuals 2-D)."""
    from scipy.stats import f as f_dist

    terms = correction_terms((us - center[0]) / CORRECTION_SCALE,
                             (vs - center[1]) / CORRECTION_SCALE, 6)
    rhs = np.concatenate([du, dv])
    w = np.sqrt(np.concatenate([weights, weights]))
    n_obs = rhs.size
    best: tuple | None = None
    for model, n_par in ARRAY_MODELS:
        if best is not None and n_obs < MATCHES_PER_PARAMETER * n_par:
            break
        basis = _basis(model)
        design = np.column_stack([np.concatenate([b[0] @ terms, b[1] @ terms])
                                  for b in basis])
        p, *_ = np.linalg.lstsq(design * w[:, None], rhs * w, rcond=None)
        coeffs = sum(pk * b for pk, b in zip(p, basis))
        resid = rhs - design @ p
        chi2 = float(np.sum((resid * w) ** 2))
        if best is not None:
            _, chi2_0, n_0, _, _ = best
            dof = n_obs - n_par
            if dof <= 0 or chi2 <= 0:
                break
            stat = ((chi2_0 - chi2) / (n_par - n_0)) / (chi2 / dof)
            if not stat > f_dist.ppf(1.0 - p_value, n_par - n_0, dof):
                continue
        best = (model, chi2, n_par, coeffs, resid)
    assert best is not None  # the first model is always fitted
    model, _, _, coeffs, resid = best
    ncol = 1 if model == "shift" else 3 if model != "quadratic" else 6
    corr = ArrayCorrection(center=tuple(center),
                           coeffs=tuple(tuple(float(c) for c in row[:ncol]) for row in coeffs),
                           model=model)
    half = resid.size // 2
    return corr, np.hypot(resid[:half], resid[half:])


@dataclass
class _Frame:
    key: Any
    geom: FrameGeometry
    array: np.ndarray   # array index of each source
    x: np.ndarray       # 1-based array pixels
    y: np.ndarray
    u: np.ndarray       # static focal plane, arcsec
    v: np.ndarray
    sigma: np.ndarray   # centroid error, arcsec
    m: np.ndarray       # affine of the stack plane onto the catalogue's
    pairs: tuple = (np.zeros(0, int), np.zeros(0, int))   # (source, reference) indices


def _plane(fr: _Frame, corrections: Sequence, center: Sequence[float]) -> np.ndarray:
    """Stack-plane positions of a frame's sources through the corrections (n, 2)."""
    u, v = fr.u.copy(), fr.v.copy()
    for a, corr in enumerate(corrections):
        if corr is None:
            continue
        sel = fr.array == a
        if sel.any():
            u[sel], v[sel] = corr.apply(fr.u[sel], fr.v[sel])
    e, n = fr.geom.focal_to_plane(u, v, center)
    return np.column_stack([e, n])


def _coarse(fr: _Frame, src: np.ndarray, ref: np.ndarray, *, search_radius: float,
            array_radius: float, match_radius: float) -> tuple[np.ndarray, tuple]:
    """First matches of a frame: a shift voted for the frame, then one for each array.

    The arrays' departures from the static model differ (up to ~0.4" at a corner for 10
    pixels and 0.3 degree), so the frame's vote finds the pointing error and each array's
    own vote, in a smaller box with finer bins, what is left of its departure.
    """
    shift, _ = _vote_shift(ref, src, max(search_radius, 5 * array_radius),
                           max(0.1, array_radius / 10.0))
    if shift is None:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (np.zeros(0, int),) * 2
    moved = src + shift
    ii, jj = [], []
    for a in range(4):
        sel = np.nonzero(fr.array == a)[0]
        if not len(sel):
            continue
        extra, votes = _vote_shift(ref, moved[sel], array_radius,
                                   max(0.02, array_radius / 50.0))
        if extra is None or votes < 3:
            extra = np.zeros(2)
        i, j = _match(ref, moved[sel] + extra, match_radius)
        ii.append(sel[i])
        jj.append(j)
    m = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    if not ii:
        return m, (np.zeros(0, int),) * 2
    return m, (np.concatenate(ii), np.concatenate(jj))


def _clip(z: np.ndarray, clip_sigma: float) -> np.ndarray:
    """Keep normalised 2-D residuals within ``clip_sigma`` of their median-based scale."""
    if not len(z):
        return np.zeros(0, bool)
    sig = np.median(z) / 1.1774
    return z <= max(clip_sigma * sig, 1e-12)


def _setup(cats: Sequence[tuple[Any, FrameGeometry, Table]], r: np.ndarray, *,
           min_matches: int, search_radius: float, array_radius: float,
           match_radius: float) -> tuple[list[_Frame], list[tuple[str, str]]]:
    """Every frame's sources on the static focal plane and its first matches."""
    frames: list[_Frame] = []
    skipped: list[tuple[str, str]] = []
    for key, geom, cat in cats:
        arr = np.asarray(cat["array"], int)
        x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        u, v = np.zeros(len(x)), np.zeros(len(x))
        for a in range(4):
            sel = arr == a
            if sel.any():
                x0, y0 = geom.origins[a]
                u[sel], v[sel] = distortion.forward(a, x[sel] + x0, y[sel] + y0,
                                                    size=geom.size)
        sigma = np.asarray(cat["sigma"], float) if "sigma" in cat.colnames \
            else np.full(len(x), DEFAULT_SIGMA)
        fr = _Frame(key, geom, arr, x, y, u, v,
                    np.where(np.isfinite(sigma), sigma, DEFAULT_SIGMA), np.eye(2, 3))
        if len(x) < min_matches or len(r) < min_matches:
            skipped.append((geom.name, f"too few sources to solve on the reference catalogue "
                                       f"({min(len(x), len(r))}, need {min_matches})"))
            continue
        src = np.column_stack([cat["east"], cat["north"]])
        fr.m, fr.pairs = _coarse(fr, src, r, search_radius=search_radius,
                                 array_radius=array_radius, match_radius=match_radius)
        if len(fr.pairs[0]) < min_matches:
            skipped.append((geom.name, f"too few sources matched to the reference catalogue "
                                       f"({len(fr.pairs[0])}, need {min_matches})"))
            continue
        frames.append(fr)
    return frames, skipped


def _fit_corrections(frames: Sequence[_Frame], r: np.ndarray, sig_r: np.ndarray,
                     center: Sequence[float], centers: Sequence[tuple], clip_sigma: float
                     ) -> tuple[list, dict]:
    """Each array's correction from every frame's matches on it (frame transforms fixed)."""
    per_array: dict[int, list] = {a: [] for a in range(4)}
    for fr in frames:
        i, j = fr.pairs
        if not len(i):
            continue
        back = _apply(invert(fr.m), r[j])
        ut, vt = fr.geom.plane_to_focal(back[:, 0], back[:, 1], center)
        for a in range(4):
            sel = fr.array[i] == a
            if sel.any():
                us, vs = fr.u[i][sel], fr.v[i][sel]
                per_array[a].append((us, vs, ut[sel] - us, vt[sel] - vs,
                                     1.0 / (fr.sigma[i][sel] ** 2 + sig_r[j][sel] ** 2)))
    corrections: list[ArrayCorrection | None] = [None] * 4
    info: dict[int, dict] = {}
    for a, parts in per_array.items():
        if not parts or sum(len(p[0]) for p in parts) < 2:
            info[a] = {"n_matches": 0}
            continue
        us, vs, du, dv, w = (np.concatenate(c) for c in zip(*parts))
        keep = np.ones(len(us), bool)
        for _ in range(3):
            corr, res = _fit_array(us[keep], vs[keep], du[keep], dv[keep], w[keep],
                                   centers[a])
            ou, ov = corr.offset(us, vs)
            new = _clip(np.hypot(du - ou, dv - ov) * np.sqrt(w), clip_sigma)
            if new.sum() < 2 or np.array_equal(new, keep):
                break
            keep = new
        corrections[a] = corr
        info[a] = {"n_matches": int(keep.sum()), "rms": float(np.sqrt(np.mean(res ** 2))),
                   "correction": corr.to_dict()}
    return corrections, info


def _fit_frames(frames: Sequence[_Frame], corrections: Sequence, r: np.ndarray,
                sig_r: np.ndarray, center: Sequence[float], *, min_matches: int,
                clip_sigma: float) -> float:
    """Each frame's transform through the corrections (arrays fixed); the rms (arcsec)."""
    residuals = []
    for fr in frames:
        i, j = fr.pairs
        src = _plane(fr, corrections, center)
        w = 1.0 / (fr.sigma[i] ** 2 + sig_r[j] ** 2)
        keep = np.ones(len(i), bool)
        for _ in range(3):
            m, _ = _fit_model(src[i][keep], r[j][keep], w[keep], FRAME_MODEL)
            new = _clip(np.hypot(*(_apply(m, src[i]) - r[j]).T) * np.sqrt(w), clip_sigma)
            if new.sum() < min_matches or np.array_equal(new, keep):
                break
            keep = new
        fr.m = m
        residuals.append(np.hypot(*(_apply(m, src[i][keep]) - r[j][keep]).T))
    return float(np.sqrt(np.mean(np.concatenate(residuals) ** 2)))


def _relative_departures(corrections: Sequence, centers: Sequence[tuple]) -> dict[int, dict]:
    """Each array's departure once what all arrays share is taken out.

    A shift, rotation and scale common to all four arrays cannot be told from the frames'
    own pointing, rotation and scale errors (the solution may put it in either), so the
    departures reported are relative: rotations less their mean, and the shifts of the
    array centres less that mean rotation about the mosaic centre and the shift and scale
    about it that fit them best.  These do not depend on how the solution shared the
    common part out.
    """
    found = [(a, c) for a, c in enumerate(corrections) if c is not None]
    if not found:
        return {}
    fu, fv = distortion.focal_plane_center()
    rot = {a: c.shift_rotation()[2] for a, c in found}
    if any(c.matrix.shape[1] < 3 for _, c in found):  # shifts only: no rotation measured
        rot = {a: 0.0 for a, _ in found}
    mean_rot = math.radians(float(np.mean(list(rot.values()))))
    rows, rhs = [], []
    for a, corr in found:
        u0, v0 = centers[a]
        du, dv = (float(t) for t in corr.offset(u0, v0))
        lu, lv = u0 - fu, v0 - fv  # the common rotation's shift of this centre, removed
        rhs += [du + mean_rot * lv, dv - mean_rot * lu]
        rows += [[1.0, 0.0, lu], [0.0, 1.0, lv]]
    design, rhs_v = np.array(rows), np.array(rhs)
    if len(found) >= 2:
        common, *_ = np.linalg.lstsq(design, rhs_v, rcond=None)
    else:
        common = np.array([rhs_v[0], rhs_v[1], 0.0])
    left = rhs_v - design @ common
    mean_deg = math.degrees(mean_rot)
    return {a: {"shift_arcsec": [float(left[2 * k]), float(left[2 * k + 1])],
                "rotation_deg": float(rot[a] - mean_deg)} for k, (a, _) in enumerate(found)}


def solve_astrometry(cats: Sequence[tuple[Any, FrameGeometry, Table]], ref: Table,
                     center: Sequence[float], *, min_matches: int = 6,
                     search_radius: float = 3.0, array_radius: float = 1.0,
                     match_radius: float = 0.3, iterations: int = 8,
                     clip_sigma: float = 3.0) -> AstrometricSolution:
    """Solve every frame and every array's departure from the static model on ``ref``.

    Parameters
    ----------
    cats : sequence of (key, FrameGeometry, Table)
        Per frame, a caller's key, its geometry (static model) and its sources
        (:func:`~gsaoi_watch.reduction.stack.align.frame_catalog`: ``east``, ``north``,
        ``array``, ``x``, ``y``, ``sigma``).
    ref : astropy.table.Table
        Reference sources on the stack plane (:func:`reference_on_plane`).
    center : (ra, dec)
        Tangent point of the stack plane.
    min_matches : int
        Fewest matched sources with which a frame is solved (others are left out).
    search_radius : float
        Half-size (arcsec) of the box in which a frame's pointing error is searched.
    array_radius : float
        Half-size (arcsec) of the box in which each array's departure is searched.
    match_radius : float
        Match radius (arcsec) of the first round; later rounds use 5 times the rms of
        the residuals (at least 0.02", at most this).  Radii and bins are never smaller
        than a few pixels of the frames (which matters for scaled-down simulations only).
    iterations : int
        Rounds of (array corrections, frame transforms, matching) at most.
    clip_sigma : float
        Matches beyond this many times the (median-based) scatter are left out of a fit.

    Returns
    -------
    AstrometricSolution
    """
    r = np.column_stack([ref["east"], ref["north"]]) if len(ref) else np.zeros((0, 2))
    sig_r = np.asarray(ref["sigma"], float) if len(ref) else np.zeros(0)
    if not cats:
        return AstrometricSolution([], [], (None,) * 4, [], {})
    size = cats[0][1].size
    centers = _array_centers(size)
    # radii and bins in arcsec, but never finer than the pixels (scaled-down simulations)
    pixel = math.sqrt(mosaic_pixel_area(size))
    match_radius = max(match_radius, 2.5 * pixel)
    array_radius = max(array_radius, 10.0 * pixel)
    floor = max(0.02, 0.25 * pixel)
    frames, skipped = _setup(cats, r, min_matches=min_matches, search_radius=search_radius,
                             array_radius=array_radius, match_radius=match_radius)
    corrections: list[ArrayCorrection | None] = [None] * 4
    if not frames:
        return AstrometricSolution([], [], tuple(corrections), skipped, {})
    for fr in frames:  # the first frame transforms: from the per-array matches
        i, j = fr.pairs
        w = 1.0 / (fr.sigma[i] ** 2 + sig_r[j] ** 2)
        fr.m, _ = _fit_best(_plane(fr, corrections, center)[i], r[j], w, p_value=1e-12)
    previous = None
    array_info: dict[int, dict] = {}
    for _ in range(iterations):
        corrections, array_info = _fit_corrections(frames, r, sig_r, center, centers,
                                                   clip_sigma)
        rms = _fit_frames(frames, corrections, r, sig_r, center, min_matches=min_matches,
                          clip_sigma=clip_sigma)
        radius = min(match_radius, max(5.0 * rms, floor))
        for fr in frames:  # match again, within a radius that follows the residuals
            fr.pairs = _match(r, _apply(fr.m, _plane(fr, corrections, center)), radius)
        state = tuple((tuple(fr.pairs[0]), tuple(fr.pairs[1])) for fr in frames)
        if state == previous:
            break
        previous = state
    for a, rel in _relative_departures(corrections, centers).items():
        array_info[a]["relative"] = rel
    return _result(frames, corrections, r, ref, center, skipped, array_info,
                   min_matches=min_matches)


def _result(frames: Sequence[_Frame], corrections: Sequence, r: np.ndarray, ref: Table,
            center: Sequence[float], skipped: list, array_info: dict, *,
            min_matches: int) -> AstrometricSolution:
    used, transforms, frame_info, all_res, stars = [], [], {}, [], set()
    rows = np.asarray(ref["row"]) if "row" in ref.colnames else np.arange(len(ref))
    for fr in frames:
        i, j = fr.pairs
        if len(i) < min_matches:
            skipped.append((fr.geom.name, f"too few sources matched to the reference catalogue "
                                          f"({len(i)}, need {min_matches})"))
            continue
        res = np.hypot(*(_apply(fr.m, _plane(fr, corrections, center))[i] - r[j]).T)
        all_res.append(res)
        stars.update(rows[j].tolist())
        used.append((fr.key, fr.geom.with_corrections(corrections)))
        transforms.append(fr.m)
        frame_info[fr.geom.name] = {"n_match": int(len(i)),
                                    "rms": float(np.sqrt(np.mean(res ** 2)))}
    res = np.concatenate(all_res) if all_res else np.zeros(0)
    info = {"n_stars": len(stars), "n_matches": int(res.size),
            "rms": float(np.sqrt(np.mean(res ** 2))) if res.size else float("nan"),
            "arrays": array_info, "frames": frame_info}
    return AstrometricSolution(used, transforms, tuple(corrections), skipped, info)
