"""Quick-look QA of reduced frames: standard-star zero points, image quality, background.

The measurements follow DRAGONS' ``measureIQ``, ``measureBG`` and ``measureCC``
(``geminidr/gemini/primitives_qa.py``; band limits from ``qa_constraints.py``, kept in
:mod:`gsaoi_watch.instrument.tables`).  Everything here is a pure function of a
:class:`~gsaoi_watch.reduction.container.Frame`: no file, database or logging I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import special

from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.instrument.standards import Standard
from gsaoi_watch.instrument.tables import (
    AO_IQ_BANDS,
    BG_BANDS,
    CC_BANDS,
    EXTINCTION,
    NOMINAL_ZEROPOINTS,
    TELESCOPE_APERTURE,
)
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.photometry import (
    BAD_BITS,
    StarPhotometry,
    aperture_photometry,
    array_index,
    catalogs,
    frame_filter,
    frame_info,
    gain_term,
    standard_photometry,
)
from gsaoi_watch.reduction.photometry import pixel_scale as array_pixel_scale
from gsaoi_watch.reduction.requirements import Verdict, band_name, band_of, check_requirements

__all__ = [
    'Background', 'CloudCover', 'FrameQA', 'ImageQuality', 'ZeroPoint', 'bg_band', 'cc_band',
    'frame_qa', 'ideal_peak_fraction', 'iq_band', 'measure_bg', 'measure_cc', 'measure_iq',
    'zero_points',
]


#: Bits that disqualify a source for image quality if they touch its core.
_CORE_BAD = DQ["saturated"] | DQ["non_linear"] | DQ["no_data"] | DQ["bad_pixel"] \
    | DQ["cosmic_ray"]


#: DRAGONS' natural-seeing estimate from an AO FWHM (gsaoi_facts.md section 7).
_SEEING_PER_AO_FWHM = 7.0


# --- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroPoint:
    """Zero point of one array from a standard: magnitude giving 1 e-/s at airmass 1."""

    array: int
    zp: float
    zp_err: float
    nominal: float

    @property
    def extinction(self) -> float:
        """Cloud extinction in magnitudes: nominal minus measured zero point."""
        return self.nominal - self.zp


@dataclass(frozen=True)
class CloudCover:
    """Mean cloud extinction (mag), its uncertainty and DRAGONS' CC band ('CC50' ... 'CCAny')."""

    extinction: float
    extinction_err: float
    band: str


@dataclass(frozen=True)
class ImageQuality:
    """Image quality of a frame from its point sources (``n_stars`` used).

    FWHM in arcsec as measured (``fwhm``) and corrected to zenith with airmass**-0.6
    (``fwhm_zenith``); ``seeing`` is DRAGONS' natural-seeing estimate for AO data
    (7 x zenith FWHM) and ``band`` the IQ band it falls in.
    """

    fwhm: float
    fwhm_std: float
    fwhm_zenith: float
    ellipticity: float
    ellipticity_std: float
    strehl: float
    strehl_std: float
    n_stars: int
    seeing: float
    band: str


@dataclass(frozen=True)
class Background:
    """Sky background: e-/s/pixel (median over arrays, per array), mag/arcsec^2, BG band."""

    rate: float
    rate_per_array: tuple
    mag: float
    band: str
    source: str  # 'recorded' (SKYLEV, taken off by skyCorrect), 'measured' or 'unrecorded'
    mag_std: float = float("nan")  # scatter of the arrays' values (mag), DRAGONS' error


@dataclass(frozen=True)
class FrameQA:
    """Everything measured on one frame; ``zeropoints``/``cc`` only for a standard."""

    filename: str
    iq: ImageQuality | None
    bg: Background | None
    standard: str | None = None
    photometry: tuple = ()
    zeropoints: tuple = ()
    cc: CloudCover | None = None
    notes: tuple = field(default_factory=tuple)
    requirements: Mapping[str, Verdict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (NaN becomes None)."""
        out = _clean(asdict(replace(self, requirements={})))
        out["requirements"] = {k: v.to_dict() for k, v in self.requirements.items()}
        return out


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- bands ---------------------------------------------------------------------------------
def cc_band(extinction: float) -> str:
    """DRAGONS' cloud-cover band for an extinction in magnitudes ('CC50' ... 'CCAny')."""
    if not math.isfinite(extinction):
        return "CCUnknown"
    return f"{band_name('cc', band_of(extinction, CC_BANDS))}"


def bg_band(sky_mag: float, filter_name: str | None) -> str:
    """Background band of a sky brightness (mag/arcsec^2): the darkest band it satisfies."""
    key = {"Kshort": "Ks", "Kprime": "K"}.get(filter_name or "", filter_name)
    limits = BG_BANDS.get(key or "")
    if limits is None or not math.isfinite(sky_mag):
        return "BGUnknown"
    return f"{band_name('bg', band_of(sky_mag, limits, higher_is_better=True))}"


def iq_band(seeing: float) -> str:
    """IQ band of AO data from the natural-seeing estimate in arcsec (DRAGONS' 'AO' limits)."""
    if not math.isfinite(seeing):
        return "IQUnknown"
    return f"{band_name('iq', band_of(seeing, AO_IQ_BANDS))}"


# --- zero points and cloud cover ----------------------------------------------------------
def zero_points(frame: Frame, photometry: Iterable[StarPhotometry | None],
                magnitude: float) -> tuple:
    """Zero points (1 e-/s at airmass 1) from standard-star photometry.

    ``zp = mag + 2.5 log10(flux / exptime) + k (airmass - 1)`` with DRAGONS' nominal
    extinction coefficient ``k`` of the filter, minus 2.5 log10(gain) for data in ADU.

    Parameters
    ----------
    frame : Frame
        The frame measured (exposure time, airmass, filter).
    photometry : iterable of StarPhotometry
        One entry per array on which the standard was measured.
    magnitude : float
        The standard's catalogue magnitude in the frame's filter.

    Returns
    -------
    tuple of ZeroPoint
    """
    info = frame_info(frame)
    exptime = info.exposure_time() or float("nan")
    airmass = info.airmass() or 1.0
    filt = frame_filter(frame)
    k_ext = EXTINCTION.get(filt or "", 0.0)
    nominal = NOMINAL_ZEROPOINTS.get(filt or "")
    by_index = {array_index(frame, k): arr for k, arr in enumerate(frame.arrays)}
    out = []
    for p in photometry:
        if p is None or not (p.flux > 0) or not math.isfinite(exptime) or exptime <= 0:
            continue
        arr = by_index.get(p.array)
        gain = gain_term(arr) if arr is not None else 0.0
        zp = magnitude + 2.5 * math.log10(p.flux / exptime) + k_ext * (airmass - 1.0) \
            - gain
        err = 2.5 / math.log(10) * p.flux_err / p.flux
        nom = nominal[p.array] if nominal is not None else float("nan")
        out.append(ZeroPoint(p.array, zp, err, nom))
    return tuple(out)


def measure_cc(zeropoints: Sequence[ZeroPoint]) -> CloudCover:
    """Cloud extinction (weighted mean of nominal - measured zero points) and the CC band."""
    ext = np.array([z.extinction for z in zeropoints], float)
    err = np.array([max(z.zp_err, 1e-4) for z in zeropoints], float)
    good = np.isfinite(ext)
    if not good.any():
        return CloudCover(float("nan"), float("nan"), "CCUnknown")
    w = 1.0 / err[good] ** 2
    mean = float(np.sum(w * ext[good]) / np.sum(w))
    return CloudCover(mean, float(1.0 / math.sqrt(np.sum(w))), cc_band(mean))


# --- image quality -------------------------------------------------------------------------
def _airy_annular(r_rad, wavelength_m, diameter, obscuration):
    """Normalised (peak 1) intensity of an annular-aperture diffraction pattern."""
    eps = obscuration / diameter
    x = math.pi * diameter * np.asarray(r_rad, float) / wavelength_m
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(x > 0, 2 * special.j1(x) / x, 1.0)
        b = np.where(x > 0, 2 * special.j1(eps * x) / (eps * x), 1.0)
    return ((a - eps**2 * b) / (1 - eps**2)) ** 2


def ideal_peak_fraction(pixel_scale: float, wavelength_um: float, dx: float = 0.0,
                        dy: float = 0.0, *, sub: int = 5,
                        aperture: tuple[float, float] = TELESCOPE_APERTURE) -> float:
    """Fraction of a perfect PSF's light in the pixel holding its peak.

    The diffraction pattern of an annular aperture (``aperture`` = primary and obscuration
    diameters in metres) at ``wavelength_um``, integrated over the pixel with ``sub`` x
    ``sub`` samples, for a star ``dx``, ``dy`` pixels from the pixel centre (DRAGONS'
    measureIQ Strehl reference).

    Parameters
    ----------
    pixel_scale : float
        Arcsec per pixel.
    wavelength_um : float
        Wavelength in micrometres.
    dx, dy : float
        Sub-pixel offset of the star from the centre of the peak pixel, in pixels.

    Returns
    -------
    float
    """
    diameter, obscuration = aperture
    lam = wavelength_um * 1e-6
    p = pixel_scale * math.pi / 180.0 / 3600.0
    u = (np.arange(sub) + 0.5) / sub - 0.5
    rx = (u[None, :] - dx) * p
    ry = (u[:, None] - dy) * p
    intensity = _airy_annular(np.hypot(rx, ry), lam, diameter, obscuration)
    area = math.pi / 4 * diameter**2 * (1 - (obscuration / diameter) ** 2)
    return float(intensity.sum() * (p / sub) ** 2 * area / lam**2)


def _clipped(values):
    """2.5-sigma clipped median and standard deviation of the finite values."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size < 3:
        return float(np.median(values)), float(np.std(values))
    _, median, std = sigma_clipped_stats(values, sigma=2.5, maxiters=5)
    return float(median), float(std)


def _iq_candidates(arr: Array, cat, *, snr_min, max_ellipticity):
    """Rows of ``cat`` that are bright, unflagged, away from the edges and not extended."""
    if cat is None or len(cat) == 0:
        return np.zeros(0, int)
    x = np.asarray(cat["X_IMAGE"], float) - 1.0
    y = np.asarray(cat["Y_IMAGE"], float) - 1.0
    fwhm = np.asarray(cat["FWHM_IMAGE"], float)
    flux = np.asarray(cat["FLUX_AUTO"], float)
    err = np.asarray(cat["FLUXERR_AUTO"], float)
    ell = np.asarray(cat["ELLIPTICITY"], float)
    snr = np.where(err > 0, flux / np.where(err > 0, err, 1.0), np.inf)
    ny, nx = arr.shape
    edge = 3.0 * np.nan_to_num(fwhm, nan=0.0) + 2
    ok = (np.isfinite(fwhm) & (fwhm > 1.2) & (flux > 0) & (snr >= snr_min)
          & (ell <= max_ellipticity) & (x > edge) & (x < nx - 1 - edge)
          & (y > edge) & (y < ny - 1 - edge))
    if arr.dq is not None:
        ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
        for k in np.nonzero(ok)[0]:
            box = arr.dq[max(iy[k] - 2, 0):iy[k] + 3, max(ix[k] - 2, 0):ix[k] + 3]
            if (box & _CORE_BAD).any():
                ok[k] = False
    idx = np.nonzero(ok)[0]
    return idx


def measure_iq(frame: Frame, *, snr_min: float = 100.0, max_ellipticity: float = 0.5,
               extended: float = 1.5) -> ImageQuality:
    """FWHM, ellipticity and Strehl ratio of the point sources of a sky-subtracted frame.

    Sources come from the catalogue of each array (``frame.meta['catalogs']``, from
    detectSources; detected afresh if absent).  A source is used if its S/N is at least
    ``snr_min`` (the half-maximum FWHM of fainter sources is inflated by noise), its core
    (5 x 5 pixels) carries no saturated, non-linear or bad pixel, its ellipticity is at
    most ``max_ellipticity`` and its FWHM is within a factor ``extended`` of the median FWHM
    of all candidates of the frame (rejecting galaxies, blends and cosmic rays).  FWHM,
    ellipticity and Strehl ratio are 2.5-sigma clipped medians over the sources; FWHM is
    also corrected to zenith with airmass**-0.6.  The Strehl ratio of a star is its
    peak-pixel fraction (peak / flux in a 4-FWHM aperture) over that of a perfect PSF at the
    same sub-pixel position (:func:`ideal_peak_fraction`).

    Returns
    -------
    ImageQuality
        NaN values and ``n_stars`` = 0 when no source qualifies.
    """
    info = frame_info(frame)
    cats = catalogs(frame)
    wave = info.effective_wavelength() or 2.15
    candidates = []  # (array position, row, fwhm in pixels, pixel scale)
    for k, arr in enumerate(frame.arrays):
        cat = cats[k] if k < len(cats) else None
        if cat is None:
            continue
        idx = _iq_candidates(arr, cat, snr_min=snr_min, max_ellipticity=max_ellipticity)
        scale = array_pixel_scale(arr, frame)
        candidates += [(k, j, float(cat["FWHM_IMAGE"][j]), scale) for j in idx]
    if candidates:
        arcsec = np.array([c[2] * c[3] for c in candidates])
        median = float(np.median(arcsec))
        keep = (arcsec <= extended * median) & (arcsec >= median / extended)
        candidates = [c for c, ok in zip(candidates, keep) if ok]
    rows = []  # (fwhm_arcsec, ellipticity, strehl)
    for k, j, f, scale in candidates:
        arr, cat = frame.arrays[k], cats[k]
        x, y = float(cat["X_IMAGE"][j]), float(cat["Y_IMAGE"][j])
        phot = aperture_photometry(arr, x, y, 4.0 * f, 6.0 * f, 8.0 * f)
        strehl = float("nan")
        if phot.flux > 0 and phot.masked_fraction < 0.01:
            dx, dy = (x - 1.0) - round(x - 1.0), (y - 1.0) - round(y - 1.0)
            strehl = (float(cat["FLUX_MAX"][j]) / phot.flux) / ideal_peak_fraction(scale, wave,
                                                                               dx, dy)
        rows.append((f * scale, float(cat["ELLIPTICITY"][j]), strehl))
    if not rows:
        nan = float("nan")
        return ImageQuality(nan, nan, nan, nan, nan, nan, nan, 0, nan, "IQUnknown")
    table = np.array(rows, float)
    fwhm, fwhm_std = _clipped(table[:, 0])
    ell, ell_std = _clipped(table[:, 1])
    strehl, strehl_std = _clipped(table[:, 2])
    zenith = fwhm * (info.airmass() or 1.0) ** -0.6
    seeing = _SEEING_PER_AO_FWHM * zenith if info.is_ao() else zenith
    return ImageQuality(fwhm, fwhm_std, zenith, ell, ell_std, strehl, strehl_std, len(rows),
                        seeing, iq_band(seeing))


# --- background ----------------------------------------------------------------------------
def measure_bg(frame: Frame) -> Background:
    """Sky background in e-/s per pixel, in mag/arcsec^2 and its BG band (measureBG).

    For a sky-subtracted frame the level that skyCorrect took off each array (SKYLEV in
    the array header) is used (NaN if it was not recorded); otherwise the 3-sigma clipped
    median of the unflagged, non-object pixels.  The magnitude uses the nominal zero point
    of each array and its pixel scale, without extinction, as DRAGONS does.  The frame's
    value is the median over the arrays (an extended object on one array does not drag it
    up).
    """
    info = frame_info(frame)
    exptime = info.exposure_time() or float("nan")
    filt = frame_filter(frame)
    nominal = NOMINAL_ZEROPOINTS.get(filt or "")
    rates, mags, sources = [], [], set()
    for k, arr in enumerate(frame.arrays):
        level = arr.header.get("SKYLEV")
        if isinstance(level, int | float):
            sources.add("recorded")
        elif "SUBSKY" in frame.phu:  # sky already taken off and its level not kept
            rates.append(float("nan"))
            sources.add("unrecorded")
            continue
        else:
            good = ((arr.dq & BAD_BITS) == 0) if arr.dq is not None else np.ones(arr.shape, bool)
            if arr.objmask is not None:
                good &= arr.objmask == 0
            values = arr.sci[good][::7] if good.sum() > 7000 else arr.sci[good]
            if values.size == 0:
                rates.append(float("nan"))
                continue
            _, level, _ = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
            sources.add("measured")
        rate = float(level) / exptime
        rates.append(rate)
        if nominal is not None and rate > 0:
            idx = array_index(frame, k)
            scale = array_pixel_scale(arr, frame)
            mags.append(nominal[idx] - gain_term(arr) - 2.5 * math.log10(rate / scale**2))
    finite = [r for r in rates if math.isfinite(r)]
    rate = float(np.median(finite)) if finite else float("nan")
    mag = float(np.median(mags)) if mags else float("nan")
    mag_std = float(np.std(mags)) if len(mags) > 1 else float("nan")
    return Background(rate, tuple(rates), mag, bg_band(mag, filt),
                      "+".join(sorted(sources)) or "none", mag_std)


# --- the whole frame -----------------------------------------------------------------------
def frame_qa(frame: Frame, *, standard: Standard | None = None) -> FrameQA:
    """Image quality, background and, for a standard, zero points and cloud cover.

    Parameters
    ----------
    frame : Frame
        A reduced (sky-subtracted) frame with its source catalogues in
        ``meta['catalogs']``.
    standard : gsaoi_watch.instrument.standards.Standard, optional
        The standard star observed (see :func:`gsaoi_watch.instrument.standards.find_standard`).

    Returns
    -------
    FrameQA
    """
    notes = []
    iq = measure_iq(frame)
    if iq.n_stars == 0:
        notes.append("no point source for image quality")
    bg = measure_bg(frame)
    if not math.isfinite(bg.rate):
        notes.append("sky level not recorded by skyCorrect: no background")
    phot: tuple = ()
    zps: tuple = ()
    cc, name = None, None
    if standard is not None:
        name = standard.name
        mag = standard.magnitude(frame_filter(frame))
        p = standard_photometry(frame, standard.ra, standard.dec)
        if p is None:
            notes.append(f"standard {standard.name} not found")
        elif mag is None:
            phot = (p,)
            notes.append(f"no {frame_filter(frame)} magnitude for standard {standard.name}")
        elif p.saturated:
            phot = (p,)
            notes.append(f"standard {standard.name} is saturated or non-linear: no zero point")
        else:
            phot = (p,)
            if p.masked_fraction > 0.01:
                notes.append(f"{100 * p.masked_fraction:.1f}% of the standard's aperture "
                             "was flagged and filled")
            zps = zero_points(frame, phot, mag)
            cc = measure_cc(zps) if zps else None
    result = FrameQA(frame.filename, iq, bg, name, phot, zps, cc, tuple(notes))
    return replace(result, requirements=check_requirements(frame_info(frame), result))

