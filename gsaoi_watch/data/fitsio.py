"""The only module that reads and writes FITS: headers, frames, the BPM, atomic products."""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from gsaoi_watch.data.descriptors import N_ARRAYS, FrameInfo, header_text
from gsaoi_watch.errors import FrameError
from gsaoi_watch.reduction.container import Array, Frame

__all__ = ['atomic_output', 'load_bpm', 'load_frame', 'read_frame_info', 'write_frame']

def _array_hdus(hdul):
    images = [h for h in hdul[1:] if isinstance(h, fits.ImageHDU | fits.CompImageHDU)]
    sci = [h for h in images if header_text(h.header.get("EXTNAME")) in (None, "", "SCI")]
    if sci:
        return sci
    return [h for h in images if header_text(h.header.get("EXTNAME")) == "DQ"]


def _check_complete(path, hdul, size):
    expected = 0
    for hdu in hdul:
        info = hdu.fileinfo()
        if info is None:
            continue
        expected = max(expected, info["datLoc"] + info["datSpan"])
    if expected > size:
        raise FrameError(path, f"truncated FITS: {size} of {expected} bytes present")


def read_frame_info(path, *, require_gsaoi=True) -> FrameInfo:
    """Read the headers of a GSAOI file and return its descriptors and tags.

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file.
    require_gsaoi : bool, optional
        Reject files whose INSTRUME is not GSAOI or that do not hold 4 arrays (default).

    Returns
    -------
    FrameInfo

    Raises
    ------
    FrameError
        With a one-line message naming the file and the problem: missing, empty, not FITS,
        truncated, another instrument, or the wrong number of arrays.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise FrameError(path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise FrameError(path, "empty file")
    try:
        with open(path, "rb") as fh:
            start = fh.read(30)
    except OSError as exc:
        raise FrameError(path, f"cannot read: {exc.strerror or exc}") from None
    if not start.startswith(b"SIMPLE  =") and not start.startswith(b"\x1f\x8b"):
        raise FrameError(path, "not a FITS file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                if not path.endswith((".gz", ".bz2", ".fz")):
                    _check_complete(path, hdul, size)
                phu = hdul[0].header.copy()
                arrays = [h.header.copy() for h in _array_hdus(hdul)]
                n_hdus = len(hdul) - 1
    except FrameError:
        raise
    except (OSError, ValueError, IndexError, KeyError, TypeError, EOFError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in text.lower() or "empty or corrupt" in text.lower():
            raise FrameError(path, f"truncated or corrupt FITS ({text})") from None
        raise FrameError(path, f"unreadable FITS ({text})") from None
    nextend = phu.get("NEXTEND")
    if isinstance(nextend, int) and not isinstance(nextend, bool) and n_hdus < nextend:
        # cut at an HDU boundary: the PHU promises more extensions than the file holds
        raise FrameError(path, f"truncated FITS: {n_hdus} of {nextend} extensions present")
    if require_gsaoi:
        inst = header_text(phu.get("INSTRUME"))
        if inst is None:
            raise FrameError(path, "no INSTRUME keyword: not a GSAOI frame")
        if str(inst).upper() != "GSAOI":
            raise FrameError(path, f"not a GSAOI frame (INSTRUME={inst!r})")
        if len(arrays) != N_ARRAYS:
            raise FrameError(
                path, f"has {len(arrays)} array extensions; a GSAOI frame has {N_ARRAYS}")
    return FrameInfo(phu, arrays, path=path)


def load_frame(path, *, indices=(0, 1, 2, 3)) -> Frame:
    """Read a raw or processed GSAOI file into a :class:`Frame`.

    Raw files give ``sci`` only; processed files (SCI/VAR/DQ extensions) give all three.
    ``indices`` selects arrays (0-3) so that a recipe can stream one array at a time.

    Raises
    ------
    FrameError
        If the file is not a complete GSAOI frame (see ``read_frame_info``).
    """
    path = Path(path)
    read_frame_info(path)  # validates: FITS, complete, GSAOI, 4 arrays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            phu = hdul[0].header.copy()
            planes = {}
            raw = []
            counts = {}
            for hdu in hdul[1:]:
                if not isinstance(hdu, fits.ImageHDU):
                    continue
                name = str(hdu.header.get("EXTNAME", "")).strip().upper()
                counts[name] = counts.get(name, 0) + 1
                # raw files may carry EXTNAME='SCI' without EXTVER: number them in order
                ver = int(hdu.header.get("EXTVER", 0) or 0) or counts[name]
                if name in ("SCI", "VAR", "DQ", "OBJMASK"):
                    planes[(name, ver)] = hdu
                elif not name:
                    raw.append(hdu)
            arrays = []
            if raw:
                for hdu in (raw[i] for i in indices):
                    arrays.append(Array(np.asarray(hdu.data, dtype=np.float32), None, None,
                                        hdu.header.copy()))
            else:
                for ver in (i + 1 for i in indices):
                    sci = planes.get(("SCI", ver))
                    if sci is None:
                        raise FrameError(path, f"no SCI extension {ver}")
                    var = planes.get(("VAR", ver))
                    dq = planes.get(("DQ", ver))
                    obj = planes.get(("OBJMASK", ver))
                    arrays.append(Array(
                        np.asarray(sci.data, dtype=np.float32),
                        None if var is None else np.asarray(var.data, dtype=np.float32),
                        None if dq is None else np.asarray(dq.data, dtype=np.uint16),
                        sci.header.copy(),
                        None if obj is None else np.asarray(obj.data, dtype=np.uint8)))
    orig = str(phu.get("ORIGNAME", "")).strip() or path.name
    return Frame(phu=phu, arrays=tuple(arrays), filename=path.name, orig_filename=orig,
                 meta={"indices": tuple(indices), "path": str(path)})


def load_bpm(path):
    """Read a static bad-pixel mask file: a list of 4 uint16 arrays (extension order)."""
    with fits.open(path, memmap=False) as hdul:
        planes = [h for h in hdul[1:] if isinstance(h, fits.ImageHDU)]
        if len(planes) != 4:
            raise FrameError(path, f"BPM has {len(planes)} extensions, expected 4")
        return [np.asarray(h.data, dtype=np.uint16) for h in planes]


def _extension_headers(header, name):
    h = header.copy()
    h["EXTNAME"] = name
    for key in ("BUNIT",) if name == "DQ" else ():
        h.remove(key, ignore_missing=True)
    return h


@contextlib.contextmanager
def atomic_output(target, *, fsync=False):
    """Open a temporary file beside ``target`` for binary writing; rename it into place.

    A reader never sees a half-written file: the data go to a hidden temporary name in the
    same directory, which replaces ``target`` only when the block ends without an error
    (and is removed otherwise).  ``fsync`` flushes the data to disk before the rename.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_frame(frame: Frame, directory, *, filename=None, overwrite=True) -> Path:
    """Write ``frame`` as a MEF (SCI, VAR, DQ[, OBJMASK] per array) atomically.

    The file is written to a temporary name in the same directory, flushed and renamed,
    so a reader never sees a half-written product.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (filename or frame.filename)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    phu = frame.phu.copy()
    phu["GEM-TLM"] = (datetime.datetime.now(datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S"), "UT last modification with gsaoi_watch")
    hdus = [fits.PrimaryHDU(header=phu)]
    for i, arr in enumerate(frame.arrays):
        ver = i + 1
        sci_h = arr.header.copy()
        sci_h["EXTNAME"], sci_h["EXTVER"] = "SCI", ver
        hdus.append(fits.ImageHDU(arr.sci.astype(np.float32), header=sci_h))
        if arr.var is not None:
            h = _extension_headers(sci_h, "VAR")
            hdus.append(fits.ImageHDU(arr.var.astype(np.float32), header=h))
        if arr.dq is not None:
            h = _extension_headers(sci_h, "DQ")
            hdus.append(fits.ImageHDU(arr.dq.astype(np.uint16), header=h))
        if arr.objmask is not None:
            h = _extension_headers(sci_h, "OBJMASK")
            hdus.append(fits.ImageHDU(arr.objmask.astype(np.uint8), header=h))
        catalogs = frame.meta.get("catalogs")
        if catalogs is not None and i < len(catalogs) and catalogs[i] is not None:
            cat = fits.BinTableHDU(catalogs[i], name="OBJCAT")
            cat.header["EXTVER"] = ver
            hdus.append(cat)
    with atomic_output(target, fsync=True) as fh:
        fits.HDUList(hdus).writeto(fh, output_verify="silentfix")
    return target

