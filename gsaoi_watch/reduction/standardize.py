"""prepare, addDQ, nonlinearityCorrect, ADUToElectrons, addVAR: per-frame steps.

Each step is a pure function: ``Frame`` (+ keyword-only parameters) in, new ``Frame`` out.
Nothing here reads or writes files.  Semantics follow DRAGONS (gsaoi_facts.md §1.4, §2, §3.5).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from scipy import ndimage

from gsaoi_watch import __version__
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import tables as instrument
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.reduction.container import Frame

__all__ = ["add_dq", "add_var", "adu_to_electrons", "check_frame", "info", "mark",
           "nonlinearity_correct", "prepare", "rename", "required"]

T = TypeVar("T")

#: Connected regions below the non-linear level this small are hidden saturation (DRAGONS).
HIDDEN_SATURATION_MAX_AREA = 10000


def hidden_saturation_area(n_pixels: int) -> int:
    """Largest region below the non-linear level that counts as a saturated core.

    DRAGONS' 10000 pixels, on a 2048 x 2048 array 0.24 % of it; on a small (simulated)
    array at most a quarter of it, so that the background of a 64 x 64 array, a single
    region of 4000 pixels around one non-linear star, is not flagged whole (it was, and
    addDQ's latency then flagged every pixel of the frames that followed).
    """
    return min(HIDDEN_SATURATION_MAX_AREA, int(n_pixels) // 4)


def required(value: T | None, fi: FrameInfo, what: str) -> T:
    """``value``, or a ReductionError naming the file and the descriptor that is missing.

    Descriptors return None for a missing keyword (DRAGONS' semantics); a step that cannot
    go on without one says so in one line instead of failing later on ``None``.
    """
    if value is None:
        raise ReductionError(f"{fi.filename}: {what} missing")
    return value


def info(frame: Frame) -> FrameInfo:
    """Descriptors and tags of a frame being reduced."""
    return FrameInfo(frame.phu, [a.header for a in frame.arrays], path=frame.filename)


def rename(filename: str, suffix: str, orig: str = "") -> str:
    """DRAGONS naming: the original root plus the newest suffix (``_prepared`` ...)."""
    root = orig or filename
    for ext in (".fits.gz", ".fits.bz2", ".fits"):
        if root.endswith(ext):
            root = root[: -len(ext)]
            break
    if not orig:
        root = root.split("_")[0]
    return f"{root}{suffix}.fits"


def mark(frame: Frame, keyword: str, suffix: str, comment: str) -> Frame:
    """Return ``frame`` renamed with ``suffix`` and a PHU time stamp ``keyword`` added."""
    import datetime as dt

    phu = frame.phu.copy()
    phu[keyword] = (dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"), comment)
    return frame.with_(phu=phu, filename=rename(frame.filename, suffix, frame.orig_filename))


def _is_central_roi(header) -> bool:
    full = parse_section(header.get("CCDSIZE"))
    sec = parse_section(header.get("CCDSEC"))
    if full is None or sec is None:
        return False
    nx, ny = full.x2 - full.x1, full.y2 - full.y1
    return (sec.x1, sec.x2, sec.y1, sec.y2) == (nx // 4, nx * 3 // 4, ny // 4, ny * 3 // 4)


def _shift_rows(text, dy):
    sec = parse_section(text)
    if sec is None:
        raise ReductionError(f"not an image section: {text!r}")
    return f"[{sec.x1 + 1}:{sec.x2},{sec.y1 + 1 + dy}:{sec.y2 + dy}]"


def check_frame(fi: FrameInfo) -> str | None:
    """Return why a raw frame cannot be reduced (None if it can): the keywords prepare needs.

    Checks the instrument, the arrays and read mode (gain, read noise, saturation need a
    known ARRAYID and LNRS 2/8/16), FILTER1/FILTER2 and DATE-OBS/UT, and EXPTIME.
    """
    if str(fi.instrument()).upper() != "GSAOI":
        return f"not a GSAOI frame (INSTRUME={fi.instrument()!r})"
    if None in fi.gain() or None in fi.read_noise() or None in fi.saturation_level():
        return f"unknown array or read mode (ARRAYID {fi.array_name()}, LNRS {fi.lnrs()})"
    if fi.filter_name() is None:
        return "FILTER1/FILTER2 missing"
    if "DATE-OBS" not in fi.phu or fi.ut_datetime() is None:
        return "DATE-OBS missing"
    if fi.exposure_time() is None:
        return "EXPTIME missing or negative"
    return None


def prepare(frame: Frame) -> Frame:
    """Validate a raw GSAOI frame and standardise its headers (DRAGONS ``prepare``).

    Adds ORIGNAME, PROCSOFT, FILTER, PIXSCALE to the PHU and EXTNAME/EXTVER, GAIN, RDNOISE,
    SATLEVEL, NONLINEA and BUNIT to each array; renames RADECSYS to RADESYS; applies the
    central-ROI row fix (CCDSEC/DETSEC one row up for arrays 0-1, down for 2-3, data taken
    on or after 2013-05-13).

    Raises
    ------
    ReductionError
        If the frame is not GSAOI, lacks 4 arrays, or its read mode / arrays are unknown.
    """
    fi = info(frame)
    name = frame.orig_filename or frame.filename
    problem = check_frame(fi)
    if problem:
        raise ReductionError(f"{name}: {problem}")
    indices = frame.meta.get("indices", tuple(range(len(frame.arrays))))
    if len(indices) != len(frame.arrays) or not set(indices) <= {0, 1, 2, 3} or (
            "indices" not in frame.meta and len(frame.arrays) != 4):
        raise ReductionError(f"{name}: has {len(frame.arrays)} arrays; GSAOI needs 4")
    if "PREPARED" in fi.tags:
        raise ReductionError(f"{name}: already prepared")
    gains, rns = fi.gain(), fi.read_noise()
    sats, nonlins = fi.saturation_level(), fi.non_linear_level()
    phu = frame.phu.copy()
    phu["ORIGNAME"] = (frame.orig_filename or frame.filename, "Original filename")
    phu["PROCSOFT"] = ("gsaoi_watch", "Data reduction software")
    phu["PROCSVER"] = (__version__, "Data reduction software version")
    phu["PROCMODE"] = ("sq", "Processing mode")
    phu["FILTER"] = (fi.filter_name(pretty=True), "Filter name")
    scale = fi.pixel_scale()
    if scale:
        phu["PIXSCALE"] = (round(scale, 6), "Pixel scale in arcsec/pixel")
    phu.remove("BUNIT", ignore_missing=True)
    roi_fix = str(phu.get("DATE-OBS", "")) >= instrument.ROI_FIX_DATE
    arrays = []
    for i, arr in enumerate(frame.arrays):
        h = arr.header.copy()
        h["EXTNAME"], h["EXTVER"] = "SCI", i + 1
        if "RADECSYS" in h:
            h["RADESYS"] = h["RADECSYS"]
            del h["RADECSYS"]
        h["BUNIT"] = ("adu", "Physical units of the array values")
        h["GAIN"] = (gains[i], "Gain (e-/ADU)")
        h["RDNOISE"] = (rns[i], "Read noise (e-)")
        h["SATLEVEL"] = (sats[i], "Saturation level (ADU)")
        h["NONLINEA"] = (nonlins[i], "Non-linear level (ADU)")
        if roi_fix and _is_central_roi(h):
            dy = 1 if indices[i] in (0, 1) else -1
            h["CCDSEC"] = _shift_rows(h["CCDSEC"], dy)
            h["DETSEC"] = _shift_rows(h["DETSEC"], dy)
        arrays.append(arr.with_(sci=np.asarray(arr.sci, dtype=np.float32), header=h))
    out = frame.with_(phu=phu, arrays=tuple(arrays),
                      orig_filename=frame.orig_filename or frame.filename)
    out = mark(out, "SDZHDRSI", "_prepared", "standardizeInstrumentHeaders")
    return mark(out, "PREPARE", "_prepared", "UT time stamp for prepare")


def _crop_bpm(bpm_array, header):
    sec = parse_section(header.get("CCDSEC"))
    if sec is None:
        raise ReductionError(f"CCDSEC {header.get('CCDSEC')!r} is not an image section")
    if bpm_array.shape == (sec.y2 - sec.y1, sec.x2 - sec.x1):
        return bpm_array
    return bpm_array[sec.y1:sec.y2, sec.x1:sec.x2]


def add_dq(frame: Frame, *, bpm: Any = None, hidden_saturation: bool = True) -> Frame:
    """Create the DQ planes: static BPM, saturated (4), non-linear (2), hidden saturation.

    Parameters
    ----------
    frame : Frame
        A prepared frame in ADU.
    bpm : sequence of ndarray, optional
        Static bad-pixel mask per array (full array; cropped to the frame's CCDSEC).
    hidden_saturation : bool
        Flag small connected regions below the non-linear level (saturated star cores
        that read low) as saturated, as DRAGONS does.
    """
    arrays = []
    for i, arr in enumerate(frame.arrays):
        sci = arr.sci
        dq = np.zeros(sci.shape, dtype=np.uint16)
        if bpm is not None:
            index = frame.meta.get("indices", range(len(frame.arrays)))[i]
            dq |= _crop_bpm(np.asarray(bpm[index]), arr.header).astype(np.uint16)
        sat = float(arr.header["SATLEVEL"])
        nonlin = float(arr.header["NONLINEA"])
        saturated = sci >= sat
        dq[saturated] |= DQ["saturated"]
        non_linear = (sci >= nonlin) & ~saturated
        dq[non_linear] |= DQ["non_linear"]
        if hidden_saturation and (saturated.any() or non_linear.any()):
            labels, n = ndimage.label(sci < nonlin)
            if n:
                sizes = np.bincount(labels.ravel())
                small = sizes <= hidden_saturation_area(sci.size)
                small[0] = False
                dq[small[labels]] |= DQ["saturated"]
        arrays.append(arr.with_(dq=dq))
    out = frame.with_(arrays=tuple(arrays))
    if bpm is not None:
        out.phu["BPMUSED"] = (frame.meta.get("bpm_name", "static BPM"), "Static bad pixel mask")
    return mark(out, "ADDDQ", "_dqAdded", "UT time stamp for addDQ")


def nonlinearity_correct(frame: Frame) -> Frame:
    """Correct the GSAOI non-linearity: linear = a0 c + a1 c^2 + a2 c^3 with c in electrons."""
    fi = info(frame)
    coeffs = fi.nonlinearity_coeffs()
    arrays = []
    for i, arr in enumerate(frame.arrays):
        gain = float(arr.header["GAIN"])
        a0, a1, a2 = coeffs[i]

        def lin(adu: np.ndarray, a0: float = a0, a1: float = a1, a2: float = a2,
                gain: float = gain) -> np.ndarray:
            c = np.asarray(adu, dtype=np.float64) * gain
            return (c * (a0 + c * (a1 + c * a2))) / gain

        sci = lin(arr.sci).astype(np.float32)
        h = arr.header.copy()
        h["SATLEVEL"] = round(float(lin(h["SATLEVEL"])), 3)
        h["NONLINEA"] = round(float(lin(h["NONLINEA"])), 3)
        arrays.append(arr.with_(sci=sci, header=h))
    return mark(frame.with_(arrays=tuple(arrays)), "LINCORR", "_nonlinearityCorrected",
                "UT time stamp for nonlinearityCorrect")


def adu_to_electrons(frame: Frame) -> Frame:
    """Multiply each array by its gain; BUNIT becomes 'electron' and GAIN 1."""
    arrays = []
    for arr in frame.arrays:
        gain = float(arr.header["GAIN"])
        h = arr.header.copy()
        h["SATLEVEL"] = (round(float(h["SATLEVEL"]) * gain, 3), "Saturation level (electron)")
        h["NONLINEA"] = (round(float(h["NONLINEA"]) * gain, 3), "Non-linear level (electron)")
        h["BUNIT"] = "electron"
        h["GAIN"] = 1.0
        var = None if arr.var is None else (arr.var * np.float32(gain**2)).astype(np.float32)
        arrays.append(arr.with_(sci=(arr.sci * np.float32(gain)).astype(np.float32), var=var,
                                header=h))
    return mark(frame.with_(arrays=tuple(arrays)), "ADUTOELE", "_ADUToElectrons",
                "UT time stamp for ADUToElectrons")


def add_var(frame: Frame, *, read_noise: bool = True, poisson_noise: bool = True) -> Frame:
    """Add a variance plane: read noise squared plus Poisson (data in electrons)."""
    coadds = info(frame).coadds()
    arrays = []
    for arr in frame.arrays:
        var = np.zeros(arr.shape, dtype=np.float32) if arr.var is None else arr.var.copy()
        if read_noise:
            var += np.float32(float(arr.header["RDNOISE"]) ** 2)
        if poisson_noise:
            var += np.maximum(arr.sci, 0) / np.float32(coadds)
        arrays.append(arr.with_(var=var.astype(np.float32)))
    out = frame.with_(arrays=tuple(arrays))
    out.phu["VARNOISE"] = (", ".join(k for k, v in (("read", read_noise),
                                                    ("Poisson", poisson_noise)) if v),
                           "Noise components in VAR")
    return mark(out, "ADDVAR", "_varAdded", "UT time stamp for addVAR")
