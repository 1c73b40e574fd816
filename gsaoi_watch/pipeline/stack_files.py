"""The ``stack`` step at the file edge: read _skyCorrected products, write the stack MEF."""

from __future__ import annotations

import datetime
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gsaoi_watch.data.fitsio import (
    frame_names,
    load_frame,
    log_name,
    read_catalogs,
    write_frame,
)
from gsaoi_watch.errors import FrameError, GsaoiWatchError, ReductionError
from gsaoi_watch.pipeline.pools import fork_mapper
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.stack import frame_geometry, stack_frames

__all__ = ['read_reference_catalog', 'run_stack_job', 'stack_files']

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = "disco_stack.fits"


def _read_light(path):
    """Headers and OBJCAT tables of a product, without its pixels: (Frame, catalogs).

    Ours or DRAGONS' (``_skyCorrected``, ``_sourcesDetected``: SCI/VAR/DQ/OBJMASK/OBJCAT
    per array, in any order, and other extensions such as REFCAT).  The catalogues are
    None unless every array has a usable OBJCAT (:func:`read_catalogs`: a broken one is a
    warning naming the file); the stack then detects the frame's sources itself.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                phu = hdul[0].header.copy()
                sci = {}
                for hdu in hdul[1:]:
                    name = str(hdu.header.get("EXTNAME", "")).strip().upper()
                    ver = hdu.header.get("EXTVER", 1)
                    ver = ver if isinstance(ver, int) and not isinstance(ver, bool) else 1
                    if name == "SCI" and hdu.is_image:
                        sci[ver] = hdu.header.copy()
                cats = read_catalogs(hdul, path, max(sci, default=0)) if sci else []
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FrameError(path, f"unreadable FITS ({text})") from None
    if len(sci) != 4 or sorted(sci) != [1, 2, 3, 4]:
        raise FrameError(path, f"{len(sci)} SCI extensions, expected 4 (not a reduced frame?)")
    arrays = []
    for ver in sorted(sci):
        h = sci[ver]
        shape = (int(h.get("NAXIS2", 0)), int(h.get("NAXIS1", 0)))
        arrays.append(Array(np.broadcast_to(np.float32(0), shape), None, None, h))
    filename, orig = frame_names(path, phu)
    frame = Frame(phu=phu, arrays=tuple(arrays), filename=filename, orig_filename=orig)
    catalogs = cats if cats and all(c is not None for c in cats) else None
    return frame, catalogs


def read_reference_catalog(path: str | Path) -> Table:
    """Read a user reference catalogue: a FITS or ASCII table with ``ra`` and ``dec`` (deg).

    Column names are matched case-insensitively (``RA``/``DEC``, ``RAJ2000``/``DEJ2000``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = Table.read(path)
        except Exception:  # not FITS/VOTable: try plain text
            table = Table.read(path, format="ascii")
    lower = {c.lower(): c for c in table.colnames}
    ra = next((lower[c] for c in ("ra", "raj2000", "ra_deg", "col1") if c in lower), None)
    dec = next((lower[c] for c in ("dec", "dej2000", "dec_deg", "col2") if c in lower), None)
    if ra is None or dec is None:
        raise ReductionError(f"{path}: reference catalogue needs ra and dec columns")
    return Table({"ra": np.asarray(table[ra], float), "dec": np.asarray(table[dec], float)})


def stack_files(paths: Sequence[str | Path], output: str | Path, *,
                reference_catalog: str | Path | Table | None = None, overwrite: bool = True,
                workers: int = 2, **kwargs: Any) -> tuple[Path, Frame]:
    """Distortion-correct, align and stack ``_skyCorrected`` products into one MEF.

    Parameters
    ----------
    paths : list of str or Path
        Reduced frames (SCI/VAR/DQ and OBJCAT per array).
    output : str or Path
        Output file (written atomically: temporary file, then rename).
    reference_catalog : str, Path or Table, optional
        RA/Dec reference sources for absolute astrometry.
    overwrite : bool
        Replace an existing output.
    workers : int
        Processes resampling and combining output strips (2: both cores of the summit
        machine).
    **kwargs
        Passed to :func:`gsaoi_watch.reduction.stack.stack_frames`.

    Returns
    -------
    path : pathlib.Path
        The written stack.
    result : Frame
        The stack (``meta['used']``, ``meta['skipped']`` and the rest).

    Raises
    ------
    ReductionError
        If no frame can be used.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(output)
    skipped, geoms, cats, good = [], [], [], []
    for p in paths:
        try:
            light, catalogs = _read_light(p)
            geoms.append(frame_geometry(light))
        except (GsaoiWatchError, OSError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            skipped.append((Path(p).name, reason))
            log.warning("stack: %s left out: %s", log_name(Path(p).name), reason)
            continue
        cats.append(catalogs)
        good.append(p)
    if not good:
        raise ReductionError("stack: no usable input files ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
    if reference_catalog is not None and not isinstance(reference_catalog, Table):
        reference_catalog = read_reference_catalog(reference_catalog)
    loaders = [lambda p=p: load_frame(p) for p in good]
    try:
        result = stack_frames(loaders, geometries=geoms, catalogs=cats,
                              reference_catalog=reference_catalog, mapper=fork_mapper(workers),
                              **kwargs)
    except ReductionError as exc:
        if not skipped:
            raise
        raise ReductionError(f"{exc} (also left out: "
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")") from exc
    result.meta["skipped"] = skipped + result.meta["skipped"]
    first = load_frame_header(good[[g.name for g in geoms].index(result.meta["used"][0])])
    phu = _stack_phu(first, result, reference_catalog is not None)
    arr = result.arrays[0]
    header = arr.header.copy()
    header["EXTVER"] = 1
    result = result.with_(phu=phu, arrays=(arr.with_(header=header),),
                          filename=output.name, orig_filename=output.name)
    path = write_frame(result, output.parent if str(output.parent) else ".",
                       filename=output.name)
    return path, result


def load_frame_header(path: str | Path) -> fits.Header:
    """The primary header of a FITS file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.getheader(path, 0)


def _stack_phu(first, result, absolute):
    phu = fits.Header()
    for key in ("INSTRUME", "TELESCOP", "OBSERVAT", "OBJECT", "OBSCLASS", "OBSTYPE",
                "GEMPRGID", "OBSID", "DATALAB", "FILTER1", "FILTER2", "DATE-OBS", "TIME-OBS",
                "UT", "UTSTART", "RA", "DEC", "EQUINOX", "DETECTOR", "AIRMASS"):
        if key in first:
            phu[key] = (first[key], first.comments[key])
    if "DATALAB" in phu:
        phu["DATALAB"] = str(phu["DATALAB"]) + "-STACK"
    used = result.meta["used"]
    grid = result.meta["grid"]
    hdr = result.arrays[0].header
    phu["EXPTIME"] = (hdr["EXPTIME"], "Reference exposure time of the stack (s)")
    phu["BUNIT"] = ("electrons", "Units of the stacked data")
    phu["NCOMBINE"] = (len(used), "Number of frames combined")
    for k, name in enumerate(used, start=1):
        phu[f"IMCMB{k:03d}"] = (name, "Input frame")
    for k, (name, reason) in enumerate(result.meta["skipped"], start=1):
        phu[f"IMSKP{k:03d}"] = (name, "Input left out of the stack")
        phu.add_history(f"left out {name}: {reason}"[:70])
    phu["PIXSCALE"] = (grid.scale, "Output pixel scale (arcsec)")
    phu["STKALIGN"] = ("REFCAT" if absolute else f"{result.meta['reference']}",
                       "Alignment reference")
    phu["STKFLUX"] = (result.meta["flux_mode"], "Flux scaling (surface or jacobian)")
    phu["STKCOMB"] = ("mean sigclip", "Combination")
    phu["DISCOSTU"] = (datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                       "UT time stamp for stack (disco_stu)")
    return phu


def run_stack_job(spec: dict) -> dict:
    """Run one stack in a worker process.

    Parameters
    ----------
    spec : dict
        ``paths`` (_skyCorrected products), ``output_dir``, ``output_name`` (default
        ``disco_stack.fits``); optional ``reference_catalog`` (path) and ``params``
        (keyword arguments of ``stack_frames``).

    Returns
    -------
    dict
        ``products`` [(path, 'stack')], ``skipped`` [(file, reason)], ``seconds``, ``note``.
    """
    t0 = time.perf_counter()
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path, result = stack_files(spec["paths"], out / (spec.get("output_name") or DEFAULT_OUTPUT),
                               reference_catalog=spec.get("reference_catalog"),
                               **(spec.get("params") or {}))
    grid = result.meta["grid"]
    return {"products": [(str(path), "stack")],
            "skipped": [tuple(s) for s in result.meta["skipped"]],
            "seconds": round(time.perf_counter() - t0, 1),
            "note": f"{path.name}: {len(result.meta['used'])} frames, "
                    f"{grid.shape[1]}x{grid.shape[0]} at {grid.scale:.3f}\"/pix"}

