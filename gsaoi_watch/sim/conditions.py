"""Requested and delivered observing conditions of a simulated night (REQ*/RAW* and degradations).

A night's programme requests an image quality, cloud cover, background and water vapour band
(``REQIQ``...: DRAGONS' percentiles, 100 = 'Any'); the sky then delivers what it delivers.
:class:`Conditions` holds both: the request (the same for the standard and the science, as
in the real partnerCal standard S20181023S0087 and the real Q-programme frames, which carry
``70-percentile`` / ``50-percentile`` / ``Any`` / ``Any``), and per sequence a
:class:`Delivered` degradation: the AO FWHM multiplied (guided frames), a grey cloud
extinction on every astronomical source, and the sky rate multiplied.  Each degradation may
vary in time, piecewise linearly through values evenly spaced over the sequence.

The band of a delivered value uses DRAGONS 4.2.2's ``qa_constraints`` (gsaoi_facts.md 7.1),
copied here and not imported from the pipeline: the simulator checks the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "AO_IQ_LIMITS",
    "BANDS",
    "BG_LIMIT_K",
    "CC_LIMITS",
    "PHYSICAL_PIXEL_SCALE",
    "Conditions",
    "Delivered",
    "band_text",
    "bg_band",
    "frame_record",
    "cc_band",
    "iq_band",
    "parse_band",
    "parse_profile",
    "sky_brightness",
    "strehl",
]

#: The percentiles each request may take (100 = 'Any'), from Gemini's observing conditions.
BANDS = {"iq": (20, 70, 85, 100), "cc": (50, 70, 80, 100), "bg": (20, 50, 80, 100),
         "wv": (20, 50, 80, 100)}
#: DRAGONS qa_constraints: AO IQ limits on the natural-seeing estimate (arcsec).
AO_IQ_LIMITS = {20: 0.45, 70: 0.80, 85: 1.20}
#: DRAGONS qa_constraints: CC limits, maximum extinction (mag).
CC_LIMITS = {50: 0.08, 70: 0.3, 80: 1.0}
#: DRAGONS qa_constraints: K/Ks BG limit of every band (mag/arcsec^2; fainter is better).
BG_LIMIT_K = 14.60
#: Full-size GSAOI pixel scale (arcsec): the PSF and sky per pixel keep it at every size.
PHYSICAL_PIXEL_SCALE = 0.0197
#: Kshort effective wavelength (um), the primary and obscuration diameters (m) of Gemini
#: South: DRAGONS' measureIQ Strehl reference (gsaoi_facts.md 7).
WAVELENGTH_UM = 2.15
APERTURE_M = (8.1, 1.2)


def parse_band(value, quantity: str) -> int:
    """A requested band as a percentile: 20, '70', '70-percentile', 'Any' (-> 100).

    Raises
    ------
    ValueError
        If ``value`` is not one of the bands of ``quantity`` (iq, cc, bg, wv).
    """
    allowed = BANDS[quantity]
    text = str(value).strip().lower().removesuffix("-percentile")
    if text == "any":
        return 100
    try:
        band = int(text)
    except ValueError:
        band = -1
    if band not in allowed:
        names = ", ".join(str(b) for b in allowed[:-1]) + " or Any"
        raise ValueError(f"requested {quantity.upper()} {value!r}: must be {names}")
    return band


def band_text(band: int) -> str:
    """The header value of a band: '70-percentile' or 'Any'."""
    return "Any" if band >= 100 else f"{band}-percentile"


def _profile(value, name, *, minimum, inclusive):
    values = tuple(float(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    if not values:
        raise ValueError(f"{name}: no value")
    for v in values:
        bad = not math.isfinite(v) or (v < minimum if inclusive else v <= minimum)
        if bad:
            rel = ">=" if inclusive else ">"
            raise ValueError(f"{name} {v:g}: must be finite and {rel} {minimum:g}")
    return values[0] if len(values) == 1 else values


def parse_profile(text: str) -> float | tuple[float, ...]:
    """A constant ``'2.5'`` or a time profile ``'0:0.8:0'`` (values evenly spaced in time).

    Raises
    ------
    ValueError
        If a value is not a number.
    """
    parts = str(text).split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a number or numbers separated by ':'") from None
    return values[0] if len(values) == 1 else values


def _at(profile, u: float) -> float:
    if not isinstance(profile, tuple):
        return float(profile)
    knots = np.linspace(0.0, 1.0, len(profile))
    return float(np.interp(u, knots, profile))


@dataclass(frozen=True)
class Delivered:
    """How the sky degrades one sequence (the standard's or the science's).

    Each field is a number or a tuple of numbers: a profile through values evenly spaced
    from the sequence's first frame (mid-exposure) to its last, linear in between
    (``(0.0, 0.8, 0.0)``: a cloud passing, thickest mid-sequence).

    Attributes
    ----------
    iq_factor : float or tuple of float
        The PSF FWHM of the AO-guided frames is multiplied by it (> 0; the unguided offset
        skies keep their seeing-limited PSF).  The Moffat profile keeps its shape, so its
        Strehl falls as ``iq_factor**-2``.
    extinction : float or tuple of float
        Grey cloud in magnitudes (>= 0): every star, the standard and the galaxy are
        multiplied by ``10**(-0.4 * extinction)``.  The sky is not: the Kshort background
        is thermal and airglow emission from below and above the cloud, not light through it.
    sky_factor : float or tuple of float
        The sky rate is multiplied by it (> 0; < 1 is a darker sky).
    """

    iq_factor: float | tuple = 1.0
    extinction: float | tuple = 0.0
    sky_factor: float | tuple = 1.0

    def __post_init__(self):
        for name, minimum, inclusive in (("iq_factor", 0.0, False), ("extinction", 0.0, True),
                                         ("sky_factor", 0.0, False)):
            object.__setattr__(self, name, _profile(getattr(self, name), name,
                                                    minimum=minimum, inclusive=inclusive))

    def at(self, u: float) -> tuple[float, float, float]:
        """(iq_factor, extinction, sky_factor) at fraction ``u`` (0-1) of the sequence."""
        return _at(self.iq_factor, u), _at(self.extinction, u), _at(self.sky_factor, u)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Conditions:
    """The night's requested bands and the conditions each sequence is delivered.

    The defaults are the tutorial programme's request (IQ70, CC50, BG Any, WV Any) and a
    sky that meets it: the simulated night of before these options, bit for bit.

    Attributes
    ----------
    iq, cc, bg, wv : int or str
        Requested percentiles (``REQIQ``...; 100 or 'Any' = Any), on every standard and
        science frame; the dayCal flats request Any.
    standard, science : Delivered
        Degradations of the standard-star sequence and of the science sequence.
    """

    iq: int | str = 70
    cc: int | str = 50
    bg: int | str = 100
    wv: int | str = 100
    standard: Delivered = field(default_factory=Delivered)
    science: Delivered = field(default_factory=Delivered)

    def __post_init__(self):
        for q in ("iq", "cc", "bg", "wv"):
            object.__setattr__(self, q, parse_band(getattr(self, q), q))
        for s in ("standard", "science"):
            if not isinstance(getattr(self, s), Delivered):
                raise ValueError(f"{s}: a Delivered, not {type(getattr(self, s)).__name__}")

    @classmethod
    def uniform(cls, *, iq_factor=1.0, extinction=0.0, sky_factor=1.0,
                **requested) -> Conditions:
        """The same degradation for the standard and the science sequence."""
        d = Delivered(iq_factor, extinction, sky_factor)
        return cls(standard=d, science=d, **requested)

    @property
    def requested(self) -> dict:
        """The requested percentiles ``{'iq': 70, 'cc': 50, 'bg': 100, 'wv': 100}``."""
        return {"iq": self.iq, "cc": self.cc, "bg": self.bg, "wv": self.wv}

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return {"requested": self.requested, "standard": self.standard.to_dict(),
                "science": self.science.to_dict()}


def _smallest(value, limits, *, below=True):
    for band in sorted(limits):
        if (value <= limits[band]) if below else (value >= limits[band]):
            return band
    return 100


def iq_band(fwhm_arcsec: float, airmass: float) -> int:
    """AO IQ band of an FWHM: DRAGONS' natural-seeing estimate ``7 * FWHM * airmass**-0.6``."""
    return _smallest(7.0 * fwhm_arcsec * airmass ** -0.6, AO_IQ_LIMITS)


def cc_band(extinction: float) -> int:
    """CC band of a cloud extinction (mag)."""
    return _smallest(extinction, CC_LIMITS)


def bg_band(sky_mag: float) -> int:
    """Kshort BG band of a sky brightness (mag/arcsec^2): 20 if fainter than 14.60, else Any."""
    return 20 if sky_mag >= BG_LIMIT_K else 100


def sky_brightness(rate: float, zeropoint: float,
                   pixel_scale: float = PHYSICAL_PIXEL_SCALE) -> float:
    """Sky surface brightness (mag/arcsec^2) of ``rate`` e-/s per pixel."""
    return zeropoint - 2.5 * math.log10(rate / pixel_scale**2)


def strehl(fwhm_px: float, beta: float, pixel_scale: float = PHYSICAL_PIXEL_SCALE) -> float:
    """Strehl ratio of a Moffat PSF: its peak intensity over a perfect PSF's.

    The perfect PSF is that of Gemini South's annular aperture (8.1 m, 1.2 m obscuration)
    at 2.15 um, whose peak holds ``area * pixel**2 / lambda**2`` of the light per pixel; the
    Moffat's peak holds ``(beta - 1) / (pi alpha**2)``.  (DRAGONS measures the peak pixel
    instead, which depends a little on where the star falls in it.)
    """
    alpha = fwhm_px / (2.0 * math.sqrt(2 ** (1.0 / beta) - 1.0))
    moffat = (beta - 1.0) / (math.pi * alpha**2)
    d, obs = APERTURE_M
    p = pixel_scale * math.pi / 180.0 / 3600.0
    lam = WAVELENGTH_UM * 1e-6
    perfect = math.pi / 4 * (d**2 - obs**2) * p**2 / lam**2
    return moffat / perfect


def frame_record(requested: dict, *, iq_factor: float, extinction: float, sky_factor: float,
                 fwhm_px: float, ao_fwhm_px: float, guided: bool, airmass: float,
                 sky_rate: float, pixel_scale: float, zeropoint: float, beta: float) -> dict:
    """The truth entry ``conditions`` of one on-sky frame, with the bands it was delivered.

    ``fwhm_px`` is the frame's PSF FWHM, ``ao_fwhm_px`` the night's AO FWHM times
    ``iq_factor`` (what the observer sees of the AO correction, also during an offset sky).
    ``fwhm_arcsec`` uses the frame's ``pixel_scale``; ``fwhm_arcsec_physical``, the Strehl,
    the sky brightness and the bands use the full-size pixel scale, which the simulator
    keeps per pixel at every size for the AO PSF and the sky (the unguided frames'
    seeing-limited PSF keeps its arcsec size instead: its physical scale is the frame's).
    ``raw``: the bands written as RAWIQ, RAWCC, RAWBG, RAWWV (IQ from the frame's own FWHM
    if guided, else from ``ao_fwhm_px``; WV is not simulated: Any);
    ``pi_requirements_met``: every raw band within the request (RAWPIREQ).
    """
    fwhm_phys = fwhm_px * (PHYSICAL_PIXEL_SCALE if guided else pixel_scale)
    iq_fwhm = fwhm_phys if guided else ao_fwhm_px * PHYSICAL_PIXEL_SCALE
    sky_mag = sky_brightness(sky_rate, zeropoint)
    raw = {"iq": iq_band(iq_fwhm, airmass), "cc": cc_band(extinction), "bg": bg_band(sky_mag),
           "wv": 100}
    return {
        "requested": dict(requested),
        "iq_factor": iq_factor,
        "extinction": extinction,
        "transmission": 10 ** (-0.4 * extinction),
        "sky_factor": sky_factor,
        "fwhm_px": fwhm_px,
        "fwhm_arcsec": fwhm_px * pixel_scale,
        "fwhm_arcsec_physical": fwhm_phys,
        "seeing_arcsec": 7.0 * iq_fwhm * airmass ** -0.6,
        "strehl": strehl(fwhm_phys / PHYSICAL_PIXEL_SCALE, beta),
        "sky_rate": sky_rate,
        "sky_mag_arcsec2": sky_mag,
        "raw": raw,
        "pi_requirements_met": all(raw[q] <= requested[q] for q in raw),
    }
