"""Achieved against requested observing conditions: DRAGONS' QA verdicts, and their physics.

A programme asks for observing conditions as percentile bands (the raw PHU's ``REQIQ``,
``REQCC``, ``REQBG``, ``REQWV``: ``'70-percentile'``, ``'Any'``).  The quick-look QA measures
the image quality, the cloud extinction and the sky brightness of each reduced frame
(:mod:`gsaoi_watch.reduction.qa`); this module turns them into bands with DRAGONS' limits
(``geminidr/gemini/lookups/qa_constraints.py``, kept in
:mod:`gsaoi_watch.instrument.tables`) and a verdict against the request, as DRAGONS 4.2.2's
``measureIQ``, ``measureCC`` and ``measureBG`` do (``../shared/gsaoi_facts.md`` section 7.1):

- the value is a Normal distribution (its measured scatter as sigma); the probability of each
  band is computed and bands under 5 % dropped;
- the requirement is **not met** when the probability that the achieved band is at least as
  good as the requested one is under 5 % ("not met at the 95 % confidence level"; without an
  uncertainty: when the achieved band is worse); **met** otherwise (DRAGONS gives no warning
  then), with that probability kept as the confidence;
- **undetermined** (``met`` None) when nothing was requested or nothing measurable was found,
  and when the measured value is not physical for the data.  DRAGONS would report a band for
  any number; here a value that a real GSAOI frame cannot give is named as such instead
  (:func:`physics_problems`): a pixel scale that is not GSAOI's (then FWHM and surface
  brightness in arcsec mean nothing), too few stars, a FWHM under the diffraction limit, a
  Strehl ratio above 1, a sky brightness outside what the near-IR sky at Cerro Pachon gives,
  a zero point far brighter than nominal.

GSAOI's own checks of DRAGONS' ``measureIQ`` are kept as warnings: an AO FWHM over 0.2"
("very poor image quality") and a Strehl ratio inconsistent with the FWHM.

Pure functions of a :class:`~gsaoi_watch.reduction.container.Frame` and its
:class:`~gsaoi_watch.reduction.qa.FrameQA`: no I/O, no logging.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.instrument.tables import (
    AO_IQ_BANDS,
    BG_BANDS,
    CC_BANDS,
    NATURAL_IQ_BANDS,
    NOMINAL_PIXEL_SCALE,
    SKY_BRIGHTNESS_RANGE,
    TELESCOPE_APERTURE,
)

__all__ = [
    'MIN_IQ_STARS', 'Verdict', 'band_name', 'band_of', 'band_probabilities', 'check_requirements',
    'judge', 'parse_requested', 'requested_bands',
]

#: Point sources needed before an IQ band is given on a science frame (two stars' FWHM
#: scatter is no uncertainty, and a galaxy nucleus or a blend passes for a star too easily).
#: On a standard-star frame the standard alone is enough: a bright isolated star, what
#: DRAGONS measures there (a 1024-pixel ROI of the standard field rarely holds another).
MIN_IQ_STARS = 3

#: Probability under which a band is dropped and a requirement is "not met" (DRAGONS: 5 %).
CONFIDENCE_CUT = 0.05

#: A pixel scale further than this from GSAOI's (relative) is not GSAOI's.
PIXEL_SCALE_TOLERANCE = 0.10

#: DRAGONS' GSAOI limit of a good AO FWHM (arcsec): over it, "very poor image quality".
AO_FWHM_WARNING = 0.2

#: DRAGONS' Strehl-FWHM relation: log10(S * FWHM**1.5 / lambda**2.285) = -3.0, with a
#: 0.15 dex intrinsic scatter, checked at 3 sigma (FWHM in arcsec, lambda in micrometres).
STREHL_FWHM_CONSTANT = -3.0
STREHL_FWHM_SCATTER = 0.15

#: A measured FWHM below this fraction of the diffraction-limited FWHM is not a star's.
DIFFRACTION_MARGIN = 0.8

#: A zero point brighter than nominal by more than this (mag) is not cloud but an error.
NEGATIVE_EXTINCTION_LIMIT = 0.2

_METRICS = {"iq": "IQ", "cc": "CC", "bg": "BG", "wv": "WV"}
_REQUEST_KEYS = {"iq": "REQIQ", "cc": "REQCC", "bg": "REQBG", "wv": "REQWV"}
_PERCENTILE = re.compile(r"^\s*(\d{1,3})\s*(?:-?\s*percentile|%)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """One requirement of one frame: achieved against requested.

    Attributes
    ----------
    metric : str
        ``'iq'``, ``'cc'``, ``'bg'`` or ``'wv'``.
    value, error : float or None
        What the band is judged on: IQ the natural-seeing estimate at zenith (arcsec; 7 x
        the AO FWHM), CC the cloud extinction (mag), BG the sky brightness (mag/arcsec^2).
    unit : str
    band : int or None
        The achieved percentile band (100 is "Any"); None when undetermined.
    requested : int or None
        The requested percentile band (100 is "Any"); None when not recorded.
    met : bool or None
        The verdict; None when undetermined.
    probability : float or None
        Probability that the achieved band is the requested one or better.
    bands : tuple of (int, float)
        The bands with their probabilities (those of at least 5 %).
    reason : str or None
        Why the verdict is undetermined (or what made the value unusable).
    warnings : tuple of str
        DRAGONS' GSAOI warnings (poor AO image quality, Strehl inconsistent with FWHM).
    limits : dict
        The band limits used, ``{percentile: limit}``.
    measured : dict
        The measurements behind the value (FWHM, Strehl, zero point, ...), for display.
    """

    metric: str
    value: float | None
    error: float | None
    unit: str
    band: int | None
    requested: int | None
    met: bool | None
    probability: float | None = None
    bands: tuple = ()
    reason: str | None = None
    warnings: tuple = ()
    limits: Mapping[int, float] = field(default_factory=dict)
    measured: Mapping[str, Any] = field(default_factory=dict)

    @property
    def band_name(self) -> str | None:
        """The achieved band as DRAGONS names it ('IQ70', 'IQAny'), None if undetermined."""
        return band_name(self.metric, self.band)

    @property
    def requested_name(self) -> str | None:
        """The requested band as DRAGONS names it, None if not recorded."""
        return band_name(self.metric, self.requested)

    @property
    def state(self) -> str:
        """``'met'``, ``'not met'`` or ``'undetermined'``."""
        return {True: "met", False: "not met", None: "undetermined"}[self.met]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what the database and ``/api/frames`` carry)."""
        return {
            "value": _finite(self.value), "error": _finite(self.error), "unit": self.unit,
            "band": self.band_name, "requested": self.requested_name, "met": self.met,
            "state": self.state, "probability": _finite(self.probability),
            "bands": {band_name(self.metric, b): round(p, 4) for b, p in self.bands},
            "reason": self.reason, "warnings": list(self.warnings),
            "limits": {str(k): v for k, v in self.limits.items()},
            "measured": {k: _finite(v) if isinstance(v, float) else v
                         for k, v in self.measured.items()},
        }

    def summary(self) -> str:
        """A few words for the QA line: 'IQ70 (requested IQ20: NOT MET)'."""
        name = _METRICS[self.metric]
        if self.met is None:
            asked = f" (requested {self.requested_name})" if self.requested_name else ""
            return f"{name} undetermined{asked}: {self.reason}"
        word = "met" if self.met else "NOT MET"
        conf = ""
        if self.probability is not None and self.error:
            conf = f", {100 * (self.probability if self.met else 1 - self.probability):.0f}%"
        return f"{self.band_name} (requested {self.requested_name}: {word}{conf})"


def _finite(value):
    return float(value) if value is not None and math.isfinite(value) else None


def band_name(metric: str, band: int | None) -> str | None:
    """DRAGONS' name of a percentile band: ``band_name('iq', 70)`` is 'IQ70', 100 'IQAny'."""
    if band is None:
        return None
    return f"{_METRICS[metric]}{'Any' if band >= 100 else band}"


def parse_requested(value: Any) -> int | None:
    """The percentile of a requested-conditions keyword ('70-percentile' 70, 'Any' 100).

    Like DRAGONS' ``requested_iq()`` etc.; None for a missing, empty or unreadable value
    ('UNKNOWN', a number outside 1-100).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return int(value) if 0 < value <= 100 else None
    text = str(value).strip()
    if text.lower() in ("any", "100-percentile"):
        return 100
    m = _PERCENTILE.match(text)
    if m and 0 < int(m.group(1)) <= 100:
        return int(m.group(1))
    return None


def requested_bands(phu: Mapping[str, Any]) -> dict[str, int | None]:
    """The requested bands of a frame's PHU: ``{'iq': 70, 'cc': 50, 'bg': 100, 'wv': None}``."""
    return {m: parse_requested(phu.get(k)) for m, k in _REQUEST_KEYS.items()}


def band_probabilities(value: float, error: float | None, limits: Mapping[int, float], *,
                       higher_is_better: bool = False) -> dict[int, float]:
    """Probability of each percentile band for a Normal(value, error) measurement.

    Band ``p`` holds the values between the previous band's limit and its own (``<=`` the
    limit for IQ and CC, ``>=`` for BG where a fainter sky is better); 100 ("Any") the rest.
    With no (or zero) error the band containing ``value`` has probability 1.

    Returns
    -------
    dict
        ``{percentile: probability}`` over the bands of ``limits`` and 100, summing to 1.
    """
    order = sorted(limits)
    sigma = error if error is not None and math.isfinite(error) and error > 0 else 0.0

    def below(x):  # P(measured value is at least as good as limit x)
        if sigma == 0.0:
            return float(value >= x) if higher_is_better else float(value <= x)
        z = (value - x) / sigma
        return float(stats.norm.sf(-z)) if higher_is_better else float(stats.norm.cdf(-z))

    probs, previous = {}, 0.0
    for pct in order:
        cum = max(below(limits[pct]), previous)
        probs[pct] = cum - previous
        previous = cum
    probs[100] = 1.0 - previous
    return probs


def judge(metric: str, value: float | None, error: float | None, requested: int | None,
          limits: Mapping[int, float], *, unit: str, higher_is_better: bool = False,
          reason: str | None = None, warnings: tuple = (),
          measured: Mapping[str, Any] | None = None) -> Verdict:
    """The band and the verdict of one measured value against a requested band.

    Parameters
    ----------
    metric : str
        ``'iq'``, ``'cc'`` or ``'bg'``.
    value, error : float or None
        The measurement and its sigma (None or 0: no uncertainty).
    requested : int or None
        Requested percentile (100 for "Any").
    limits : mapping
        Band limits ``{percentile: limit}``.
    unit : str
        Unit of ``value``.
    higher_is_better : bool
        True for the sky brightness (a larger magnitude is a darker sky).
    reason : str, optional
        Given: the value is unusable and the verdict undetermined for this reason.
    warnings, measured
        Carried into the verdict.

    Returns
    -------
    Verdict
    """
    measured = dict(measured or {})
    common: dict[str, Any] = dict(unit=unit, limits=dict(limits), warnings=tuple(warnings),
                                  measured=measured)
    if value is None or not math.isfinite(value):
        return Verdict(metric, None, None, band=None, requested=requested, met=None,
                       reason=reason or "not measured", **common)
    if error is not None and not math.isfinite(error):
        error = None
    if reason is not None:
        return Verdict(metric, value, error, band=None, requested=requested, met=None,
                       reason=reason, **common)
    probs = band_probabilities(value, error, limits, higher_is_better=higher_is_better)
    kept = tuple((b, p) for b, p in sorted(probs.items()) if p >= CONFIDENCE_CUT)
    band = band_of(value, limits, higher_is_better=higher_is_better)
    if requested is None:
        return Verdict(metric, value, error, band=band, requested=None, met=None,
                       bands=kept, reason="requested band not recorded in the header",
                       **common)
    p_ok = sum(p for b, p in probs.items() if b <= requested)
    return Verdict(metric, value, error, band=band, requested=requested,
                   met=bool(p_ok >= CONFIDENCE_CUT), probability=min(max(p_ok, 0.0), 1.0),
                   bands=kept, **common)


def band_of(value: float, limits: Mapping[int, float], *,
            higher_is_better: bool = False) -> int:
    """The percentile band a value falls in: the best whose limit it satisfies, else 100."""
    for pct in sorted(limits):
        if (value >= limits[pct]) if higher_is_better else (value <= limits[pct]):
            return pct
    return 100


# --- physics ---------------------------------------------------------------------------------
def _scale_problem(info: FrameInfo) -> str | None:
    scale = info.pixel_scale()
    if scale is None or not math.isfinite(scale) or scale <= 0:
        return "no pixel scale in the WCS"
    if abs(scale / NOMINAL_PIXEL_SCALE - 1.0) > PIXEL_SCALE_TOLERANCE:
        return (f"not physical: pixel scale {scale:.4f}\"/pix, not GSAOI's "
                f"{NOMINAL_PIXEL_SCALE}\"")
    return None


def diffraction_fwhm(wavelength_um: float, diameter: float = TELESCOPE_APERTURE[0]) -> float:
    """FWHM (arcsec) of the diffraction-limited PSF, 1.028 lambda / D."""
    return math.degrees(1.028 * wavelength_um * 1e-6 / diameter) * 3600.0


def physics_problems(info: FrameInfo, qa: Any) -> dict[str, str]:
    """Why a frame's IQ, CC or BG value is not physical for the data, per metric.

    Parameters
    ----------
    info : FrameInfo
        Descriptors of the reduced frame.
    qa : FrameQA
        Its measurements.

    Returns
    -------
    dict
        ``{'iq': reason, 'bg': reason, 'cc': reason}`` for the metrics with a problem.
    """
    out: dict[str, str] = {}
    scale = _scale_problem(info)
    iq = qa.iq
    if scale:
        out["iq"] = out["bg"] = scale
    if iq is None or not iq.n_stars:
        out.setdefault("iq", "no point source with S/N >= 100 to measure")
    elif iq.n_stars < (1 if qa.standard else MIN_IQ_STARS):
        out.setdefault("iq", f"only {iq.n_stars} point source(s): too few for an IQ band "
                             f"(at least {MIN_IQ_STARS})")
    elif "iq" not in out:
        wave = info.effective_wavelength() or 2.15
        limit = DIFFRACTION_MARGIN * diffraction_fwhm(wave)
        if info.is_ao() and math.isfinite(iq.fwhm) and iq.fwhm < limit:
            out["iq"] = (f"not physical: FWHM {iq.fwhm:.3f}\" is under the diffraction limit "
                         f"({diffraction_fwhm(wave):.3f}\" at {wave:.2f} um)")
        elif math.isfinite(iq.strehl) and iq.strehl > 1.1:
            out["iq"] = f"not physical: Strehl ratio {iq.strehl:.2f} above 1"
    bg = qa.bg
    if bg is not None and "bg" not in out and math.isfinite(bg.mag):
        key = _filter_key(info.filter_name(pretty=True))
        low, high = SKY_BRIGHTNESS_RANGE.get(key, (-math.inf, math.inf))
        if not low <= bg.mag <= high:
            out["bg"] = (f"not physical: a {key} sky of {bg.mag:.2f} mag/arcsec2 is outside "
                         f"what the near-IR sky gives ({low}-{high})")
    cc = qa.cc
    if cc is not None and math.isfinite(cc.extinction) \
            and cc.extinction < -NEGATIVE_EXTINCTION_LIMIT:
        out["cc"] = (f"not physical: zero point {-cc.extinction:.2f} mag brighter than "
                     "nominal (wrong standard magnitude, flat or gain?)")
    return out


def _filter_key(name: str | None) -> str:
    return {"Kshort": "Ks", "Kprime": "K", "K(short)": "Ks"}.get(name or "", name or "")


def _iq_warnings(info: FrameInfo, iq: Any) -> tuple:
    """DRAGONS' GSAOI measureIQ warnings: poor AO FWHM; Strehl inconsistent with FWHM."""
    if iq is None or not iq.n_stars or not info.is_ao():
        return ()
    out = []
    if math.isfinite(iq.fwhm) and iq.fwhm > AO_FWHM_WARNING:
        out.append(f"very poor image quality: AO FWHM {iq.fwhm:.3f}\" > {AO_FWHM_WARNING}\"")
    wave = info.effective_wavelength() or 2.15
    if all(math.isfinite(v) and v > 0 for v in (iq.strehl, iq.fwhm)):
        metric = math.log10(iq.strehl * iq.fwhm ** 1.5 / wave ** 2.285)
        rel_s = (iq.strehl_std / iq.strehl) if math.isfinite(iq.strehl_std) else 0.0
        rel_f = (iq.fwhm_std / iq.fwhm) if math.isfinite(iq.fwhm_std) else 0.0
        sigma = math.sqrt(rel_s ** 2 + (1.5 * rel_f) ** 2 + STREHL_FWHM_SCATTER ** 2) \
            / math.log(10)
        if abs(metric - STREHL_FWHM_CONSTANT) > 3 * sigma:
            out.append(f"Strehl and FWHM estimates are inconsistent (log10(S FWHM^1.5 / "
                       f"lambda^2.285) = {metric:.2f}, expected {STREHL_FWHM_CONSTANT} "
                       f"+- {3 * sigma:.2f})")
    return tuple(out)


# --- the frame -------------------------------------------------------------------------------
def check_requirements(info: FrameInfo, qa: Any) -> dict[str, Verdict]:
    """The IQ, CC, BG and WV verdicts of a reduced frame.

    Parameters
    ----------
    info : FrameInfo
        Descriptors of the frame (its PHU carries REQIQ ... and AOFOLD).
    qa : FrameQA
        What :func:`gsaoi_watch.reduction.qa.frame_qa` measured on it.

    Returns
    -------
    dict
        ``{'iq': Verdict, 'cc': Verdict, 'bg': Verdict, 'wv': Verdict}``.
    """
    req = requested_bands(info.phu)
    problems = physics_problems(info, qa)
    airmass = info.airmass() or 1.0
    ao = info.is_ao()
    out: dict[str, Verdict] = {}

    iq = qa.iq
    iq_value = iq_error = None
    measured: dict[str, Any] = {}
    if iq is not None and iq.n_stars:
        iq_value = iq.seeing
        per = 7.0 if ao else 1.0
        iq_error = per * iq.fwhm_std * airmass ** -0.6 if math.isfinite(iq.fwhm_std) else None
        measured = {"fwhm": iq.fwhm, "fwhm_zenith": iq.fwhm_zenith, "strehl": iq.strehl,
                    "ellipticity": iq.ellipticity, "n_stars": iq.n_stars,
                    "ao": ao}
    limits = AO_IQ_BANDS if ao else NATURAL_IQ_BANDS.get(
        _filter_key(info.filter_name(pretty=True)), {})
    reason = problems.get("iq")
    if not limits and reason is None:
        reason = f"no natural-seeing IQ limits for filter {info.filter_name(pretty=True)}"
    # DRAGONS' IQ warnings mean nothing for a value that is not physical
    warnings = () if reason else _iq_warnings(info, iq)
    out["iq"] = judge("iq", iq_value, iq_error, req["iq"], limits, unit="arcsec",
                      reason=reason, warnings=warnings, measured=measured)

    cc = qa.cc
    if cc is None:
        why = ("standard star not measured: " + "; ".join(qa.notes)) if qa.standard else \
            "no standard star or reference catalogue in the field: cloud cover not measured"
        out["cc"] = judge("cc", None, None, req["cc"], CC_BANDS, unit="mag", reason=why)
    else:
        zps = [z.zp for z in qa.zeropoints]
        out["cc"] = judge("cc", cc.extinction, cc.extinction_err, req["cc"], CC_BANDS,
                          unit="mag", reason=problems.get("cc"),
                          measured={"zeropoint": sum(zps) / len(zps) if zps else None,
                                    "standard": qa.standard})

    bg = qa.bg
    key = _filter_key(info.filter_name(pretty=True))
    bg_limits = BG_BANDS.get(key, {})
    if bg is None or not math.isfinite(bg.mag):
        why = "sky level not recorded by skyCorrect" if bg is not None and \
            bg.source == "unrecorded" else "no sky level measured"
        out["bg"] = judge("bg", None, None, req["bg"], bg_limits, unit="mag/arcsec2",
                          higher_is_better=True, reason=why)
    else:
        reason = problems.get("bg")
        if not bg_limits and reason is None:
            reason = f"no BG limits for filter {key}"
        out["bg"] = judge("bg", bg.mag, bg.mag_std, req["bg"], bg_limits,
                          unit="mag/arcsec2", higher_is_better=True, reason=reason,
                          measured={"rate": bg.rate})
    out["wv"] = Verdict("wv", None, None, "", band=None, requested=req["wv"], met=None,
                        reason="water vapour is not measured from images")
    return out


def requirement_warnings(filename: str, verdicts: Mapping[str, Verdict]) -> list[str]:
    """The WARNING lines for a frame: requirements not met, and DRAGONS' IQ warnings.

    One line per problem, naming the frame, the measured value, the achieved band and the
    requested one.
    """
    lines = []
    for metric in ("iq", "cc", "bg"):
        v = verdicts.get(metric)
        if v is None:
            continue
        if v.met is False:
            conf = " at the 95% confidence level" if v.error else ""
            lines.append(f"frame={filename} {_METRICS[metric]} requirement not met{conf}: "
                         f"{_describe(v)} is {v.band_name}, requested {v.requested_name}")
        for w in v.warnings:
            lines.append(f"frame={filename} {w}")
    return lines


def _describe(v: Verdict) -> str:
    err = f" +- {v.error:.2f}" if v.error else ""
    if v.metric == "iq":
        fwhm = v.measured.get("fwhm")
        extra = f" (FWHM {fwhm:.3f}\")" if isinstance(fwhm, float) and v.measured.get("ao") \
            else ""
        kind = "natural seeing estimate" if v.measured.get("ao") else "FWHM at zenith"
        return f"{kind} {v.value:.2f}\"{err}{extra}"
    if v.metric == "cc":
        err = f" +- {v.error:.3f}" if v.error else ""
        return f"cloud extinction {v.value:.3f}{err} mag"
    return f"sky {v.value:.2f}{err} mag/arcsec2"
