"""addLatencyToDQ: pixels left saturated or non-linear by earlier frames get DQ bit 8.

What DRAGONS does (``geminidr/core/primitives_nearIR.py`` ``addLatencyToDQ``, called at the
end of ``addDQ`` when ``latency`` is on; GSAOI's addDQ sets ``latency=True``,
``non_linear=True``, ``time=900``):

- ``flags = saturated (4) | non_linear (2)`` (``non_linear=False``: saturated only);
- the times are ``ut_datetime()``, the UT *start* of each frame (DATE-OBS + UT); a frame
  ``B`` affects frame ``A`` when ``t_B < t_A`` and ``t_A - t_B < time`` (strictly, start to
  start, exposure times play no part), among the frames given to the same call, in any
  order;
- each affecting frame's DQ is cut to ``A``'s sections (``gt.clip_auxiliary_data(...,
  aux_type='bpm')``, which matches extensions by detector section and cuts by array
  section), and ``A.DQ |= where(B.DQ & flags, 8, 0)``: bit 8 is ``cosmic_ray``, which stacks
  reject;
- no time stamp of its own: the suffix it sets (``_latencyAdded``) is replaced by
  ``_dqAdded`` and the ADDDQ stamp is written after it; it logs "A affected by B, C".

Here the same rule works on records of the earlier frames (:class:`LatencyMask`), so a
frame can be flagged as soon as it arrives, from the frames before it, without keeping their
pixels.  Frames are matched in detector coordinates (DETSEC, after prepare's central-ROI
row fix): a full-frame earlier frame flags the part of an ROI frame it covers, and an
earlier ROI frame flags the part of a later full frame it covers.  For the second case
DRAGONS' ``clip_auxiliary_data`` finds no extension whose detector section contains the
later frame's and raises ("No auxiliary data ... matches the detector section"), although
the comment in addLatencyToDQ says that is what ``aux_type='bpm'`` is for; this module does
what the comment intends.  Not a DRAGONS keyword: ``LATENCY`` (number of earlier frames
within ``time``) and ``LATIM001``... (their names) in the PHU record what was applied.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gsaoi_watch.data.sections import Section, parse_section
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.standardize import info, required

__all__ = ["LATENCY_NON_LINEAR", "LATENCY_TIME", "ArrayLatency", "LatencyMask",
           "add_latency_to_dq", "apply_latency", "latency_mask"]

log = logging.getLogger(__name__)

#: GSAOI addDQ defaults (geminidr/gsaoi/parameters_gsaoi.py addDQConfig).
LATENCY_TIME = 900.0
LATENCY_NON_LINEAR = True


@dataclass(frozen=True)
class ArrayLatency:
    """The bright pixels of one array of a prepared frame, in detector coordinates.

    Attributes
    ----------
    detsec : Section
        The array's DETSEC (0-based, end-exclusive), after prepare.
    saturated : ndarray of int32
        Flat indices (``y * nx + x`` in the array) of pixels with DQ bit 4.
    non_linear : ndarray of int32
        Flat indices of pixels with DQ bit 2.
    """

    detsec: Section
    saturated: np.ndarray
    non_linear: np.ndarray


@dataclass(frozen=True)
class LatencyMask:
    """What addLatencyToDQ needs of an earlier frame: its name, UT start and bright pixels.

    A few kilobytes for a frame with saturated stars, so a whole sequence's can be kept.
    """

    filename: str
    ut: dt.datetime
    arrays: tuple[ArrayLatency, ...]


def _detsec(header, name: str) -> Section:
    sec = parse_section(header.get("DETSEC"))
    if sec is None:
        raise ReductionError(f"{name}: DETSEC {header.get('DETSEC')!r} is not an image section")
    return sec


def latency_mask(frame: Frame) -> LatencyMask:
    """Record a frame's saturated and non-linear pixels (DQ bits 4 and 2) for later frames.

    Parameters
    ----------
    frame : Frame
        A prepared frame after addDQ (any later step: the DQ bits 2 and 4 do not change).

    Returns
    -------
    LatencyMask

    Raises
    ------
    ReductionError
        If the frame has no DQ plane, no UT start or an array no DETSEC.
    """
    fi = info(frame)
    name = frame.orig_filename or frame.filename
    arrays = []
    for arr in frame.arrays:
        sec = _detsec(arr.header, name)
        if sec.shape != arr.shape:
            raise ReductionError(f"{name}: DETSEC {sec.as_iraf()} does not match the array "
                                 f"shape {arr.shape}")
        dq = arr.need("dq").reshape(-1)
        arrays.append(ArrayLatency(
            detsec=sec,
            saturated=np.flatnonzero(dq & DQ["saturated"]).astype(np.int32),
            non_linear=np.flatnonzero(dq & DQ["non_linear"]).astype(np.int32)))
    return LatencyMask(filename=name, ut=required(fi.ut_datetime(), fi, "DATE-OBS/UT"),
                       arrays=tuple(arrays))


def _latent_pixels(sec: Section, src: ArrayLatency, non_linear: bool
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, x) in the array at ``sec`` of the bright pixels of ``src`` that fall on it."""
    if not (src.detsec.x1 < sec.x2 and sec.x1 < src.detsec.x2
            and src.detsec.y1 < sec.y2 and sec.y1 < src.detsec.y2):
        return None
    index = src.saturated
    if non_linear and len(src.non_linear):
        index = np.concatenate([index, src.non_linear])
    if not len(index):
        return None
    y, x = np.divmod(index.astype(np.int64), src.detsec.x2 - src.detsec.x1)
    x = x + (src.detsec.x1 - sec.x1)
    y = y + (src.detsec.y1 - sec.y1)
    ny, nx = sec.shape
    inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    return (y[inside], x[inside]) if inside.any() else None


def add_latency_to_dq(frame: Frame, earlier: Sequence[LatencyMask], *,
                      time: float = LATENCY_TIME,
                      non_linear: bool = LATENCY_NON_LINEAR) -> Frame:
    """DRAGONS ``addLatencyToDQ`` for one frame: earlier frames' bright pixels -> DQ bit 8.

    Parameters
    ----------
    frame : Frame
        A frame after addDQ.
    earlier : sequence of LatencyMask
        Records of other frames (:func:`latency_mask`); those whose UT start is before this
        frame's by less than ``time`` seconds are used, the rest (this frame's own, later
        ones) ignored, as DRAGONS does with its input list.
    time : float
        Seconds, UT start to UT start, within which a frame affects later ones.
    non_linear : bool
        Propagate the non-linear pixels (bit 2) as well as the saturated ones (bit 4).

    Returns
    -------
    Frame
        A new frame (the input is not modified) whose DQ has bit 8 (cosmic_ray) where an
        affecting frame's pixel, mapped through DETSEC, was saturated (or non-linear);
        PHU ``LATENCY`` (how many frames) and ``LATIM001``... (their names).
    """
    fi = info(frame)
    name = frame.orig_filename or frame.filename
    t = required(fi.ut_datetime(), fi, "DATE-OBS/UT")
    window = dt.timedelta(seconds=time)
    sources = sorted((m for m in earlier if m.ut < t and t - m.ut < window),
                     key=lambda m: m.ut)
    arrays = []
    for arr in frame.arrays:
        dq = arr.need("dq")
        sec = _detsec(arr.header, name)
        hits = [p for m in sources for src in m.arrays
                if (p := _latent_pixels(sec, src, non_linear)) is not None]
        if hits:  # a copy only when something is flagged (flats rarely saturate)
            dq = dq.copy()
            for y, x in hits:
                dq[y, x] |= np.uint16(DQ["cosmic_ray"])
        arrays.append(arr.with_(dq=dq))
    out = frame.with_(arrays=tuple(arrays))
    for key in [k for k in out.phu if k.startswith("LATIM")]:
        del out.phu[key]
    out.phu["LATENCY"] = (len(sources), f"Earlier frames < {time:g} s flagged (latency)")
    for k, m in enumerate(sources, start=1):
        out.phu[f"LATIM{k:03d}"] = (m.filename, "Earlier frame flagged for latency")
    if sources:  # DRAGONS' log lines, at debug level (flats repeat them for every array)
        log.debug("frame=%s affected by %s", name, ",".join(m.filename for m in sources))
    else:
        log.debug("frame=%s is not affected by latency", name)
    return out


def apply_latency(frames: Sequence[Frame], *, time: float = LATENCY_TIME,
                  non_linear: bool = LATENCY_NON_LINEAR) -> list[Frame]:
    """Run addLatencyToDQ over a list of frames, as DRAGONS runs it on its inputs.

    Every frame is flagged from the other frames of the list (in any order) that started
    less than ``time`` seconds before it.  Returns new frames, in the input order.
    """
    masks = [latency_mask(f) for f in frames]
    return [add_latency_to_dq(f, masks, time=time, non_linear=non_linear) for f in frames]
