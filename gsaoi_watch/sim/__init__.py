"""Simulated GSAOI nights: realistic raw frames plus a truth file of everything planted.

``simulate_night(outdir)`` writes the DRAGONS tutorial night (15 lamp-on and 15 lamp-off
Kshort dome flats, 4 ROI standard-star frames, 16 NGC 5128 science frames of which 7 are
offset skies), a static bad-pixel mask, ``truth.json`` and ``truth/flat.npz``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits

from gsaoi_watch.instrument.tables import ARRAYS
from gsaoi_watch.sim.detector import T_READ, make_detector
from gsaoi_watch.sim.headers import roi_origin
from gsaoi_watch.sim.plan import FramePlan, Night, plan_night
from gsaoi_watch.sim.render import make_catalogue, render_frame

__all__ = ["BPM_NAME", "KINDS", "FramePlan", "Night", "plan_night", "simulate_night",
           "truth_plane", "write_frame"]

log = logging.getLogger(__name__)

BPM_NAME = "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"


KINDS = {"flats": ("flat_on", "flat_off"), "standard": ("standard",),
         "science": ("science",), "bpm": ()}


def _atomic_write(hdul, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
    os.replace(tmp, path)


def write_frame(plan, outdir, night_seed, size, params):
    """Render one frame, write it atomically into ``outdir`` and return its truth entry."""
    t0 = time.perf_counter()
    hdul, truth = render_frame(plan, night_seed, size, params)
    _atomic_write(hdul, Path(outdir) / plan.filename)
    entry = plan.to_dict()
    entry.update(truth)
    entry["render_seconds"] = round(time.perf_counter() - t0, 3)
    return entry


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


def _truth(night, det, frames, size):
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
                        "* flat",
            "star_flux": "e-/s after flat fielding: 10**(0.4*(ZP_array - mag - "
                         "k*(airmass-1))) with DRAGONS' nominal Kshort zero points",
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
    }


def simulate_night(outdir, *, seed=20170505, size=2048, workers=None, only=None):
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

    Returns
    -------
    dict
        The truth, also written to ``outdir/truth.json``.
    """
    if size < 64 or size > 2048 or size % 16:
        raise ValueError(f"size must be a multiple of 16 between 64 and 2048, not {size}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    night = plan_night(seed, size)
    wanted = set(only) if only else set(KINDS)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown frame group(s) {sorted(unknown)}; choose from {sorted(KINDS)}")
    kinds = {k for group in wanted for k in KINDS[group]}
    plans = [p for p in night.frames if p.kind in kinds]
    det = make_detector(seed, size)
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(plans))) as pool:
            futures = [pool.submit(write_frame, p, outdir, seed, size, night.params)
                       for p in plans]
            frames = [f.result() for f in futures]
    else:
        frames = [write_frame(p, outdir, seed, size, night.params) for p in plans]
    if "bpm" in wanted:
        _write_bpm(det, outdir, size)
    _write_flat_truth(det, outdir)
    truth = _truth(night, det, frames, size)
    truth["elapsed_seconds"] = round(time.perf_counter() - t0, 2)
    tmp = outdir / ".truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=1))
    os.replace(tmp, outdir / "truth.json")
    log.info("simulated %d frames (size %d) in %s in %.1f s", len(frames), size, outdir,
             truth["elapsed_seconds"])
    return truth

