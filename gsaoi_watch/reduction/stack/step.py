"""The stack step (disco_stu): align frames, resample them north up and combine them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from gsaoi_watch.data.headers import new_header
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.tables import FULL_SIZE
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.detect import detect_array
from gsaoi_watch.reduction.source import Mapper
from gsaoi_watch.reduction.stack.align import align_catalogs, align_frames, frame_catalog
from gsaoi_watch.reduction.stack.astrometry import reference_on_plane, solve_astrometry
from gsaoi_watch.reduction.stack.geometry import (
    FrameGeometry,
    apply_affine,
    frame_geometry,
    mosaic_pixel_area,
)
from gsaoi_watch.reduction.stack.grid import PIXEL_SCALE, OutputGrid, output_grid
from gsaoi_watch.reduction.stack.resample import combine_strip, prepare_frame

__all__ = ["Mapper", "stack_frames"]

log = logging.getLogger(__name__)

#: A frame, or a zero-argument callable that loads it.
FrameOrLoader = Frame | Callable[[], Frame]


def _skip_text(skipped: Sequence[tuple[str, str]]) -> str:
    return "; ".join(f"{n}: {r}" for n, r in skipped)


def _catalogues(loaders: Sequence[Callable[[], Frame]], geometries: Sequence | None,
                catalogs: Sequence | None, center: Sequence[float] | None, detect: bool,
                skipped: list) -> tuple[list, tuple[float, float]]:
    """First pass: every frame's geometry and sources on the stack plane.

    Frames are loaded only when their geometry or catalogues are not given.  Returns the
    list of (index, FrameGeometry, catalogue Table) and the stack centre (the first usable
    frame's target unless given).
    """
    cat_list = []
    for k, load in enumerate(loaders):
        geom = geometries[k] if geometries is not None else None
        cats = catalogs[k] if catalogs is not None else None
        if geom is None or cats is None:
            frame = load()
            try:
                geom = geom or frame_geometry(frame)
            except ReductionError as exc:
                skipped.append((frame.filename, str(exc)))
                log.warning("stack: %s left out: %s", frame.filename, exc)
                continue
            if cats is None:
                cats = frame.meta.get("catalogs")
                if cats is None and detect:
                    cats = [detect_array(a)[1] for a in frame.arrays]
            del frame
        if center is None:
            center = (geom.target_ra, geom.target_dec)
        cat_list.append((k, geom, frame_catalog(cats or [], geom, center)))
    if not cat_list or center is None:
        raise ReductionError(f"stack: no usable frames ({_skip_text(skipped)})")
    return cat_list, (float(center[0]), float(center[1]))


def _solve(cat_list: list, reference_catalog: Any, center: tuple[float, float], *,
           min_matches: int, search_radius: float, match_radius: float, bin_size: float
           ) -> tuple[list, list, dict, list, str | None, dict]:
    """Align the frames: on the reference catalogue if there is one, else on each other.

    Returns ``used``, ``transforms``, ``align`` (per frame), ``skipped``, the reference's
    name and ``astrometry`` (the kind of astrometry and, when absolute, the solution).
    """
    relative = {"kind": "relative", "catalog": None,
                "note": "relative: frames aligned on each other; the absolute frame is only "
                        "the telescope pointing's"}
    if reference_catalog is None:
        return (*align_frames(cat_list, None, None, min_matches=min_matches,
                              search_radius=search_radius, match_radius=match_radius,
                              bin_size=bin_size), relative)
    name = str(getattr(reference_catalog, "meta", {}).get("name") or "reference catalogue")
    epochs = [g.epoch for _, g, _ in cat_list if g.epoch is not None]
    epoch = float(np.mean(epochs)) if epochs else None
    t0 = time.perf_counter()
    ref = reference_on_plane(reference_catalog, center, epoch)
    sol = solve_astrometry(cat_list, ref, center, min_matches=min_matches,
                           search_radius=search_radius)
    if not sol.used:
        why = "; ".join(f"{n}: {r}" for n, r in sol.skipped) or "no sources"
        log.warning("stack: reference catalogue %s matched no frame (%s); aligning the frames "
                    "on each other", name, why)
        relative["note"] = f"relative: the reference catalogue {name} matched no frame"
        return (*align_frames(cat_list, None, None, min_matches=min_matches,
                              search_radius=search_radius, match_radius=match_radius,
                              bin_size=bin_size), relative)
    used, transforms = list(sol.used), list(sol.transforms)
    align = {g.name: {**sol.info["frames"][g.name], "reference": name} for _, g in used}
    skipped = []
    solved = {k for k, _ in used}
    corrections = sol.corrections
    # frames the catalogue could not solve: aligned on the first solved frame's sources
    k0, g0 = used[0]
    cat0 = next(c for k, _, c in cat_list if k == k0)
    first = frame_catalog_on(cat0, g0, transforms[0], center)
    for k, geom, cat in cat_list:
        if k in solved:
            continue
        geom = geom.with_corrections(corrections)
        moved = frame_catalog_on(cat, geom, None, center)
        m, info = align_catalogs(moved, first, search_radius=search_radius,
                                 match_radius=match_radius, bin_size=bin_size,
                                 min_matches=min_matches)
        why = dict(sol.skipped).get(geom.name, "not matched to the catalogue")
        if m is None:
            skipped.append((geom.name, f"{why}, nor to {g0.name} "
                                       f"({info['n_match']}, need {min_matches})"))
            log.warning("stack: %s left out: %s", *skipped[-1])
            continue
        log.info("stack: %s aligned to %s (%s) with %d sources, rms %.3f\"", geom.name,
                 g0.name, why, info["n_match"], info["rms"])
        used.append((k, geom))
        transforms.append(m)
        align[geom.name] = {**info, "reference": g0.name}
    order = {k: n for n, (k, _, _) in enumerate(cat_list)}
    ranked = sorted(zip(used, transforms), key=lambda p: order[p[0][0]])
    used, transforms = [u for u, _ in ranked], [m for _, m in ranked]
    info = sol.info
    log.info("stack: absolute astrometry on %s: %d stars, %d matches, rms %.4f\" "
             "(epoch %s)", name, info["n_stars"], info["n_matches"], info["rms"],
             "unknown" if epoch is None else f"{epoch:.3f}")
    astrometry = {"kind": "absolute", "catalog": name, "epoch": epoch,
                  "n_stars": info["n_stars"], "n_matches": info["n_matches"],
                  "rms": info["rms"], "arrays": info["arrays"],
                  "frames_solved": len(sol.used),
                  "seconds": round(time.perf_counter() - t0, 2),
                  "note": f"absolute: solved on {name}"}
    return used, transforms, align, skipped, name, astrometry


def frame_catalog_on(cat: Table, geom: FrameGeometry, transform: np.ndarray | None,
                     center: Sequence[float]) -> Table:
    """A frame's sources on the stack plane through ``geom`` (and ``transform``)."""
    out = cat.copy(copy_data=True)
    east, north = np.zeros(len(cat)), np.zeros(len(cat))
    arr = np.asarray(cat["array"], int)
    for a in range(4):
        sel = arr == a
        if sel.any():
            east[sel], north[sel] = geom.to_plane(a, np.asarray(cat["x"], float)[sel],
                                                  np.asarray(cat["y"], float)[sel], center)
    if transform is not None and len(cat):
        p = apply_affine(transform, np.column_stack([east, north]))
        east, north = p[:, 0], p[:, 1]
    out["east"], out["north"] = east, north
    return out


def _resample_and_combine(jobs: Sequence[tuple[Callable[[], Frame], FrameGeometry, np.ndarray]],
                          grid: OutputGrid, *, t_ref: float, flux_mode: str, area_ref: float,
                          sigma: float, maxiters: int, strip_rows: int, mapper: Mapper
                          ) -> tuple[np.ndarray, ...]:
    """Prepare every frame, then resample and combine the output one strip at a time."""
    def prepare(job: tuple) -> Any:
        load, geom, m = job
        return prepare_frame(load(), geom, m, grid, t_ref=t_ref, flux_mode=flux_mode,
                             area_ref=area_ref)

    prepared = list(mapper(prepare, jobs))
    ny, nx = grid.shape
    out_sci = np.zeros((ny, nx), np.float32)
    out_var = np.zeros((ny, nx), np.float32)
    out_dq = np.zeros((ny, nx), np.uint16)
    ncomb = np.zeros((ny, nx), np.uint8)
    strips = [(r, min(r + strip_rows, ny + 1)) for r in range(1, ny + 1, strip_rows)]

    def strip(bounds: tuple[int, int]) -> Any:
        return bounds[0], combine_strip(prepared, bounds[0], bounds[1], nx, sigma, maxiters)

    for row0, (sci, var, dq, n) in mapper(strip, strips):
        rows = slice(row0 - 1, row0 - 1 + sci.shape[0])
        out_sci[rows], out_var[rows], out_dq[rows], ncomb[rows] = sci, var, dq, n
    return out_sci, out_var, out_dq, ncomb


def stack_frames(frames: Iterable[FrameOrLoader], *, reference_catalog: Any = None,
                 pixel_scale: float | None = None, center: Sequence[float] | None = None,
                 flux_mode: str = "surface", sigma: float = 3.0, maxiters: int = 3,
                 min_matches: int = 6, search_radius: float = 3.0,
                 match_radius: float | None = None, strip_rows: int = 256,
                 geometries: Sequence[FrameGeometry] | None = None,
                 catalogs: Sequence | None = None, detect: bool = True,
                 mapper: Mapper | None = None) -> Frame:
    """Correct the distortion of sky-subtracted frames, align them and stack them north up.

    Parameters
    ----------
    frames : sequence of Frame or callable
        ``_skyCorrected`` frames (4 arrays, electrons, SCI/VAR/DQ), with their source
        catalogues in ``meta['catalogs']`` (detected here if absent).  An item may also be
        a zero-argument callable returning the Frame (a loader), so that a caller can load
        frames one at a time and keep memory bounded.
    reference_catalog : Table, optional
        Reference sources (columns ``ra``, ``dec`` and optionally errors, proper motions
        and their epoch, as :func:`gsaoi_watch.data.refcat.read_reference_catalog` gives
        them; its name in ``meta['name']``).  Given, the frames and every array's
        departure from the static distortion model are solved on it
        (:func:`~gsaoi_watch.reduction.stack.astrometry.solve_astrometry`: absolute
        astrometry; frames it cannot solve are aligned on the first solved one); else
        frames are aligned to the first frame that has enough sources, and the stack is
        put on the mean geometry of the aligned frames (so that no single frame's
        pointing, rotation or scale error is inherited whole): relative astrometry.
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
    mapper : callable, optional
        How the independent pieces of work run (loading and preparing each frame, then
        resampling and combining each strip): a function with the signature of the
        builtin ``map`` (the default, everything here, one after the other), such as
        :func:`gsaoi_watch.pipeline.pools.fork_mapper`.  The result does not depend on it.

    Returns
    -------
    Frame
        One array: ``sci`` (electrons in the reference exposure time, i.e. the first used
        frame's), ``var``, ``dq`` (no_data where no input falls); the header holds the TAN
        WCS.  ``meta`` holds ``used``, ``skipped`` [(file, reason)], ``transforms``,
        ``align`` (per-frame match count and rms), ``grid`` (OutputGrid), ``ncombine``
        (per-pixel number of combined inputs, uint8) and ``astrometry`` (``kind``
        'absolute' or 'relative', ``note``; when absolute ``catalog``, ``epoch``,
        ``n_stars``, ``n_matches``, ``rms`` (arcsec) and ``arrays``, the per-array
        corrections).

    Raises
    ------
    ReductionError
        If no frame can be aligned.
    """
    if flux_mode not in ("surface", "jacobian"):
        raise ValueError(f"flux_mode must be 'surface' or 'jacobian', not {flux_mode!r}")
    loaders = [f if callable(f) else (lambda f=f: f) for f in frames]
    skipped: list[tuple[str, str]] = []
    cat_list, center = _catalogues(loaders, geometries, catalogs, center, detect, skipped)
    size = cat_list[0][1].size
    scale = pixel_scale or PIXEL_SCALE * FULL_SIZE / size
    used, transforms, align, left_out, ref_name, astrometry = _solve(
        cat_list, reference_catalog, center, min_matches=min_matches,
        search_radius=search_radius, match_radius=match_radius or max(5 * scale, 0.1),
        bin_size=2.0 * scale)
    skipped += left_out
    if not used:
        raise ReductionError(f"stack: no frame could be aligned ({_skip_text(skipped)})")
    grid = output_grid([g for _, g in used], transforms, center, scale)
    t_ref = used[0][1].exptime
    out_sci, out_var, out_dq, ncomb = _resample_and_combine(
        [(loaders[k], geom, m) for (k, geom), m in zip(used, transforms)], grid,
        t_ref=t_ref, flux_mode=flux_mode, area_ref=mosaic_pixel_area(size), sigma=sigma,
        maxiters=maxiters, strip_rows=strip_rows, mapper=mapper or map)
    header = grid.header()
    header["BUNIT"] = ("electrons", "Electrons in EXPTIME seconds")
    header["EXPTIME"] = (t_ref, "Reference exposure time of the stack (s)")
    meta = {"used": [g.name for _, g in used], "skipped": skipped, "grid": grid,
            "align": align,
            "transforms": {g.name: m.tolist() for (_, g), m in zip(used, transforms)},
            "ncombine": ncomb, "reference": ref_name, "flux_mode": flux_mode,
            "astrometry": astrometry}
    return Frame(phu=new_header(), arrays=(Array(out_sci, out_var, out_dq, header),),
                 filename="disco_stack.fits", orig_filename="disco_stack.fits", meta=meta)
