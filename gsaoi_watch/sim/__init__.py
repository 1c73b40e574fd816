"""Simulated GSAOI nights: realistic raw frames plus a truth file of everything planted.

``simulate_night(outdir)`` writes the DRAGONS tutorial night (15 lamp-on and 15 lamp-off
Kshort dome flats, 4 ROI standard-star frames, 16 NGC 5128 science frames of which 7 are
offset skies), a static bad-pixel mask, ``truth.json``, ``truth/flat.npz`` and
``truth/persistence.npz``; optionally with the arrays displaced from the static distortion
model (:class:`GeometryPerturbation`) and a Gaia-like reference catalogue of the science
field (:mod:`gsaoi_watch.sim.refcat`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits

from gsaoi_watch.instrument.tables import ARRAYS
from gsaoi_watch.sim.conditions import Conditions, Delivered
from gsaoi_watch.sim.detector import T_READ, make_detector
from gsaoi_watch.sim.geometry import GeometryPerturbation
from gsaoi_watch.sim.headers import roi_origin
from gsaoi_watch.sim.persistence import (
    LATENCY_WINDOW,
    PERSIST_RATE,
    PERSIST_TAU,
    add_persistence,
    latent_pixels,
    persistence_charge,
)
from gsaoi_watch.sim.plan import FramePlan, Night, plan_night
from gsaoi_watch.sim.refcat import (
    FORMATS,
    GAIA_REF_EPOCH,
    night_epoch,
    reference_catalogue,
    true_star_positions,
    write_reference_catalogue,
)
from gsaoi_watch.sim.render import make_catalogue, render_frame

__all__ = ["BPM_NAME", "KINDS", "Conditions", "Delivered", "FramePlan", "GeometryPerturbation",
           "Night", "night_epoch", "plan_night", "reference_catalogue", "simulate_night",
           "true_star_positions", "truth_persistence", "truth_plane", "write_frame",
           "write_reference_catalogue"]

log = logging.getLogger(__name__)

BPM_NAME = "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"


KINDS = {"flats": ("flat_on", "flat_off"), "standard": ("standard",),
         "science": ("science",), "bpm": ()}


def _atomic_write(hdul, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
    os.replace(tmp, path)


def _render(plan, outdir, night_seed, size, params, geometry=None):
    t0 = time.perf_counter()
    hdul, truth, latent = render_frame(plan, night_seed, size, params, geometry=geometry)
    _atomic_write(hdul, Path(outdir) / plan.filename)
    entry = plan.to_dict()
    entry.update(truth)
    entry["render_seconds"] = round(time.perf_counter() - t0, 3)
    return entry, latent


def write_frame(plan, outdir, night_seed, size, params, *, geometry=None):
    """Render one frame, write it atomically into ``outdir`` and return its truth entry.

    The frame carries no persistence from earlier frames (simulate_night adds it);
    ``geometry`` is the arrays' departure from the static model (default none).
    """
    return _render(plan, outdir, night_seed, size, params, geometry)[0]


def _stem(filename):
    return filename[:-5] if filename.endswith(".fits") else filename


def _read_window(entry, size):
    """(x0, y0, n): the array region a frame really read (ROI row shift included)."""
    if not entry["roi"]:
        return [(0, 0, size)] * 4
    x0, y0 = roi_origin(size)
    return [(x0, y0 + a["roi_row_shift"], size // 2) for a in entry["arrays"]]


def _plant_persistence(entries, latents, outdir, size):
    """Second, sequential pass: add earlier frames' persistence to each frame, in time order.

    Frames are rendered in parallel without it; here each frame whose UT start is less than
    LATENCY_WINDOW after an earlier frame's gets that frame's latent pixels' persistence
    (gsaoi_watch.sim.persistence), in physical array pixels (ROI frames map through the
    rows they really read).  The frame is rewritten and its own latent pixels recomputed
    from the new ADU, so a pixel the persistence pushes over the non-linear level is latent
    for the frames after it.  Returns the truth/persistence.npz planes.
    """
    outdir = Path(outdir)
    order = sorted(range(len(entries)), key=lambda i: entries[i]["ut_start"])
    start = {i: dt.datetime.fromisoformat(entries[i]["ut_start"]) for i in order}
    planes: dict[str, np.ndarray] = {}
    physical: dict[int, list] = {}  # frame -> per array (physical flat indices, fill)
    done: list[int] = []
    for i in order:
        e = entries[i]
        exposure = e["exptime"] * e["coadds"]
        windows = _read_window(e, size)
        window = [j for j in done
                  if 0 < (start[i] - start[j]).total_seconds() < LATENCY_WINDOW]
        hits = {}  # (source, array) -> (local flat indices, expected electrons)
        for j in window:
            t1 = (start[i] - start[j]).total_seconds() - entries[j]["exptime"] * \
                entries[j]["coadds"]
            for a, (x0, y0, n) in enumerate(windows):
                pidx, fill = physical[j][a]
                py, px = np.divmod(pidx, size)
                inside = (px >= x0) & (px < x0 + n) & (py >= y0) & (py < y0 + n)
                if inside.any():
                    hits[(j, a)] = ((py[inside] - y0) * n + (px[inside] - x0),
                                    persistence_charge(fill[inside], t1, t1 + exposure))
        sources = [j for j in window if any((j, a) in hits for a in range(4))]
        if len(sources) > 32:
            raise RuntimeError(f"{e['filename']}: more than 32 frames leave persistence")
        per_array: list[tuple | None] = []
        for a in range(len(windows)):
            parts = [(k, hits[(j, a)]) for k, j in enumerate(sources) if (j, a) in hits]
            if not parts:
                per_array.append(None)
                continue
            idx, inverse = np.unique(np.concatenate([p[1][0] for p in parts]),
                                     return_inverse=True)
            charge = np.bincount(inverse, weights=np.concatenate([p[1][1] for p in parts]),
                                 minlength=len(idx))
            origin = np.zeros(len(idx), dtype=np.uint32)
            np.bitwise_or.at(origin, inverse, np.concatenate(
                [np.full(len(p[1][0]), 1 << p[0], dtype=np.uint32) for p in parts]))
            per_array.append((idx.astype(np.int32), charge, origin))
        lat = latents[i]
        if any(p is not None for p in per_array):
            rng = np.random.default_rng([e["seed"], 9])
            path = outdir / e["filename"]
            with fits.open(path) as hdul:
                hdul = fits.HDUList([h.copy() for h in hdul])
            for a, planted in enumerate(per_array):
                if planted is None:
                    continue
                spec = ARRAYS[a]
                idx, charge, origin = planted
                adu = np.array(hdul[a + 1].data, dtype=np.float32)
                shape = adu.shape
                saturated = np.zeros(adu.size, dtype=bool)
                saturated[lat[a]["saturated"]] = True
                adu, n_full = add_persistence(adu, idx, charge, saturated.reshape(shape),
                                              spec=spec, lnrs=e["lnrs"], rng=rng)
                hdul[a + 1].data = adu
                e["arrays"][a]["n_saturated"] += n_full
                # this frame's latent pixels from the new ADU; the fill of a pixel that
                # became latent only now is its ADU over the well (raw charge / well)
                new = np.flatnonzero(latent_pixels(adu, spec.non_linear_level))
                old = lat[a]["latent"]
                pos = np.minimum(np.searchsorted(old, new), max(len(old) - 1, 0))
                known = (old[pos] == new) if len(old) else np.zeros(len(new), dtype=bool)
                fill = np.clip(adu.reshape(-1)[new] / np.float32(spec.well), 0.0, 1.0)
                fill[known] = lat[a]["fill"][pos[known]]
                lat[a] = {**lat[a], "latent": new.astype(np.int32),
                          "fill": fill.astype(np.float32)}
                stem = _stem(e["filename"])
                planes[f"{stem}_persist{a + 1}"] = idx
                planes[f"{stem}_charge{a + 1}"] = charge.astype(np.float32)
                planes[f"{stem}_from{a + 1}"] = origin
            _atomic_write(hdul, path)
        stem = _stem(e["filename"])
        phys = []
        for a, (x0, y0, n) in enumerate(windows):
            ly, lx = np.divmod(lat[a]["latent"].astype(np.int64), n)
            phys.append(((ly + y0) * size + lx + x0, lat[a]["fill"]))
            if len(lat[a]["latent"]):
                planes[f"{stem}_latent{a + 1}"] = lat[a]["latent"]
        physical[i] = phys
        e["persistence"] = {
            "sources": [entries[j]["filename"] for j in sources],
            "window": [entries[j]["filename"] for j in window],
            "n_pixels": [0 if p is None else len(p[0]) for p in per_array],
            "max_charge_e": round(max([float(p[1].max()) for p in per_array if p is not None],
                                      default=0.0), 2),
            "n_latent": [len(x["latent"]) for x in lat],
        }
        done.append(i)
    return planes


def _write_persistence_truth(planes, outdir):
    tdir = Path(outdir) / "truth"
    tdir.mkdir(exist_ok=True)
    tmp = tdir / ".persistence.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **planes)
    os.replace(tmp, tdir / "persistence.npz")


def truth_persistence(outdir, filename, ext):
    """The planted persistence of one frame's extension ``ext`` (1-4).

    Returns
    -------
    dict of ndarray
        Flat indices into the extension's data as written (``y * nx + x``, 0-based; ROI
        frames: the ROI array): ``latent`` (this frame's pixels that leave persistence:
        what addDQ flags saturated or non-linear), ``persist`` (pixels given persistence
        by earlier frames), ``charge`` (its expected electrons per ``persist`` pixel) and
        ``from`` (per ``persist`` pixel, a bit mask: bit k = the k-th name of the frame's
        truth entry ``persistence['sources']``, the earlier frames that left pixels in it;
        ``persistence['window']`` lists every earlier frame less than 900 s before).
    """
    stem = _stem(Path(filename).name)
    empty = {"latent": np.int32, "persist": np.int32, "charge": np.float32, "from": np.uint32}
    with np.load(Path(outdir) / "truth" / "persistence.npz") as planes:
        return {k: planes[f"{stem}_{k}{ext}"] if f"{stem}_{k}{ext}" in planes
                else np.zeros(0, dtype=t) for k, t in empty.items()}


def _write_bpm(det, outdir, size):
    phu = fits.Header()
    for key, value in (("INSTRUME", "GSAOI"), ("OBSTYPE", "BPM"), ("OBJECT", "BPM"),
                       ("OBSERVAT", "Gemini-South"), ("TELESCOP", "Gemini-South"),
                       ("DETECTOR", "GSAOI"), ("DATE-OBS", "2012-11-04"), ("UT", "00:00:00"),
                       ("BPMASK", BPM_NAME), ("OBSCLASS", "dayCal"),
                       ("GEMPRGID", "GS-CAL20121104"), ("DETSIZE", f"[1:{2 * size},1:{2 * size}]")):
        phu[key] = value
    hdus = [fits.PrimaryHDU(header=phu)]
    for spec in ARRAYS:
        ox, oy = spec.detsec_origin(size)
        h = fits.Header()
        h["EXTNAME"], h["EXTVER"] = "DQ", spec.index + 1
        h["ARRAYID"] = spec.array_id
        h["CCDSIZE"] = f"[1:{size},1:{size}]"
        h["CCDSEC"] = f"[1:{size},1:{size}]"
        h["DATASEC"] = f"[1:{size},1:{size}]"
        h["DETSEC"] = f"[{ox + 1}:{ox + size},{oy + 1}:{oy + size}]"
        hdus.append(fits.ImageHDU(data=det.bpm[spec.index], header=h))
    _atomic_write(fits.HDUList(hdus), Path(outdir) / BPM_NAME)


def _write_flat_truth(det, outdir):
    """Planted flat and response as ``truth/flat.npz`` (not FITS: raw-data tools skip it)."""
    tdir = Path(outdir) / "truth"
    tdir.mkdir(exist_ok=True)
    planes = {}
    for spec in ARRAYS:
        planes[f"flat{spec.index + 1}"] = det.flat[spec.index]
        planes[f"response{spec.index + 1}"] = det.response[spec.index]
    tmp = tdir / ".flat.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **planes)
    os.replace(tmp, tdir / "flat.npz")


def truth_plane(outdir, name, ext):
    """Read a planted plane: ``name`` 'FLAT' or 'RESPONSE', ``ext`` 1-4 (extension number)."""
    with np.load(Path(outdir) / "truth" / "flat.npz") as planes:
        return planes[f"{name.lower()}{ext}"]


def _truth(night, det, frames, size, geometry):
    cat = make_catalogue(night.seed, size)
    x0, y0 = roi_origin(size)
    return {
        "version": 1,
        "seed": night.seed,
        "size": size,
        "params": night.params,
        "conventions": {
            "pixels": "x, y are 1-based pixel coordinates in the frame as written "
                      "(ROI frames: relative to the ROI); bad pixels are 0-based array "
                      "indices (array, x, y) on the full array",
            "flat": "truth/flat.npz flat1..flat4 (per extension): what an ideal lamp-on "
                    "minus lamp-off flat measures (QE x vignetting x relative pixel area), "
                    "median 1 over good pixels of all arrays; response1..4: the same without "
                    "the pixel area (point-source response); gsaoi_watch.sim.truth_plane "
                    "reads them",
            "sky_rate": "e-/s per pixel at flat = 1; the sky in a frame is sky_rate * exptime "
                        "* flat; sky_rate is the sky model (params sky_model, "
                        "gsaoi_watch.sim.plan.SkyModel) at mid-exposure (extra.sky_mid_s, "
                        "seconds from sky_model.epoch; extra.sky_variation its relative "
                        "variation there) times the sequence's level and drift, times "
                        "conditions.sky_factor",
            "star_flux": "e-/s after flat fielding: 10**(0.4*(ZP_array - mag - "
                         "k*(airmass-1) - conditions.extinction)) with DRAGONS' nominal "
                         "Kshort zero points (the galaxy is dimmed by the same cloud)",
            "conditions": "per on-sky frame, truth entry 'conditions': requested "
                          "{iq, cc, bg, wv} percentiles (100 = Any; headers REQIQ... "
                          "'70-percentile' / 'Any'; flats request Any), the delivered "
                          "iq_factor (guided frames' fwhm_px = nominal x iq_factor), "
                          "extinction (grey cloud, mag) and transmission "
                          "10**(-0.4*extinction) on stars and galaxy (not on the sky), "
                          "sky_factor and sky_rate (e-/s/pixel, sky_factor included), "
                          "fwhm_px, fwhm_arcsec (frame pixel scale), fwhm_arcsec_physical "
                          "and sky_mag_arcsec2 (0.0197\"/pixel, what the AO PSF and the sky "
                          "per pixel are at every size, with the mean nominal Kshort zero "
                          "point; the unguided skies' seeing PSF: the frame's scale), "
                          "seeing_arcsec (7 x FWHM x airmass**-0.6; unguided frames: the AO "
                          "FWHM nominal x iq_factor), strehl (Moffat peak over the perfect "
                          "8.1 m / 1.2 m PSF's at 2.15 um, continuous, physical scale), "
                          "raw {iq, cc, bg, wv}: the delivered bands by DRAGONS' "
                          "qa_constraints, written as RAWIQ..., pi_requirements_met "
                          "(RAWPIREQ); degradations are per sequence, piecewise linear in "
                          "frame number (params.conditions)",
            "noise": "Poisson (Gaussian approximation, all levels >~1000 e-), then the "
                     "inverse DRAGONS non-linearity, read noise in ADU, saturation at the "
                     "well (plateau) or hidden saturation for pixels filling half the well "
                     "within the first Fowler group",
            "roi_origin": [x0, y0],
            "roi_row_shift": "central-ROI frames (the standard) really come from rows "
                             "roi_origin[1] + roi_row_shift of the array (+1 for arrays 0-1, "
                             "-1 for 2-3), while CCDSEC/DETSEC say roi_origin: the instrument's "
                             "row bug that DRAGONS' prepare fixes",
            "t_read": T_READ,
            "persistence": "pixels an earlier frame (UT start < latency_window_s before) "
                           "left latent (what addDQ flags saturated | non-linear there) get "
                           "persist_rate_e_s * fill * exp(-t / persist_tau_s) e-/s, t from "
                           "the end of that exposure, fill = its raw charge / well <= 1; "
                           "per frame: truth entry 'persistence', planes in "
                           "truth/persistence.npz (gsaoi_watch.sim.truth_persistence)",
            "persist_rate_e_s": PERSIST_RATE,
            "persist_tau_s": PERSIST_TAU,
            "latency_window_s": LATENCY_WINDOW,
            "geometry": "entry 'geometry' (gsaoi_watch.sim.GeometryPerturbation.from_dict): "
                        "per array (index 0-3) dx, dy (full-size pixels), rotation (deg), "
                        "scale; real pixel p sees the static-model pixel p' = c + (1 + "
                        "scale) R(rotation) (p - c) + (dx, dy), c the array centre, R "
                        "counter-clockwise (+x to +y), in full-size pixel coordinates; the "
                        "frames' star x, y are real pixels, the headers' WCS is the static "
                        "model's; all zero: no departure",
            "refcat": "entry 'refcat' (only with a reference catalogue): its path (as "
                      "given, relative to the night's directory unless absolute), field (0 "
                      "science), ref_epoch (2016.0), night_epoch (decimal year of the first "
                      "science frame's start: the catalogue's ra, dec above are positions "
                      "then), n_sources and n_without_pm; the truth behind it: "
                      "gsaoi_watch.sim.refcat.true_star_positions",
        },
        "bad_pixels": {
            "bpm_file": BPM_NAME,
            "dead": [list(d) for d in det.dead],
            "hot": [list(h) for h in det.hot],
            "border_pixels": max(int(round(4 * size / 2048)), 1),
        },
        "catalogue": {k: np.round(v, 8).tolist() if v.dtype.kind == "f" else v.tolist()
                      for k, v in cat.items()},
        "frames": sorted(frames, key=lambda f: f["ut_start"]),
        "geometry": (geometry or GeometryPerturbation()).to_dict(),
    }


def simulate_night(outdir, *, seed=20170505, size=2048, workers=None, only=None,
                   conditions=None, geometry=None, refcat=None, max_frames=None, date=None):
    """Write a simulated GSAOI night into ``outdir``.

    Parameters
    ----------
    outdir : str or os.PathLike
        Directory for the raw frames (created if needed).
    seed : int
        Night seed: the same seed and size give the same files.
    size : int
        Array size in pixels; 2048 is real size, smaller sizes scale the detector down
        (pixel scale grows so the field of view stays ~85").
    workers : int, optional
        Processes used to render frames (default: the CPU count).
    only : iterable of str, optional
        Subset of ``flats``, ``standard``, ``science``, ``bpm``.
    conditions : Conditions, optional
        Requested bands and delivered degradations (default: the tutorial programme's
        request, met: the same files as a night without the option).
    geometry : GeometryPerturbation, optional
        The arrays' departure from the static distortion model (stars and galaxy land
        where the displaced arrays see them; the headers' WCS stays the static model's).
        Default: none, the same files as a night without the option.
    refcat : str or os.PathLike, optional
        Also write the Gaia-like reference catalogue of the science field
        (:func:`gsaoi_watch.sim.refcat.reference_catalogue`) to this file, relative to
        ``outdir`` unless absolute; the suffix picks the format (.fits, .csv, .vot, .xml).
    max_frames : int, optional
        Render only the first ``max_frames`` frames of the groups selected, in observing
        order (each as it would be in the whole night), for tests that need a few.
    date : datetime.date, optional
        The science UT date (default the tutorial's 2017-05-05): the whole night moves by
        whole days, with unique data labels (:func:`~gsaoi_watch.sim.plan.plan_night`).

    Returns
    -------
    dict
        The truth, also written to ``outdir/truth.json``.
    """
    if size < 64 or size > 2048 or size % 16:
        raise ValueError(f"size must be a multiple of 16 between 64 and 2048, not {size}")
    if geometry is not None and not isinstance(geometry, GeometryPerturbation):
        raise ValueError(f"geometry must be a GeometryPerturbation, not {type(geometry).__name__}")
    outdir = Path(outdir)
    refcat_path = None if refcat is None else outdir / refcat
    if refcat_path is not None and refcat_path.suffix.lower() not in FORMATS:
        raise ValueError(f"{refcat_path}: unknown catalogue format {refcat_path.suffix!r} "
                         f"(use {', '.join(FORMATS)})")
    outdir.mkdir(parents=True, exist_ok=True)
    night = plan_night(seed, size, conditions=conditions, date=date)
    wanted = set(only) if only else set(KINDS)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown frame group(s) {sorted(unknown)}; choose from {sorted(KINDS)}")
    kinds = {k for group in wanted for k in KINDS[group]}
    plans = [p for p in night.frames if p.kind in kinds]
    if max_frames is not None:
        plans = plans[:max(int(max_frames), 0)]
    det = make_detector(seed, size)
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(plans))) as pool:
            futures = [pool.submit(_render, p, outdir, seed, size, night.params, geometry)
                       for p in plans]
            rendered = [f.result() for f in futures]
    else:
        rendered = [_render(p, outdir, seed, size, night.params, geometry) for p in plans]
    frames = [r[0] for r in rendered]
    t1 = time.perf_counter()
    planes = _plant_persistence(frames, [r[1] for r in rendered], outdir, size)
    persistence_seconds = time.perf_counter() - t1
    if "bpm" in wanted:
        _write_bpm(det, outdir, size)
    _write_flat_truth(det, outdir)
    _write_persistence_truth(planes, outdir)
    truth = _truth(night, det, frames, size, geometry)
    if refcat_path is not None:
        table = reference_catalogue(seed, size, field=0)
        refcat_path.parent.mkdir(parents=True, exist_ok=True)
        write_reference_catalogue(refcat_path, table)
        truth["refcat"] = {"path": str(refcat), "field": 0, "ref_epoch": GAIA_REF_EPOCH,
                           "night_epoch": night_epoch(seed, size), "n_sources": len(table),
                           "n_without_pm": int(np.isnan(table["pmra"]).sum())}
    truth["elapsed_seconds"] = round(time.perf_counter() - t0, 2)
    truth["persistence_seconds"] = round(persistence_seconds, 2)
    tmp = outdir / ".truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=1))
    os.replace(tmp, outdir / "truth.json")
    log.info("simulated %d frames (size %d) in %s in %.1f s", len(frames), size, outdir,
             truth["elapsed_seconds"])
    return truth

