"""Alignment on the stack plane: source catalogues, matching and transform fitting."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from gsaoi_watch.reduction.stack.geometry import (
    FrameGeometry,
    compose,
    invert,
    mosaic_pixel_area,
)
from gsaoi_watch.reduction.stack.geometry import apply_affine as _apply

__all__ = ["align_catalogs", "align_frames", "frame_catalog"]

log = logging.getLogger(__name__)


def frame_catalog(cats: Sequence[Table | None], geom: FrameGeometry, center: Sequence[float],
                  *, max_sources: int = 500) -> Table:
    """Sources of a frame projected on the stack plane, brightest first.

    Parameters
    ----------
    cats : list of Table or None
        Per array, a detectSources catalogue (OBJCAT columns: 1-based ``X_IMAGE``,
        ``Y_IMAGE``, ``FLUX_AUTO``, optionally ``FWHM_IMAGE`` and ``FLUXERR_AUTO``).
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
    widths = np.concatenate([np.asarray(c["FWHM_IMAGE"], float) for c in cats
                             if c is not None and len(c) and "FWHM_IMAGE" in c.colnames]
                            or [np.zeros(0)])
    widths = widths[np.isfinite(widths) & (widths > 0)]
    max_fwhm = 3.0 * np.median(widths) if len(widths) else np.inf
    pixel = math.sqrt(mosaic_pixel_area(geom.size))
    for i, cat in enumerate(cats):
        if cat is None or len(cat) == 0:
            continue
        x = np.asarray(cat["X_IMAGE"], float)
        y = np.asarray(cat["Y_IMAGE"], float)
        flux = np.asarray(cat["FLUX_AUTO"], float)
        fwhm = (np.asarray(cat["FWHM_IMAGE"], float) if "FWHM_IMAGE" in cat.colnames
                else np.full(len(x), np.nan))
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
        ok &= ~(fwhm > max_fwhm)  # extended sources (galaxy knots, blends) align poorly
        if not ok.any():
            continue
        e, n = geom.to_plane(i, x[ok], y[ok], center)
        # centroid error ~ FWHM / (2.35 S/N), floored; 1" when the catalogue has no errors
        err = (np.asarray(cat["FLUXERR_AUTO"], float)[ok] if "FLUXERR_AUTO" in cat.colnames
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


def align_catalogs(src: Table, ref: Table, *, search_radius: float = 3.0,
                   match_radius: float = 0.5, bin_size: float = 0.05, min_matches: int = 6,
                   max_iter: int = 5, clip_sigma: float = 3.0
                   ) -> tuple[np.ndarray | None, dict]:
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
    info: dict[str, Any] = {"n_match": 0, "rms": float("nan"), "shift": None}
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



def _identity() -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def align_frames(cats: Sequence[tuple[int, FrameGeometry, Table]], ref: Table | None,
                 ref_name: str | None, *, min_matches: int, search_radius: float,
                 match_radius: float, bin_size: float
                 ) -> tuple[list, list, dict, list, str | None]:
    """Align every frame's catalogue to the reference (the first rich frame's without one).

    Parameters
    ----------
    cats : sequence of (key, FrameGeometry, Table)
        Per frame, a caller's key, its geometry and its :func:`frame_catalog`.
    ref : Table or None
        Reference sources on the stack plane (``east``, ``north``); None: the first frame
        with at least ``min_matches`` sources is the reference, and the transforms are
        then put on the mean geometry of the aligned frames (so that no single frame's
        pointing, rotation or scale error is inherited whole).
    ref_name : str or None
        The reference's name, for messages.

    Returns
    -------
    used : list of (key, FrameGeometry)
    transforms : list of ndarray (2, 3)
    align : dict
        Per used frame name, ``n_match``, ``rms``, ``shift`` (and ``to_stack`` when recentred).
    skipped : list of (name, reason)
    ref_name : str or None
    """
    recentre = ref is None
    used: list[tuple[int, FrameGeometry]] = []
    transforms: list[np.ndarray] = []
    align: dict[str, dict] = {}
    skipped: list[tuple[str, str]] = []
    for k, geom, cat in cats:
        if ref is None:
            if len(cat) < min_matches:
                skipped.append((geom.name, f"too few sources to serve as the alignment "
                                           f"reference ({len(cat)}, need {min_matches})"))
                log.warning("stack: %s left out: %s", *skipped[-1])
                continue
            ref, ref_name = cat, geom.name
            m = _identity()
            info: dict[str, Any] = {"n_match": len(cat), "rms": 0.0, "shift": [0.0, 0.0]}
        else:
            found, info = align_catalogs(cat, ref, search_radius=search_radius,
                                         match_radius=match_radius, bin_size=bin_size,
                                         min_matches=min_matches)
            if found is None:
                skipped.append((geom.name, f"too few sources matched to {ref_name} to align "
                                           f"({info['n_match']}, need {min_matches})"))
                log.warning("stack: %s left out: %s", *skipped[-1])
                continue
            m = found
        log.info("stack: %s aligned to %s with %d sources, rms %.3f\"", geom.name, ref_name,
                 info["n_match"], info["rms"])
        used.append((k, geom))
        transforms.append(m)
        align[geom.name] = info
    if recentre and len(transforms) > 1:
        # Every frame's telescope WCS is equally good: put the stack on the mean of the
        # frames' geometries rather than on the first frame's, whose pointing, rotation and
        # scale errors would otherwise be inherited whole.
        inv = invert(np.mean(transforms, axis=0))
        transforms = [compose(inv, m) for m in transforms]
        for (_, g), m in zip(used, transforms):
            align[g.name]["to_stack"] = m.tolist()
    return used, transforms, align, skipped, ref_name
