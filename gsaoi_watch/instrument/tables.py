"""GSAOI instrument facts as data: arrays, read modes, filters, zero points, geometry.

Every number here comes from the public Gemini DRAGONS package
(``gemini_instruments/gsaoi/lookup.py``, ``gemini_instruments/gemini/lookup.py``,
``geminidr/gsaoi/lookups/geometry_conf.py`` and
``geminidr/gsaoi/lookups/gsaoi_static_distortion_info.py``); the comment beside each
table names its source.  Code elsewhere reads these tables and never hard-codes a number.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    'AO_IQ_BANDS', 'ARRAYS', 'ARRAY_BY_ID', 'ArraySpec', 'BG_BANDS', 'CC_BANDS', 'EXTINCTION',
    'FILTER_WAVELENGTHS', 'FULL_SIZE', 'NATURAL_IQ_BANDS', 'NOMINAL_PIXEL_SCALE',
    'NOMINAL_ZEROPOINTS', 'READ_MODES', 'ROI_FIX_DATE', 'SKY_BRIGHTNESS_RANGE',
    'STATIC_DISTORTION', 'TELESCOPE_APERTURE', 'TILE_GAPS',
    'effective_wavelength', 'read_speed_setting',
]

#: Unbinned size of one HAWAII-2RG array (pixels on a side).
FULL_SIZE = 2048


#: LNRS (number of non-destructive reads) -> DRAGONS read-speed name (gsaoi/lookup.py read_modes).
READ_MODES = {2: "Bright Objects", 8: "Faint Objects", 16: "Very Faint Objects"}


#: Central-ROI CCDSEC/DETSEC row bug is present in data taken on or after this date
#: (geminidr/gsaoi/primitives_gsaoi.py standardizeInstrumentHeaders).
ROI_FIX_DATE = "2013-05-13"


#: Gap between arrays in unbinned pixels, (x, y) (geminidr/gsaoi/lookups/geometry_conf.py).
TILE_GAPS = (145, 140)


#: Nominal pixel scale in arcsec (mean over the arrays of 3600*sqrt|det CD| in real headers).
NOMINAL_PIXEL_SCALE = 0.0197


@dataclass(frozen=True)
class ArraySpec:
    """Properties of one GSAOI array (one FITS extension of a raw frame).

    Parameters
    ----------
    index : int
        0-based extension index (extension number - 1).
    array_id : str
        ARRAYID serial number, the key of every per-array lookup.
    ccdname, frameid : str
        CCDNAME and FRAMEID keyword values.
    position : tuple of int
        (column, row) of the array in the 2x2 mosaic, 0-based from the bottom left.
    gain : float
        e-/ADU.
    read_noise : dict
        LNRS -> read noise in electrons for one coadd.
    well : float
        Saturation level in raw ADU.
    linlimit : float
        Fraction of ``well`` above which the data are non-linear.
    coeffs : dict
        LNRS -> (a0, a1, a2) non-linearity coefficients for data in electrons:
        linear = a0*c + a1*c**2 + a2*c**3, with c the raw count in electrons.
    """

    index: int
    array_id: str
    ccdname: str
    frameid: str
    position: tuple[int, int]
    gain: float
    read_noise: dict
    well: float
    linlimit: float
    coeffs: dict

    def detsec_origin(self, size: int = FULL_SIZE) -> tuple[int, int]:
        """Return the 0-based (x, y) origin of this array in the mosaic for arrays of ``size``."""
        return self.position[0] * size, self.position[1] * size

    @property
    def non_linear_level(self) -> float:
        """Raw ADU above which the data are non-linear (linlimit x well)."""
        return self.linlimit * self.well


def _coeffs(c0, c1, c2, c1_faint=None):
    faint = (c0, c1 if c1_faint is None else c1_faint, c2)
    return {2: (c0, c1, c2), 8: faint, 16: (c0, c1, c2)}


# gemini_instruments/gsaoi/lookup.py array_properties (GSAOI web page; R. Carrasco 2015-08-24).
# Extension order, ARRAYID, CCDNAME, FRAMEID and mosaic position from real raw headers.
ARRAYS = (
    ArraySpec(0, "H2RG-032-074", "G1", "0", (1, 0), 2.434,
              {2: 26.53, 8: 13.63, 16: 10.22}, 52400.0, 0.73,
              _coeffs(0.9947237, 3.0403620e-07, 4.2870263e-12)),
    ArraySpec(1, "H2RG-032-064", "G2", "1", (0, 0), 2.010,
              {2: 19.10, 8: 9.85, 16: 7.44}, 50250.0, 0.64,
              _coeffs(0.9944842, 3.3573418e-07, 9.1085864e-12)),
    ArraySpec(2, "H2RG-032-071", "G3", "2", (0, 1), 2.411,
              {2: 27.24, 8: 14.22, 16: 10.61}, 53700.0, 0.76,
              _coeffs(0.9947278, 2.9311700e-07, 3.7454887e-12, c1_faint=2.9311701e-07)),
    ArraySpec(3, "H2RG-032-061", "G4", "3", (1, 1), 2.644,
              {2: 32.26, 8: 16.78, 16: 12.79}, 52300.0, 0.75,
              _coeffs(0.9958842, 2.1448022e-07, 3.8885419e-12)),
)


ARRAY_BY_ID = {a.array_id: a for a in ARRAYS}


# Effective wavelengths in micrometres: GSAOI-specific table (gsaoi/lookup.py
# filter_wavelengths) first, then the generic Gemini table (gemini/lookup.py).
FILTER_WAVELENGTHS = {
    "GSAOI": {
        "Z": 1.0150, "HeI1083": 1.0830, "PaG": 1.0940, "Jcont": 1.2070, "PaB": 1.2820,
        "Hcont": 1.5700, "CH4short": 1.5800, "CH4long": 1.6900, "H2O": 2.0000,
        "HeI-2p2s": 2.0580, "Kcntshrt": 2.0930, "Kprime": 2.1200, "H2(1-0)": 2.1220,
        "Kshort": 2.1500, "H2(2-1)": 2.2480, "BrG": 2.1660, "Kcntlong": 2.2700,
        "CO2360": 2.3600,
    },
    "*": {
        "u": 0.350, "g": 0.475, "r": 0.630, "i": 0.780, "z": 0.925, "Y": 1.03,
        "J": 1.25, "H": 1.635, "K": 2.2, "L": 3.5, "M": 4.8,
    },
}


def effective_wavelength(pretty_filter: str | None) -> float | None:
    """Return the effective wavelength in micrometres of a pretty filter name, or None.

    DRAGONS looks the name up with keys ('*', f) then ('GSAOI', f); the generic
    table has only the broad bands, so the GSAOI entries win wherever both exist.
    """
    if not pretty_filter:
        return None
    for table in ("GSAOI", "*"):
        value = FILTER_WAVELENGTHS[table].get(pretty_filter)
        if value is not None:
            return value
    return None


def read_speed_setting(lnrs) -> str:
    """Return DRAGONS' read-speed name for an LNRS value ('Unknown' if not 2, 8 or 16)."""
    try:
        return READ_MODES.get(int(lnrs), "Unknown")
    except (TypeError, ValueError):
        return "Unknown"


# Nominal zero points: magnitude giving 1 e-/s at airmass 1 (gsaoi/lookup.py nominal_zeropoints).
NOMINAL_ZEROPOINTS = {
    "Z": (26.71, 26.71, 26.71, 26.71),
    "J": (26.857, 26.891, 26.774, 26.727),
    "H": (26.796, 26.931, 26.821, 26.796),
    "Kshort": (26.201, 26.287, 26.154, 26.192),
    "K": (26.199, 26.285, 26.152, 26.190),
    "Kprime": (26.419, 26.505, 26.372, 26.410),
}


#: Extinction coefficients in mag/airmass quoted with the zero points (gsaoi/lookup.py comment).
EXTINCTION = {"Z": 0.092, "J": 0.092, "H": 0.031, "Kshort": 0.065, "K": 0.065, "Kprime": 0.065}


# QA band limits (geminidr/gemini/lookups/qa_constraints.py).
#: Cloud cover: the largest extinction in magnitudes that still counts as that percentile band.
CC_BANDS = {50: 0.08, 70: 0.3, 80: 1.0}


#: Sky background: the faintest-limit sky in mag/arcsec^2 for each percentile band (bgBands,
#: near-IR rows); GSAOI's Kshort/Kprime are looked up as K (DRAGONS has no entry for them).
BG_BANDS = {
    "J": {20: 16.20, 50: 16.20, 80: 16.20},
    "H": {20: 13.80, 50: 13.80, 80: 13.80},
    "K": {20: 14.60, 50: 14.60, 80: 14.60},
    "Ks": {20: 14.60, 50: 14.60, 80: 14.60},
}


#: Image quality of AO data (iqBands["AO"], arcsec, applied to the natural-seeing estimate).
AO_IQ_BANDS = {20: 0.45, 70: 0.80, 85: 1.20}


#: Image quality without AO (iqBands, natural seeing FWHM at zenith, arcsec), K filters.
NATURAL_IQ_BANDS = {"K": {20: 0.35, 70: 0.55, 85: 0.80}, "Ks": {20: 0.35, 70: 0.55, 85: 0.80}}


#: Sky surface brightness (mag/arcsec^2) a real near-IR sky can have at Cerro Pachon, per
#: filter: J about 16, H 14, Ks 13-13.5 on a dark night, a few tenths brighter with the
#: airglow high or the telescope warm.  A value outside is not the sky's (a wrong pixel
#: scale, exposure time or gain): the QA says so instead of giving a band.
SKY_BRIGHTNESS_RANGE = {"J": (13.0, 18.0), "H": (11.0, 16.5), "K": (10.0, 16.0),
                        "Ks": (10.0, 16.0)}


#: Telescope aperture for the Strehl reference PSF, metres: (primary diameter, central
#: obscuration diameter) as DRAGONS' measureIQ uses them (geminidr/gemini/primitives_qa.py).
TELESCOPE_APERTURE = (8.1, 1.2)


# Static distortion (geminidr/gsaoi/lookups/gsaoi_static_distortion_info.py,
# STATIC_CORRECTIONS["forward"]): per array index, the linear and the degree-3 non-linear
# Polynomial2D models, summed, mapping 1-based unbinned array pixels (x, y) to a static
# focal plane in arcsec (+x East, +y North at PA=0).  Coefficients are {(i, j): c} for x**i y**j.
_LINEAR = (
    ((-3.767293338535515, 0.01945507134593546, 1.613586631961425e-4),
     (-47.40723615004112, 1.563299085656958e-4, 0.01971384089214057)),
    ((-47.77441111281951, 0.02002115791291804, 1.855292799634021e-4),
     (-47.76547084404991, 1.654311720619638e-4, 0.01971856033820672)),
    ((-47.41388591702555, 0.02001482028626509, -4.212420569230591e-4),
     (-4.654717879799149, 2.286060564658466e-4, 0.01969623747326584)),
    ((-3.608039600938993, 0.01941851868447217, -3.684556341286741e-4),
     (-4.196595494921446, 1.417908733063215e-4, 0.01969654015724558)),
)


# Order of the non-linear terms: c0_0 c1_0 c2_0 c3_0 c0_1 c1_1 c2_1 c0_2 c1_2 c0_3.
_NL_TERMS = ((0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 3))


_NONLINEAR = (
    ((-0.2000441189104647, 2.493979183483538e-4, -1.114794181513601e-7, -4.531542177492621e-12,
      3.137509342682636e-4, -2.641687769102021e-8, 4.322499461312955e-12,
      -1.623821782398624e-7, 7.862705238522332e-12, 8.649900385974039e-12),
     (-0.01304663181010625, 2.174054284822841e-5, -2.398957087927592e-8, 7.310481620132716e-12,
      3.357755871516543e-5, -8.825184536163208e-9, 2.050018792243589e-12,
      -2.478630823986458e-8, 3.538515044761089e-12, 4.562723271772565e-12)),
    ((-0.1949408064796304, 2.877778046298606e-4, -1.495360882919546e-7, 5.523962776560459e-12,
      2.788514653546706e-4, -1.417656730511652e-8, 2.675437435818343e-12,
      -1.353132791439666e-7, 1.450848713190932e-12, 4.966560575231940e-13),
     (-0.01563985104451207, 1.397817242056433e-5, -1.808648145552520e-9, -1.598683318558063e-12,
      2.689748894070916e-5, -1.262163320882350e-8, 2.785894821583605e-12,
      -7.291062769196125e-9, 1.549659955759916e-12, -1.631768127489460e-12)),
    ((-0.1789405696262646, 2.741129335821148e-4, -1.383254303482762e-7, 3.002958493815011e-12,
      2.881098305197146e-4, -2.258908094387217e-8, -2.770570714472721e-12,
      -1.563286907570526e-7, 1.346663655660389e-11, 5.052396058993053e-12),
     (-0.004138136556942223, 2.034825825241239e-5, -1.835024363784077e-8, 3.064620164702450e-12,
      6.221093565420692e-6, -1.870505456604141e-9, 6.014753488124164e-12,
      -1.140840726876328e-8, -3.972015599966025e-12, 5.135818314356853e-12)),
    ((-0.2110028606551117, 2.937980723175633e-4, -1.338927929629734e-7, 3.873703618592271e-12,
      2.574191396723302e-4, -2.259108137743001e-10, -1.520549877320857e-13,
      -1.254406813322947e-7, -2.006490195091191e-12, 1.283023891016379e-12),
     (-0.02271822870244537, 3.573598058342320e-5, -2.252987979165502e-8, 4.293626327166727e-12,
      3.782918002580935e-5, -7.899592934041771e-9, 1.394587801179865e-12,
      -2.922839126802432e-8, 1.202405561311068e-12, 6.870431670792159e-12)),
)


def _sum_models(index):
    axes = []
    for axis in (0, 1):
        c0, cx, cy = _LINEAR[index][axis]
        coeffs = {term: value for term, value in zip(_NL_TERMS, _NONLINEAR[index][axis])}
        coeffs[(0, 0)] += c0
        coeffs[(1, 0)] += cx
        coeffs[(0, 1)] += cy
        axes.append(coeffs)
    return tuple(axes)


#: Per array index: (coefficients of focal-plane x, coefficients of focal-plane y), arcsec.
STATIC_DISTORTION = tuple(_sum_models(i) for i in range(4))

