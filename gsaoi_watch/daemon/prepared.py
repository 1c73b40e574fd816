"""Frames prepared ahead: the per-frame steps done while a sequence is still being observed.

While a standard or science sequence is observed, the daemon runs the per-frame steps
(prepare, addDQ, nonlinearityCorrect, ADUToElectrons, addVAR and, when a flat is already
known, flatCorrect) on each frame as it lands, and keeps the result in a cache directory.
When the sequence completes, :func:`gsaoi_watch.reduction.recipes.reduce_images` takes the
cached frames instead of starting again from the raw files, so only the sky passes are left.

A cached frame is used only if it was made from the same raw file (size and modification
time), with the same static BPM, and with the same flat (or with no flat, in which case the
flat is applied then); anything else is recomputed from the raw frame.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

from astropy.io import fits

from gsaoi_watch.data.fitsio import load_bpm, load_frame, write_frame
from gsaoi_watch.data.names import safe_name
from gsaoi_watch.logs import log_name
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.flat import flat_correct
from gsaoi_watch.reduction.recipes import preprocess

__all__ = ["cache_path", "fetch", "prepare_ahead", "store"]

log = logging.getLogger(__name__)


def _raw_stamp(raw_path: str | os.PathLike[str]) -> str:
    st = os.stat(raw_path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_path(cache_dir: str | os.PathLike[str], raw_path: str | os.PathLike[str]) -> Path:
    """Where the prepared version of ``raw_path`` is kept (a safe name, as it is written)."""
    name = Path(raw_path).name
    stem = name[:-5] if name.endswith(".fits") else name
    return Path(cache_dir) / safe_name(f"{stem}_prepared.fits")


def store(frame: Frame, raw_path: str | os.PathLike[str],
          cache_dir: str | os.PathLike[str]) -> Path:
    """Write a prepared frame into the cache (atomically), stamped with its raw file."""
    out = frame.with_()
    out.phu["PREPRAW"] = (_raw_stamp(raw_path), "size:mtime_ns of the raw file prepared")
    out.phu["PREPNAME"] = (frame.filename, "Frame name when prepared")
    return write_frame(out, cache_dir, filename=cache_path(cache_dir, raw_path).name)


def fetch(raw_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str], *,
          flat: Frame | None = None, flat_name: str | None = None,
          bpm_name: str | None = None) -> Frame | None:
    """The cached prepared frame of ``raw_path``, flat-corrected with ``flat``, or None.

    Returns None (the caller prepares the raw frame) when there is no cached frame, or it
    was made from another version of the raw file, with another BPM or with another flat.
    """
    path = cache_path(cache_dir, raw_path)
    try:
        header = fits.getheader(path)
        if header.get("PREPRAW") != _raw_stamp(raw_path):
            return None
    except (OSError, ValueError):
        return None
    if header.get("BPMUSED") != bpm_name:
        return None
    cached_flat = header.get("FLATIM")
    if cached_flat is not None and cached_flat != (flat_name if flat is not None else None):
        return None
    try:
        frame = load_frame(path)
    except Exception as exc:  # noqa: BLE001 -- a damaged cache file is recomputed
        log.warning("prepared frame %s unreadable (%s): preparing the raw frame",
                    log_name(path.name), log_name(exc))
        return None
    phu = frame.phu.copy()
    name = str(phu.get("PREPNAME", frame.filename))
    for key in ("PREPRAW", "PREPNAME"):
        phu.remove(key, ignore_missing=True)
    frame = frame.with_(phu=phu, filename=name, meta={**frame.meta, "path": str(raw_path)})
    if flat is not None and cached_flat is None:
        frame = flat_correct(frame, flat, flat_name=flat_name)
    return frame


@functools.lru_cache(maxsize=2)
def _calibration(path: str, mtime_ns: int, kind: str) -> Any:
    """A flat or BPM, read once per worker process (the same one serves a whole night)."""
    return load_frame(path) if kind == "flat" else load_bpm(path)


def _load_calibration(path: str, kind: str) -> Any:
    return _calibration(str(path), os.stat(path).st_mtime_ns, kind)


def prepare_ahead(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker-pool task: prepare one raw frame and keep it in the cache.

    Parameters
    ----------
    spec : dict
        ``path`` (raw frame), ``cache_dir``, ``flat`` (processed flat path or None),
        ``bpm`` (static BPM path or None).

    Returns
    -------
    dict
        ``path`` (the cached file), ``seconds`` and ``flat`` (the flat's name or None).
    """
    t0 = time.perf_counter()
    raw = spec["path"]
    bpm_path, flat_path = spec.get("bpm"), spec.get("flat")
    frame = load_frame(raw)
    frame.meta["bpm_name"] = Path(bpm_path).name if bpm_path else None
    frame = preprocess(frame, bpm=_load_calibration(bpm_path, "bpm") if bpm_path else None)
    if flat_path:
        frame = flat_correct(frame, _load_calibration(flat_path, "flat"),
                             flat_name=Path(flat_path).name)
    out = store(frame, raw, spec["cache_dir"])
    return {"path": str(out), "seconds": round(time.perf_counter() - t0, 2),
            "flat": Path(flat_path).name if flat_path else None}
