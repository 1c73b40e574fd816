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
from gsaoi_watch.data.refcat import read_reference_catalog
from gsaoi_watch.data.sections import Section, parse_section
from gsaoi_watch.errors import FrameError, GsaoiWatchError, ReductionError
from gsaoi_watch.pipeline.pools import fork_mapper
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.stack import frame_geometry, stack_frames

__all__ = ['astrometry_cards', 'read_reference_catalog', 'run_stack_job', 'stack_files']

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
    if reference_catalog is not None and not isinstance(reference_catalog, Table):
        reference_catalog = read_reference_catalog(reference_catalog)
    skipped, geoms, cats, good = [], [], [], []
    for p in paths:
        try:
            light, catalogs = _read_light(p)
            geoms.append(frame_geometry(light))
        except (GsaoiWatchError, OSError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            skipped.append((Path(p).name, reason))
            continue
        cats.append(catalogs)
        good.append(p)
    for name, reason in skipped if good else ():  # (with none usable, the error says it)
        log.warning("stack: %s left out: %s", log_name(name), reason)
    if not good:
        raise ReductionError("stack: no usable input files ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
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
    used = [good[[g.name for g in geoms].index(name)] for name in result.meta["used"]]
    phu = _stack_phu(load_frame_header(used[0]), result,
                     result.meta["astrometry"]["kind"] == "absolute",
                     inputs=[load_frame_header(p) for p in used])
    astrometry_cards(phu, result.meta["astrometry"])
    arr = result.arrays[0]
    header = _stack_header(arr.header, arr.sci.shape, [_sci_headers(p) for p in used],
                           detector=phu.get("DETECTOR", "GSAOI"))
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


def _sci_headers(path):
    """The SCI extension headers of a product, in EXTVER order (no pixels read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            sci = {int(h.header.get("EXTVER", 1) or 1): h.header.copy() for h in hdul[1:]
                   if str(h.header.get("EXTNAME", "")).strip().upper() == "SCI"}
    return [sci[v] for v in sorted(sci)]


def _utc_stamp():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


#: Keywords of the first input that describe its cached preparation, not the stack.
_INPUT_ONLY = ("PREPRAW", "PREPNAME", "BUNIT")

#: The time stamps of DRAGONS' alignAndStack steps (``geminidr/gemini/lookups/
#: timestamp_keywords.py``) that a stack made here has been through, in recipe order
#: (gsaoi_facts §3.3 steps 18-24); the first two only with a reference catalogue.
_STACK_STEPS = (("ADDRECAT", "addReferenceCatalog"),
                ("ASTRMTRY", "determineAstrometricSolution"),
                ("CORRWCS", "adjustWCSToReference"),
                ("ALIGN", "resampleToCommonFrame"),
                ("SCALEOBJ", "scaleCountsToReference"),
                ("STACKFRM", "stackFrames"),
                ("PROCSCI", "storeProcessedScience"))


def _stack_phu(first: fits.Header, result: Frame, absolute: bool, *,
               inputs: Sequence[fits.Header] = ()) -> fits.Header:
    """The stack's primary header, as DRAGONS' alignAndStack makes one.

    DRAGONS' stackFrames keeps the first input's PHU and storeProcessedScience adds
    PROCSCI, so the stack is the first used ``_skyCorrected`` frame's PHU (with its
    prepare-time keywords: ORIGNAME, PROCSOFT, PIXSCALE, the step time stamps; and its
    PA, READMODE, LNRS, offsets and pointing, so that every DRAGONS descriptor reads)
    with the stack's keywords updated or added:

    - EXPTIME (the reference exposure time), NCOMBINE, IMCMBnnn (and IMSKPnnn with a
      HISTORY line per input left out), PIXSCALE (the output grid's), AIRMASS (the mean of
      the inputs', as stackFrames sets it), DATALAB with the ``-STACK`` suffix, NEXTEND;
    - the STK* cards and DISCOSTU of this stacking step;
    - the time stamps of steps 18-24 of DRAGONS' ``reduce`` (:data:`_STACK_STEPS`): PROCSCI
      gives the tags PROCESSED and PROCESSED_SCIENCE and blocks RAW; GEM-TLM is added when
      the file is written.

    BUNIT is not in the PHU (as in every prepared product: the extensions carry it), nor
    are the cache stamps of the first input's preparation.

    Parameters
    ----------
    first : astropy.io.fits.Header
        The PHU of the first used input (the alignment reference).
    result : Frame
        The stack (``meta['used']``, ``meta['skipped']``, ``meta['grid']``).
    absolute : bool
        True if the frames were solved against a reference catalogue.
    inputs : list of astropy.io.fits.Header, optional
        The PHUs of the used inputs (for the mean AIRMASS); default: ``first`` alone.

    Returns
    -------
    astropy.io.fits.Header
    """
    phu = first.copy()
    for key in _INPUT_ONLY:
        phu.remove(key, ignore_missing=True, remove_all=True)
    if "DATALAB" in phu:
        phu["DATALAB"] = str(phu["DATALAB"]) + "-STACK"
    used = result.meta["used"]
    grid = result.meta["grid"]
    arr = result.arrays[0]
    hdr = arr.header
    phu["NEXTEND"] = (1 + (arr.var is not None) + (arr.dq is not None),
                      "Number of extensions")
    phu["EXPTIME"] = (hdr["EXPTIME"], "Reference exposure time of the stack (s)")
    airmasses = [float(h["AIRMASS"]) for h in (inputs or [first])
                 if isinstance(h.get("AIRMASS"), int | float)]
    if airmasses:
        phu["AIRMASS"] = (round(float(np.mean(airmasses)), 4), "Mean airmass for the exposure")
    phu["NCOMBINE"] = (len(used), "Number of frames combined")
    for key in [k for k in phu if k.startswith(("IMCMB", "IMSKP"))]:
        phu.remove(key, ignore_missing=True)
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
    stamp = _utc_stamp()
    phu["DISCOSTU"] = (stamp, "UT time stamp for stack (disco_stu)")
    for key, step in _STACK_STEPS:
        if key in ("ADDRECAT", "ASTRMTRY") and not absolute:
            continue
        phu[key] = (stamp, f"UT time stamp for {step}")
    return phu


def astrometry_cards(phu: fits.Header, astrometry: dict) -> None:
    """Say in the stack's header how absolute its astrometry is, and how it was solved.

    ASTROMET is 'ABSOLUTE' (solved on a reference catalogue: ASTREFCT its name, ASTNSTAR
    the reference stars matched, ASTNMTCH the matches over all frames, ASTRMS their rms
    residual in arcsec, ASTEPOCH the epoch the catalogue was brought to; per array n,
    ASTDXn/ASTDYn its shift in arcsec and ASTROTn its rotation in degrees, relative to
    what the four arrays share) or 'RELATIVE' (frames aligned on each other).
    """
    kind = astrometry.get("kind", "relative")
    phu["ASTROMET"] = (kind.upper(), "Astrometry: ABSOLUTE (catalogue) or RELATIVE")
    phu.add_comment(str(astrometry.get("note", ""))[:72])
    if kind != "absolute":
        return
    phu["ASTREFCT"] = (str(astrometry.get("catalog"))[:68], "Astrometric reference catalogue")
    phu["ASTNSTAR"] = (int(astrometry.get("n_stars", 0)), "Reference stars matched")
    phu["ASTNMTCH"] = (int(astrometry.get("n_matches", 0)), "Matches over all frames")
    rms = astrometry.get("rms")
    if rms is not None and np.isfinite(rms):
        phu["ASTRMS"] = (round(float(rms), 5), "[arcsec] rms residual of the matches")
    if astrometry.get("epoch") is not None:
        phu["ASTEPOCH"] = (round(float(astrometry["epoch"]), 4),
                           "Epoch (yr) of the catalogue positions used")
    for a, info in sorted(astrometry.get("arrays", {}).items(), key=lambda kv: int(kv[0])):
        rel = info.get("relative")
        if not rel:
            continue
        n = int(a) + 1
        dx, dy = rel["shift_arcsec"]
        phu[f"ASTDX{n}"] = (round(dx, 5), f"[arcsec] array {n} shift in u (relative)")
        phu[f"ASTDY{n}"] = (round(dy, 5), f"[arcsec] array {n} shift in v (relative)")
        phu[f"ASTROT{n}"] = (round(rel["rotation_deg"], 5),
                             f"[deg] array {n} rotation (relative)")


#: The array whose header DRAGONS' mosaic keeps: ``find_reference_extension`` takes the
#: most central array preferring left and down, for GSAOI's layout ext 2 (H2RG-032-064,
#: DETSEC [1:2048,1:2048]) (``gempy/library/transform.py``).
_REFERENCE_ARRAY = 1

#: Array keywords that DRAGONS' resample_from_wcs removes from a mosaic of several arrays.
_NOT_MOSAIC = ("ARRAYID", "CCDSEC", "FRMNAME", "FRAMEID", "CCDSIZE", "DATATYP")


def _stack_header(grid_header: fits.Header, shape: tuple[int, int],
                  inputs: Sequence[Sequence[fits.Header]], *,
                  detector: str = "GSAOI") -> fits.Header:
    """The stack's SCI header: the grid's WCS plus what DRAGONS' mosaicked stack carries.

    DRAGONS' resampleToCommonFrame (``transform.resample_from_wcs``) gives the output the
    header of the reference array (:data:`_REFERENCE_ARRAY`), sets DATASEC to the whole
    output, DETSEC to the union of the input arrays' DETSEC (the full mosaic,
    ``[1:4096,1:4096]`` at full frame), CCDNAME to the detector name, and removes ARRAYID
    (so ``array_name`` gives the PHU DETECTOR), CCDSEC (several arrays) and the other
    per-array keywords (:data:`_NOT_MOSAIC`); stackFrames keeps GAIN (the same for all
    inputs) and sets RDNOISE to the rms of the inputs' values.  So, data in electrons:

    - BUNIT 'electron' (as ADUToElectrons writes it on every electron product), GAIN 1.0;
    - RDNOISE: rms over the used inputs of the reference array's RDNOISE (electrons);
    - SATLEVEL, NONLINEA: the first input's reference-array values, in electrons and
      linearised by nonlinearityCorrect, as DRAGONS carries them through;
    - DATASEC ``[1:nx,1:ny]``, DETSEC the union of the first input's DETSEC, CCDSUM kept.

    Parameters
    ----------
    grid_header : astropy.io.fits.Header
        The stack array's header from :func:`gsaoi_watch.reduction.stack.stack_frames`
        (TAN WCS, EXPTIME).
    shape : (int, int)
        (ny, nx) of the stack.
    inputs : list of list of astropy.io.fits.Header
        The SCI headers of each used input, first the alignment reference.
    detector : str
        The PHU DETECTOR, DRAGONS' CCDNAME of a mosaic.

    Returns
    -------
    astropy.io.fits.Header
    """
    header = grid_header.copy()
    header["EXTVER"] = 1
    header["BUNIT"] = ("electron", "Physical units of the array values")
    header["GAIN"] = (1.0, "Gain (e-/ADU): the data are in electrons")
    first = list(inputs[0]) if inputs else []
    ref = first[_REFERENCE_ARRAY] if len(first) > _REFERENCE_ARRAY else \
        (first[0] if first else fits.Header())
    noise = [float(h[_REFERENCE_ARRAY]["RDNOISE"]) for h in inputs
             if len(h) > _REFERENCE_ARRAY and isinstance(h[_REFERENCE_ARRAY].get("RDNOISE"),
                                                        int | float)]
    if noise:
        header["RDNOISE"] = (round(float(np.sqrt(np.mean(np.square(noise)))), 3),
                             "Read noise (e-): rms of the inputs'")
    for key, comment in (("SATLEVEL", "Saturation level (electron)"),
                         ("NONLINEA", "Non-linear level (electron)")):
        if isinstance(ref.get(key), int | float):
            header[key] = (float(ref[key]), comment)
    if "CCDSUM" in ref:
        header["CCDSUM"] = (ref["CCDSUM"], ref.comments["CCDSUM"])
    ny, nx = shape
    header["DATASEC"] = (f"[1:{nx},1:{ny}]", "Data section: the whole mosaic")
    sections = [s for s in (parse_section(h.get("DETSEC")) for h in first) if s is not None]
    if sections:
        union = Section(min(s.x1 for s in sections), max(s.x2 for s in sections),
                        min(s.y1 for s in sections), max(s.y2 for s in sections))
        header["DETSEC"] = (union.as_iraf(), "Detector section (wrt mosaic)")
    header["CCDNAME"] = (detector, "Mosaic of the arrays (detector name)")
    for key in _NOT_MOSAIC:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def run_stack_job(spec: dict) -> dict:
    """Run one stack in a worker process.

    Parameters
    ----------
    spec : dict
        ``paths`` (_skyCorrected products), ``output_dir``, ``output_name`` (default
        ``disco_stack.fits``); optional ``reference_catalog`` (path) and ``params``
        (keyword arguments of ``stack_frames``).  A catalogue that cannot be read is a
        warning, and the stack is made on relative astrometry.

    Returns
    -------
    dict
        ``products`` [(path, 'stack')], ``skipped`` [(file, reason)], ``seconds``,
        ``note``, ``astrometry`` (JSON-ready ``meta['astrometry']``) and ``warnings``
        (one line each).
    """
    t0 = time.perf_counter()
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    warnings_out = []
    refcat: Table | None = None
    if spec.get("reference_catalog"):
        try:
            refcat = read_reference_catalog(spec["reference_catalog"])
        except GsaoiWatchError as exc:  # the stack is still made, on relative astrometry
            warnings_out.append(f"stack: reference catalogue unusable, astrometry relative: "
                                f"{exc}")
    path, result = stack_files(spec["paths"], out / (spec.get("output_name") or DEFAULT_OUTPUT),
                               reference_catalog=refcat, **(spec.get("params") or {}))
    astrometry = result.meta["astrometry"]
    if refcat is not None and astrometry.get("kind") != "absolute":
        warnings_out.append(f"stack: {path.name}: {astrometry.get('note')}")
    grid = result.meta["grid"]
    return {"products": [(str(path), "stack")],
            "skipped": [tuple(s) for s in result.meta["skipped"]],
            "seconds": round(time.perf_counter() - t0, 1),
            "astrometry": _plain(astrometry), "warnings": warnings_out,
            "note": f"{path.name}: {len(result.meta['used'])} frames, "
                    f"{grid.shape[1]}x{grid.shape[0]} at {grid.scale:.3f}\"/pix, "
                    + _astrometry_note(result.meta["astrometry"])}


def _astrometry_note(astrometry: dict) -> str:
    if astrometry.get("kind") != "absolute":
        return "relative astrometry"
    return (f"absolute astrometry on {astrometry['catalog']}: {astrometry['n_stars']} stars, "
            f"rms {1000 * astrometry['rms']:.1f} mas")


def _plain(value: Any) -> Any:
    """JSON-ready copy (dict keys as text, numpy scalars as Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

