"""The only module that reads and writes FITS: headers, frames, the BPM, atomic products.

It is also the edge where names are made safe.  A product's name comes only from the name
of the file gsaoi_watch read, never from a header value: :func:`load_frame` names a frame
after its file, made safe by :func:`safe_name` (ORIGNAME stays in the header as data, and
only tells how much of a processed file's name is the original root).  Every product,
picture and page is written through :func:`safe_output_path`, which makes the name safe
again and checks that the path lies inside its directory, and :func:`atomic_output`, which
gives the file the permissions the process umask allows.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gsaoi_watch.data.descriptors import (
    N_ARRAYS,
    N_MOSAIC_ARRAYS,
    FrameInfo,
    header_text,
    product_status,
)
from gsaoi_watch.data.names import (
    MAX_NAME_LENGTH,
    ROOT_NAME_LENGTH,
    SAFE_NAME_CHARACTERS,
    safe_name,
    split_extension,
)
from gsaoi_watch.data.objcat import objcat_hdu, read_objcat
from gsaoi_watch.data.tags import compute_tags
from gsaoi_watch.errors import CatalogError, FrameError, UnsafePathError
from gsaoi_watch.logs import log_name
from gsaoi_watch.reduction.container import Array, Frame

__all__ = ['MAX_NAME_LENGTH', 'ROOT_NAME_LENGTH', 'SAFE_NAME_CHARACTERS', 'atomic_output',
           'copy_product', 'frame_names', 'load_bpm', 'load_frame', 'log_name', 'read_catalogs',
           'process_umask', 'read_frame_info', 'safe_name', 'safe_output_path', 'write_frame']

log = logging.getLogger(__name__)


def safe_output_path(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory / safe_name(name)``, checked to lie inside ``directory``.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the file is written (it need not exist yet).
    name : str
        The file name wanted (a product name, a picture, ``index.html``); a path
        separator in it is replaced like any other unsafe character.

    Returns
    -------
    pathlib.Path
        The path to write, ``directory`` as given joined with the safe name.

    Raises
    ------
    UnsafePathError
        If the resolved path is not directly inside the resolved ``directory`` (which the
        safe name alone already prevents; this is the check that it did).
    """
    directory = Path(directory)
    safe = safe_name(name)
    real_dir = Path(os.path.realpath(directory))
    target = real_dir / safe
    # the last component is not followed: os.replace replaces a symbolic link, never its
    # target, so a link planted at the product's name cannot send the data elsewhere
    if safe in (".", "..") or target.parent != real_dir or \
            os.path.commonpath([real_dir, target]) != str(real_dir):
        raise UnsafePathError(f"{log_name(name)}: would be written outside {real_dir}")
    return directory / safe


_UMASK: int | None = None


def _read_umask() -> int:
    try:  # Linux >= 4.7 shows it without changing it
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # elsewhere, reading it means setting it
    os.umask(current)
    return current


def process_umask() -> int:
    """The process umask, read once (at import of this module) and kept.

    Read from ``/proc/self/status`` where the kernel shows it; otherwise by setting and
    restoring it, which is why it is done once, at import, before the daemon starts the
    threads that create files.
    """
    global _UMASK
    if _UMASK is None:
        _UMASK = _read_umask()
    return _UMASK


process_umask()  # at import: before the daemon starts threads

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


def read_frame_info(path: str | os.PathLike[str], *, require_gsaoi: bool = True) -> FrameInfo:
    """Read the headers of a GSAOI file and return its descriptors and tags.

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file.
    require_gsaoi : bool, optional
        Reject files whose INSTRUME is not GSAOI or that do not hold 4 arrays (default).
        A processed file (PROCESSED or PREPARED, as DRAGONS tags it) may also hold one
        array: a mosaicked product such as a stack.

    Returns
    -------
    FrameInfo

    Raises
    ------
    FrameError
        With a one-line message naming the file and the problem: missing, empty, not FITS,
        truncated, another instrument, or the wrong number of arrays (4 for a raw frame;
        4, or 1 when mosaicked, for a processed product).
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
            status = product_status(compute_tags(phu))
            if status is None:
                raise FrameError(
                    path, f"has {len(arrays)} array extensions; a GSAOI frame has {N_ARRAYS}")
            if len(arrays) != N_MOSAIC_ARRAYS:
                raise FrameError(path, f"has {len(arrays)} array extensions; a {status} GSAOI "
                                       f"product has {N_ARRAYS}, or {N_MOSAIC_ARRAYS} when "
                                       "mosaicked")
    return FrameInfo(phu, arrays, path=path)


def load_frame(path: str | os.PathLike[str], *,
               indices: tuple[int, ...] = (0, 1, 2, 3)) -> Frame:
    """Read a raw or processed GSAOI file into a :class:`Frame`.

    Raw files give ``sci`` only; processed files (SCI/VAR/DQ extensions) give all three.
    ``indices`` selects arrays (0-3) so that a recipe can stream one array at a time.

    Raises
    ------
    FrameError
        If the file is not a complete GSAOI frame (see ``read_frame_info``), or is a
        mosaicked product (a stack: one array), which is not a frame to reduce.
    """
    path = Path(path)
    info = read_frame_info(path)  # validates: FITS, complete, GSAOI, 4 arrays (or a mosaic)
    if len(info.ext_headers) != N_ARRAYS:
        raise FrameError(path, f"is a mosaicked product ({len(info.ext_headers)} array, "
                               f"{product_status(info.tags)}), not a frame of {N_ARRAYS} "
                               "arrays to reduce")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            phu = hdul[0].header.copy()
            planes = {}
            raw = []
            counts: dict[str, int] = {}
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
    filename, orig = frame_names(path, phu)
    return Frame(phu=phu, arrays=tuple(arrays), filename=filename, orig_filename=orig,
                 meta={"indices": tuple(indices), "path": str(path)})


def read_catalogs(hdul: fits.HDUList, path: str | os.PathLike[str],
                  n: int = N_ARRAYS) -> list[Table | None]:
    """The OBJCAT of each array of an open file, in gsaoi_watch's (DRAGONS') columns.

    Ours, DRAGONS' or an older gsaoi_watch product's, as
    :func:`~gsaoi_watch.data.objcat.read_objcat` gives them.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The open file.
    path : str or os.PathLike
        Its name, for the messages.
    n : int
        Number of arrays (EXTVER 1..n).

    Returns
    -------
    list of Table or None
        Per array; None where there is no OBJCAT, or where it cannot be used (a warning
        names the file, the OBJCAT and the problem, and the caller detects the array's
        sources itself).
    """
    cats: list[Table | None] = [None] * n
    counts = 0
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU) or \
                str(hdu.header.get("EXTNAME", "")).strip().upper() != "OBJCAT":
            continue
        counts += 1
        ver = hdu.header.get("EXTVER", counts)
        ver = ver if isinstance(ver, int) and not isinstance(ver, bool) else counts
        if not 1 <= ver <= n:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = Table(hdu.data) if hdu.data is not None else Table()
            cats[ver - 1] = read_objcat(table, path=path, extver=ver)
        except CatalogError as exc:
            log.warning("%s; its sources are detected afresh", exc)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            log.warning("%s: OBJCAT %d unreadable (%s); its sources are detected afresh",
                        log_name(os.fspath(path)), ver, log_name(str(exc).splitlines()[0]
                                                              if str(exc) else type(exc)))
    return cats


def frame_names(path: str | os.PathLike[str], phu: Any) -> tuple[str, str]:
    """(filename, orig_filename) of a frame read from ``path``: from the file's name only.

    Both are :func:`safe_name` of the file's name (at most :data:`ROOT_NAME_LENGTH`), so the
    products named after them stay in their directory whatever the headers say.  For a
    file gsaoi_watch (or DRAGONS) already prepared, such as ``S20170505S0095_prepared.fits``,
    the original name is the root of the file's name that ORIGNAME names
    (``S20170505S0095.fits``), used only when the file's name starts with it; ORIGNAME
    never adds anything to a name.
    """
    filename = safe_name(Path(path).name, limit=ROOT_NAME_LENGTH)
    orig = filename
    if any("PREPAR" in str(key) for key in phu.keys()):
        header = phu.get("ORIGNAME")
        if isinstance(header, str) and header.strip():
            root, ext = split_extension(safe_name(header.strip(), limit=ROOT_NAME_LENGTH))
            if root and filename.startswith(root + "_"):
                orig = root + (ext or ".fits")
    return filename, orig


def load_bpm(path: str | os.PathLike[str]) -> list[np.ndarray]:
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
def atomic_output(target: str | os.PathLike[str], *, fsync: bool = False,
                  mode: int = 0o666) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``target`` for binary writing; rename it into place.

    A reader never sees a half-written file: the data go to a hidden temporary name in the
    same directory (``.NAME.PID.RANDOM.tmp``, the writer's process id in it), which
    replaces ``target`` only when the block ends without an error (and is removed
    otherwise).  The file gets ``mode`` less the process umask (0644 under umask 022), as
    ``open()`` would give it, not the 0600 of a temporary file.  ``fsync`` flushes the data
    to disk before the rename.

    A write that fails for lack of space (or any other OSError) raises an :class:`OSError`
    with its errno and ``target`` as its file name, whatever the writer made of it
    (astropy reports a full disk as "'list' object has no attribute '_file'"); the
    temporary file is removed.
    """
    target = Path(target)
    # the writer's pid in the name: the daemon removes those of a worker killed mid-write
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                               dir=target.parent)
    try:
        os.fchmod(fd, mode & ~process_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _write_error(exc)
        if cause is None:
            raise
        code = cause.errno if cause.errno is not None else errno.EIO  # (always set)
        raise OSError(code, cause.strerror or os.strerror(code), str(target)) from exc


def _write_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write, if it needs restating (errno kept, path added).

    An OSError with its errno but without the file's name, or an error that hides the
    OSError of a write in its context: astropy restates ENOSPC as an OSError without errno
    and, writing to an open file, fails in its free-space check with an AttributeError.
    """
    if not isinstance(exc, OSError | AttributeError):
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc if exc.filename is None else None
    seen: BaseException | None = exc.__context__
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__context__
    return None


class _Sink:
    """The file astropy writes a product to: only ``write``, so every byte goes through it.

    Given a real file, astropy writes arrays with numpy's ``tofile``, which reports a full
    disk as "65536 requested and 25984 written" without an errno.  Through ``write`` the
    file's own OSError (ENOSPC) comes out.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.closed = False

    def write(self, data: Any) -> int:
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def tell(self) -> int:
        return self._fh.tell()


def copy_product(source: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Copy a product into ``directory`` under the same (safe) name, atomically; return it.

    Used for the copy of a processed calibration under ``calibrations/processed_flat/``.
    """
    source = Path(source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = safe_output_path(directory, source.name)
    with open(source, "rb") as src, atomic_output(target, fsync=True) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def write_frame(frame: Frame, directory: str | os.PathLike[str], *, filename: str | None = None,
                overwrite: bool = True) -> Path:
    """Write ``frame`` as a MEF (SCI, VAR, DQ[, OBJMASK, OBJCAT] per array) atomically.

    The catalogues in ``meta['catalogs']`` are written as DRAGONS' OBJCAT tables
    (:func:`gsaoi_watch.data.objcat.objcat_hdu`: its columns, types and units, with
    X_WORLD/Y_WORLD from the array's WCS as written).

    The file is written to a temporary name in the same directory, flushed and renamed,
    so a reader never sees a half-written product.  The name (``filename``, else the
    frame's) goes through :func:`safe_output_path`: made safe, and inside ``directory``.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = safe_output_path(directory, filename or frame.filename)
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
            # DRAGONS' OBJCAT: its columns and units, world columns from this array's WCS
            hdus.append(objcat_hdu(catalogs[i], sci_h, ver))
    with atomic_output(target, fsync=True) as fh:
        fits.HDUList(hdus).writeto(_Sink(fh), output_verify="silentfix")
    return target

