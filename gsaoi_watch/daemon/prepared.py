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
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from gsaoi_watch.data.fitsio import load_bpm, load_frame, write_frame
from gsaoi_watch.data.names import safe_name
from gsaoi_watch.logs import log_name
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.flat import flat_correct
from gsaoi_watch.reduction.recipes import preprocess
from gsaoi_watch.reduction.source import ALL_ARRAYS

__all__ = ["STORED_KEY", "CacheStore", "cache_path", "fetch", "forget", "load_objmasks",
           "prepare_ahead", "save_objmask", "store"]

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
          bpm_name: str | None = None, indices: tuple[int, ...] = ALL_ARRAYS,
          require: str | None = None) -> Frame | None:
    """The cached prepared frame of ``raw_path``, flat-corrected with ``flat``, or None.

    Returns None (the caller prepares the raw frame) when there is no cached frame, or it
    was made from another version of the raw file, with another BPM or with another flat,
    or (``require``) lacks that PHU keyword.  ``indices`` loads only those arrays.
    """
    path = cache_path(cache_dir, raw_path)
    try:
        header = fits.getheader(path)
        if header.get("PREPRAW") != _raw_stamp(raw_path):
            return None
    except (OSError, ValueError):
        return None
    if header.get("BPMUSED") != bpm_name or (require and require not in header):
        return None
    cached_flat = header.get("FLATIM")
    if cached_flat is not None and cached_flat != (flat_name if flat is not None else None):
        return None
    try:
        frame = load_frame(path, indices=indices)
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


#: PHU keyword of a cached frame that has been through the whole sequence's per-frame steps
#: (addDQ's latency from the earlier frames included), which :class:`CacheStore` writes.
STORED_KEY = "PREPSTOR"


def _sidecar(cache_dir: str | os.PathLike[str], raw_path: str | os.PathLike[str],
             what: str) -> Path:
    name = Path(raw_path).name
    stem = name[:-5] if name.endswith(".fits") else name
    return Path(cache_dir) / safe_name(f"{stem}_{what}.pkl")


def _write_pickle(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_pickle(path: Path, stamp: object) -> Any:
    """The value stored with ``stamp`` (the raw file's, with what else it depends on), or None."""
    try:
        with open(path, "rb") as fh:
            saved_stamp, value = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
        return None
    return value if saved_stamp == stamp else None


def save_objmask(cache_dir: str | os.PathLike[str], raw_path: str | os.PathLike[str],
                 skies: list[str], masks: tuple[Any, ...], *,
                 calibrations: tuple[str | None, str | None] = (None, None)) -> None:
    """Keep the pass-1 object masks of a sky frame (and the skies they were made with).

    ``calibrations`` (the flat's and the BPM's names) are part of the stamp: masks made
    before the flat existed (a quick-look pass while the night is observed) are not the
    final reduction's, which would otherwise depend on when the flat arrived.
    """
    packed = tuple(None if m is None else (m.shape, np.packbits(np.asarray(m, bool)))
                   for m in masks)
    _write_pickle(_sidecar(cache_dir, raw_path, "objmask"),
                  ((_raw_stamp(raw_path), tuple(calibrations)), (list(skies), packed)))


def load_objmasks(cache_dir: str | os.PathLike[str], raw_paths: dict[str, str], *,
                  calibrations: tuple[str | None, str | None] = (None, None)
                  ) -> dict[str, tuple[list[str], tuple[Any, ...]]]:
    """The pass-1 object masks kept for the frames ``raw_paths`` (name -> raw path).

    Only masks made from the same raw file with the same ``calibrations`` (flat and BPM
    names, as given to :func:`save_objmask`).
    """
    out = {}
    for name, raw in raw_paths.items():
        try:
            stamp = (_raw_stamp(raw), tuple(calibrations))
        except OSError:
            continue
        value = _read_pickle(_sidecar(cache_dir, raw, "objmask"), stamp)
        if value is None:
            continue
        skies, packed = value
        masks = tuple(None if p is None else
                      np.unpackbits(p[1], count=int(np.prod(p[0]))).reshape(p[0])
                      .astype(np.uint8) for p in packed)
        out[name] = (skies, masks)
    return out


def forget(cache_dir: str | os.PathLike[str], raw_path: str | os.PathLike[str]) -> None:
    """Remove everything the cache holds for one raw frame."""
    cache_path(cache_dir, raw_path).unlink(missing_ok=True)
    for what in ("objmask", "latency"):
        _sidecar(cache_dir, raw_path, what).unlink(missing_ok=True)


class CacheStore:
    """The prepared-frame cache as a :class:`~gsaoi_watch.reduction.source.FrameStore`.

    A frame is held once it has been through the sequence's per-frame steps with the given
    flat and BPM (:data:`STORED_KEY`); ``get`` reads only the arrays asked for, and the
    latency record of each frame is kept beside it.

    Parameters
    ----------
    raw_paths : dict
        Frame name -> raw path, for the frames of one sequence.
    cache_dir : path
    flat : Frame or None
        The processed flat the frames are (to be) corrected with.
    flat_name, bpm_name : str or None
    """

    def __init__(self, raw_paths: dict[str, str], cache_dir: str | os.PathLike[str], *,
                 flat: Frame | None = None, flat_name: str | None = None,
                 bpm_name: str | None = None) -> None:
        self.raw_paths, self.cache_dir = dict(raw_paths), Path(cache_dir)
        self.flat, self.flat_name, self.bpm_name = flat, flat_name, bpm_name
        self._held: set[str] = set()

    def _fetch(self, name: str, indices: tuple[int, ...]) -> Frame | None:
        return fetch(self.raw_paths[name], self.cache_dir, flat=self.flat,
                     flat_name=self.flat_name, bpm_name=self.bpm_name, indices=indices,
                     require=STORED_KEY)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or name not in self.raw_paths:
            return False
        if name in self._held:
            return True
        path = cache_path(self.cache_dir, self.raw_paths[name])
        try:
            header = fits.getheader(path)
            stamp = _raw_stamp(self.raw_paths[name])
        except (OSError, ValueError):
            return False
        cached_flat = header.get("FLATIM")
        ok = (header.get("PREPRAW") == stamp and STORED_KEY in header
              and header.get("BPMUSED") == self.bpm_name
              and (cached_flat is None or cached_flat == (self.flat_name if self.flat
                                                           is not None else None)))
        if ok:
            self._held.add(name)
        return ok

    def put(self, name: str, frame: Frame) -> None:
        """Write ``frame`` into the cache (atomically) as fully prepared."""
        out = frame.with_()
        out.phu[STORED_KEY] = (True, "Per-frame steps of the sequence done")
        store(out, self.raw_paths[name], self.cache_dir)
        self._held.add(name)

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Arrays ``indices`` of frame ``name`` (read from the cache)."""
        frame = self._fetch(name, tuple(indices))
        if frame is None:
            raise KeyError(f"{name} is not in the prepared-frame cache")
        return frame

    def keep_record(self, name: str, record: Any) -> None:
        """Keep frame ``name``'s latency record."""
        raw = self.raw_paths[name]
        _write_pickle(_sidecar(self.cache_dir, raw, "latency"), (_raw_stamp(raw), record))

    def record(self, name: str) -> Any:
        """Frame ``name``'s latency record, or None."""
        raw = self.raw_paths[name]
        try:
            return _read_pickle(_sidecar(self.cache_dir, raw, "latency"), _raw_stamp(raw))
        except OSError:
            return None
