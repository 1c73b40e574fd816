"""QA values as product header keywords and as one log line."""

from __future__ import annotations

import math

import numpy as np

from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.qa import FrameQA

__all__ = ['qa_header', 'qa_log_line']

def _fmt(value, spec):
    return format(value, spec) if value is not None and math.isfinite(value) else "nan"


def qa_header(frame: Frame, qa: FrameQA) -> Frame:
    """Return a copy of ``frame`` with the QA values as primary-header keywords.

    MEANFWHM (arcsec), FWHMZEN, MEANELLP, STREHL, IQNSTARS, AOSEEING; SKYLEVEL
    (e-/s/pixel), SKYMAG (mag/arcsec^2); for a standard ZP_ARRn (array n = 1-4), MEANZP,
    CLOUDEXT (mag).  Values that could not be measured are left out.

    The requirements (:mod:`gsaoi_watch.reduction.requirements`), for M = IQ, CC, BG:
    MBAND the achieved band (left out when undetermined: a value that is not physical gets
    no band), MREQ the requested band, MMET 'MET', 'NOT MET' or 'UNDETERMINED', MPMET the
    probability that the requested band was achieved, MNOTE why it is undetermined.
    """
    out = frame.with_()
    h = out.phu

    def put(key, value, comment, digits=4):
        if value is None:
            return
        if isinstance(value, str):
            h[key] = (value, comment)
        elif math.isfinite(value):
            h[key] = (round(float(value), digits), comment)

    if qa.iq is not None and qa.iq.n_stars:
        put("MEANFWHM", qa.iq.fwhm, "Mean point-source FWHM (arcsec)")
        put("FWHMZEN", qa.iq.fwhm_zenith, "Mean FWHM corrected to zenith (arcsec)")
        put("MEANELLP", qa.iq.ellipticity, "Mean point-source ellipticity")
        put("STREHL", qa.iq.strehl, "Mean Strehl ratio")
        h["IQNSTARS"] = (qa.iq.n_stars, "Point sources used for image quality")
        put("AOSEEING", qa.iq.seeing, "Natural seeing estimate (arcsec)")
    if qa.bg is not None:
        put("SKYLEVEL", qa.bg.rate, "Sky background (e-/s/pixel)", 3)
        put("SKYMAG", qa.bg.mag, "Sky background (mag/arcsec2)", 3)
    for z in qa.zeropoints:
        put(f"ZP_ARR{z.array + 1}", z.zp, f"Zero point of array {z.array + 1} (mag)")
    if qa.zeropoints:
        put("MEANZP", float(np.mean([z.zp for z in qa.zeropoints])), "Mean zero point (mag)")
    if qa.cc is not None:
        put("CLOUDEXT", qa.cc.extinction, "Cloud extinction (mag)")
    for metric, name in (("iq", "Image quality"), ("cc", "Cloud cover"),
                         ("bg", "Sky background")):
        v = qa.requirements.get(metric)
        if v is None:
            continue
        m = metric.upper()
        put(f"{m}BAND", v.band_name, f"{name} band achieved")
        put(f"{m}REQ", v.requested_name, f"{name} band requested")
        h[f"{m}MET"] = (v.state.upper(), f"{name} requirement")
        put(f"{m}PMET", v.probability, "P(requested band achieved)", 3)
        if v.reason:  # the whole card is the reason (no room for a comment)
            h[f"{m}NOTE"] = _card_text(v.reason)
    return out


#: Characters of a string value that fit in one 80-character card with its quotes.
_NOTE_LENGTH = 68


def _card_text(text: str) -> str:
    """ASCII text cut to fit one card (a quote counts twice: FITS doubles it)."""
    out = text.encode("ascii", "replace").decode("ascii")
    while len(out) + out.count("'") > _NOTE_LENGTH:
        out = out[:-1]
    return out


def qa_log_line(qa: FrameQA) -> str:
    """One log line for a frame: IQ, BG and (for a standard) zero points and CC."""
    parts = [qa.filename]
    req = qa.requirements
    iq = qa.iq

    def verdict(metric, fallback):
        v = req.get(metric)
        return v.summary() if v is not None else fallback

    if iq is not None and iq.n_stars:
        parts.append(f"FWHM {_fmt(iq.fwhm, '.3f')}\" (zenith {_fmt(iq.fwhm_zenith, '.3f')}\") "
                     f"ellip {_fmt(iq.ellipticity, '.3f')} Strehl {_fmt(iq.strehl, '.3f')} "
                     f"from {iq.n_stars} stars, " + verdict("iq", iq.band))
    else:
        parts.append("IQ: no point sources" + (f"; requested {req['iq'].requested_name}"
                                              if "iq" in req and req["iq"].requested
                                              else ""))
    if qa.bg is not None:
        parts.append(f"BG {_fmt(qa.bg.rate, '.2f')} e-/s/pix = {_fmt(qa.bg.mag, '.2f')} "
                     f"mag/arcsec2, " + verdict("bg", qa.bg.band))
    if qa.standard is not None:
        zps = ", ".join(f"ZP array {z.array + 1} {z.zp:.3f}+-{z.zp_err:.3f} "
                        f"(nominal {_fmt(z.nominal, '.3f')})" for z in qa.zeropoints)
        parts.append(f"standard {qa.standard}: " + (zps or "no zero point"))
        if qa.cc is not None:
            parts.append(f"cloud {_fmt(qa.cc.extinction, '.3f')} mag, "
                         + verdict("cc", qa.cc.band))
    parts.extend(qa.notes)
    return " | ".join(parts)

