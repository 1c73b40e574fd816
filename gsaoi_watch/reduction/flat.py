"""Flat-field steps: makeLampFlat, normalizeFlat, thresholdFlatfield, flatCorrect."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.reduction.combine import stack_arrays
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.standardize import info, mark, required

__all__ = [
    'flat_correct', 'make_lamp_flat', 'normalize_flat', 'threshold_flatfield',
]


def make_lamp_flat(frames: Sequence[Frame], *, hsigma: float = 3.0,
                   lsigma: float = 3.0) -> Frame:
    """Lamp-on stack minus lamp-off stack (3-sigma clipped means); all frames below 1.4 um.

    The result keeps the first lamp-on frame's headers and name, as DRAGONS does.
    """
    if not frames:
        raise ReductionError("makeLampFlat: no input frames")
    tags = [info(f).tags for f in frames]
    on = [f for f, t in zip(frames, tags) if "LAMPON" in t]
    off = [f for f, t in zip(frames, tags) if "LAMPOFF" in t]
    wave = info(frames[0]).effective_wavelength()
    if wave is None:
        raise ReductionError(f"{frames[0].orig_filename}: filter "
                             f"{info(frames[0]).filter_name(pretty=True)!r} has no known "
                             "effective wavelength")
    first = on[0] if on else frames[0]
    n_arr = len(first.arrays)

    def stack(group: Sequence[Frame]) -> list[Array]:
        return [stack_arrays([f.arrays[i] for f in group], hsigma=hsigma, lsigma=lsigma)
                for i in range(n_arr)]

    if wave < 1.4 or not off or not on:
        arrays = stack(frames if wave < 1.4 or not on else on)
        note = f"mean of {len(frames) if wave < 1.4 or not on else len(on)} frames"
    else:
        texp_on = {required(info(f).exposure_time(), info(f), "EXPTIME") for f in on}
        texp_off = {required(info(f).exposure_time(), info(f), "EXPTIME") for f in off}
        if texp_on != texp_off:
            first.meta.setdefault("warnings", []).append(
                f"lamp-on exposure times {sorted(texp_on)} differ from lamp-off "
                f"{sorted(texp_off)}")
        a_on, a_off = stack(on), stack(off)
        arrays = [a.with_(sci=a.sci - b.sci, var=a.need("var") + b.need("var"),
                          dq=a.need("dq") | b.need("dq"))
                  for a, b in zip(a_on, a_off)]
        note = f"{len(on)} lamp-on minus {len(off)} lamp-off"
    out = first.with_(arrays=tuple(arrays))
    out.phu["NCOMBINE"] = (len(frames), "Number of frames combined")
    out.phu["FLATMETH"] = (note, "How the lamp flat was made")
    return mark(out, "LAMPFLAT", "_lampstack", "UT time stamp for makeLampFlat")


def normalize_flat(frame: Frame) -> Frame:
    """Divide every array by one median of the good (DQ == 0) pixels of all arrays."""
    good = np.concatenate([a.sci[a.dq == 0] for a in frame.arrays])
    if good.size == 0:
        raise ReductionError(f"{frame.orig_filename}: no good pixels to normalise the flat")
    norm = np.float32(np.median(good))
    if not norm > 0:
        raise ReductionError(f"{frame.orig_filename}: flat median {norm} is not positive")
    arrays = tuple(a.with_(sci=a.sci / norm, var=a.var / norm**2) for a in frame.arrays)
    out = frame.with_(arrays=arrays)
    out.phu["FLATNORM"] = (float(norm), "Median used to normalise the flat")
    return mark(out, "NORMLIZE", "_normalized", "UT time stamp for normalizeFlat")


def threshold_flatfield(frame: Frame, *, lower: float = 0.01, upper: float = 10.0) -> Frame:
    """Flag flat values outside [lower, upper] as unilluminated (64) and set them to 1."""
    arrays = []
    for a in frame.arrays:
        dq = a.dq.copy()
        outside = ((a.sci > upper) | (a.sci < lower)) & ((dq & DQ["bad_pixel"]) == 0)
        dq[outside] |= DQ["unilluminated"]
        sci = a.sci.copy()
        sci[((dq & DQ["unilluminated"]) != 0) | (sci < lower)] = 1.0
        arrays.append(a.with_(sci=sci, dq=dq))
    return mark(frame.with_(arrays=tuple(arrays)), "TRHFLAT", "_thresholdFlatfielded",
                "UT time stamp for thresholdFlatfield")


def _crop_to(flat_arr: Array, sci_arr: Array) -> Array:
    """Cut a full-frame flat array to a science array's section (DETSEC containment)."""
    if flat_arr.shape == sci_arr.shape:
        return flat_arr
    fsec = parse_section(flat_arr.header.get("CCDSEC"))
    ssec = parse_section(sci_arr.header.get("CCDSEC"))
    if fsec is None or ssec is None or not fsec.contains(ssec):
        raise ReductionError(f"flat section {flat_arr.header.get('CCDSEC')} does not contain "
                             f"the frame's {sci_arr.header.get('CCDSEC')}")
    y0, x0 = ssec.y1 - fsec.y1, ssec.x1 - fsec.x1
    sl = (slice(y0, y0 + ssec.shape[0]), slice(x0, x0 + ssec.shape[1]))
    return flat_arr.with_(sci=flat_arr.sci[sl], var=flat_arr.need("var")[sl],
                          dq=flat_arr.need("dq")[sl])


def flat_correct(frame: Frame, flat: Frame, *, flat_name: str | None = None) -> Frame:
    """Divide by a processed flat, cropping a full-frame flat to an ROI frame.

    The flat must have the same raw filter name (FILTER1&FILTER2) as the frame.  Variances
    propagate as for uncorrelated quotients; DQ planes are OR-ed.
    """
    fi, ff = info(frame), info(flat)
    name = frame.orig_filename or frame.filename
    if fi.filter_name() != ff.filter_name():
        raise ReductionError(f"{name}: flat filter {ff.filter_name()!r} does not match the "
                             f"frame's {fi.filter_name()!r}")
    by_id = {a.header.get("ARRAYID"): a for a in flat.arrays}
    arrays = []
    for a in frame.arrays:
        f = by_id.get(a.header.get("ARRAYID"))
        if f is None:
            raise ReductionError(f"{name}: flat has no array {a.header.get('ARRAYID')}")
        f = _crop_to(f, a)
        sci = a.sci / f.sci
        f_var, f_dq = f.need("var"), f.need("dq")
        var = (a.var / f.sci**2 + a.sci**2 * f_var / f.sci**4) if a.var is not None else None
        dq = (a.dq | f_dq) if a.dq is not None else f_dq.copy()
        arrays.append(a.with_(sci=sci.astype(np.float32),
                              var=None if var is None else var.astype(np.float32), dq=dq))
    out = frame.with_(arrays=tuple(arrays))
    out.phu["FLATIM"] = (flat_name or flat.filename, "Flat field image used")
    return mark(out, "FLATCORR", "_flatCorrected", "UT time stamp for flatCorrect")

