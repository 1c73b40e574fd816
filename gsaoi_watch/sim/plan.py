"""The observing plan of the simulated tutorial night: frames, times, offsets, conditions."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np

from gsaoi_watch.instrument.tables import NOMINAL_ZEROPOINTS
from gsaoi_watch.sim.conditions import Conditions, frame_record
from gsaoi_watch.sim.scene import MOFFAT_BETA

__all__ = ["FramePlan", "Night", "SkyModel", "make_sky_model", "plan_night"]

# Tutorial targets (DRAGONS GSAOI imaging tutorial, program GS-2017A-Q-29).
NGC5128 = (201.365063, -43.019112)
STANDARD_9132 = (209.43292, -34.01536)   # a faint near-IR standard field, Kshort ~ 14.3
DOME = (265.0, 45.0)


@dataclass
class FramePlan:
    """Everything needed to render and label one raw frame."""

    filename: str
    kind: str                 # flat_on | flat_off | standard | science
    is_sky: bool
    number: int               # data-label frame number
    obsid: str
    program: str
    obsclass: str
    object: str
    ut_start: str             # ISO date-time
    exptime: float
    lnrs: int
    coadds: int
    poff: float               # arcsec
    qoff: float
    pa: float
    target_ra: float
    target_dec: float
    airmass: float
    guided: bool
    roi: bool
    fwhm_px: float
    seed: int
    sky_rate: float = 0.0     # e-/s per pixel at flat = 1
    lamp_scale: float = 1.0
    rotation_deg: float = 0.0  # small unmodelled field rotation
    plate_scale: float = 1.0   # small unmodelled scale change
    extra: dict = field(default_factory=dict)
    conditions: dict = field(default_factory=dict)  # requested + delivered (conditions.py)

    def to_dict(self):
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass
class Night:
    """The plan of a whole night plus its global parameters."""

    seed: int
    size: int
    frames: list
    params: dict


def _name(date, number):
    return f"S{date:%Y%m%d}S{number:04d}.fits"


@dataclass(frozen=True)
class SkyModel:
    """The night's Kshort sky: a slow drift in each sequence times short-term variations.

    ``rate(t) = level * (1 + drift * (t - t_first) / span) * (1 + variation(t))`` e-/s per
    pixel at flat = 1, with ``t`` the mid-exposure time of a frame in seconds from
    ``epoch``; ``level``, ``drift``, ``t_first`` (the first frame's mid-exposure) and
    ``span`` belong to the sequence: science 48 e-/s rising by 10 % over its 1410 s,
    standard 48 e-/s x U(0.97, 1.03) without drift (night parameters ``sky_*`` and
    ``standard_sky_rate``).

    ``variation`` is one function for the whole night, a sum of sinusoids
    ``sum_i amplitudes[i] * sin(2 pi t / periods[i] + phases[i])`` with periods drawn
    uniformly in [20, 80] min (the sky rises or falls over 10-40 min), phases uniformly in
    [0, 2 pi) and relative weights uniformly in [0.5, 1], all from the night seed.  The
    weights are scaled so that the largest
    ``|variation|`` over the observing windows (``windows``: the standard and the science
    sequence, seconds from ``epoch``) is exactly ``amplitude`` (1 %).  It stands for the
    minutes-long airglow and thermal changes of a real near-IR sky, which a straight line
    in time does not follow: over the 23.5 min science sequence a line leaves residuals of
    a few tenths of a per cent.

    Attributes
    ----------
    epoch : str
        ISO time of t = 0 (the start of the science sequence).
    amplitude : float
        Peak ``|variation|`` over ``windows``.
    periods, phases, amplitudes : tuple of float
        The sinusoids (seconds, radians, fraction of the rate).
    windows : tuple of (float, float)
        The time ranges the amplitude is normalised over.
    """

    epoch: str
    amplitude: float
    periods: tuple
    phases: tuple
    amplitudes: tuple
    windows: tuple

    def variation(self, t):
        """Relative sky variation at ``t`` (seconds from ``epoch``; scalar or array)."""
        t = np.asarray(t, dtype=float)
        out = np.zeros_like(t)
        for p, ph, a in zip(self.periods, self.phases, self.amplitudes):
            out = out + a * np.sin(2 * np.pi * t / p + ph)
        return out

    def seconds(self, when):
        """Seconds from ``epoch`` of a datetime."""
        return (when - dt.datetime.fromisoformat(self.epoch)).total_seconds()

    @classmethod
    def from_dict(cls, d):
        """The model of a truth file's ``params['sky_model']`` (inverse of :meth:`to_dict`)."""
        return cls(d["epoch"], d["amplitude"], tuple(d["periods"]), tuple(d["phases"]),
                   tuple(d["amplitudes"]), tuple(tuple(w) for w in d["windows"]))

    def to_dict(self):
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["kind"] = "sum of sinusoids"
        d["windows"] = [list(w) for w in self.windows]
        for key in ("periods", "phases", "amplitudes"):
            d[key] = list(d[key])
        return d


def make_sky_model(seed: int, epoch: dt.datetime, windows, *, n_terms: int = 3,
                   amplitude: float = 0.01,
                   period_range: tuple[float, float] = (1200.0, 4800.0)) -> SkyModel:
    """Draw the night's sky variation from its seed (see :class:`SkyModel`).

    Parameters
    ----------
    seed : int
        Night seed (its own random stream, independent of the frame plan).
    epoch : datetime.datetime
        t = 0 of the model.
    windows : sequence of (float, float)
        Observing windows in seconds from ``epoch``; the peak ``|variation|`` over them is
        ``amplitude``.
    n_terms : int
        Number of sinusoids.
    amplitude : float
        Peak relative variation.
    period_range : (float, float)
        Range of the periods in seconds (20-80 min: a rise or a fall takes 10-40 min).
    """
    rng = np.random.default_rng([seed, 5])
    periods = rng.uniform(period_range[0], period_range[1], n_terms)
    phases = rng.uniform(0.0, 2 * np.pi, n_terms)
    weights = rng.uniform(0.5, 1.0, n_terms)
    unit = SkyModel(epoch.isoformat(), amplitude, tuple(float(p) for p in periods),
                    tuple(float(p) for p in phases), tuple(float(w) for w in weights),
                    tuple((float(a), float(b)) for a, b in windows))
    grid = np.concatenate([np.linspace(a, b, max(int((b - a) / 5.0), 2) + 1)
                           for a, b in unit.windows])
    peak = float(np.max(np.abs(unit.variation(grid))))
    return SkyModel(unit.epoch, amplitude, unit.periods, unit.phases,
                    tuple(float(w * amplitude / peak) for w in weights), unit.windows)


#: The tutorial night's date (the science UT date); ``plan_night(date=...)`` moves from it.
TUTORIAL_DATE = dt.date(2017, 5, 5)


def _observation(number: int, days: int) -> str:
    """The programme's observation ID, renumbered on a night moved by ``days`` (unique labels)."""
    return f"GS-2017A-Q-29-{number + 100 * (days % 1000) if days else number}"


def plan_night(seed: int = 20170505, size: int = 2048, *,
               conditions: Conditions | None = None, date: dt.date | None = None) -> Night:
    """Plan the tutorial night: flats, standard and an on-target/offset-sky science sequence.

    The frames keep the tutorial's file names, numbering and time order:
    standard S20170504S0114-0117 (30 s, central ROI, dithered), lamp-on flats
    S20170505S0030-0044 and lamp-off flats S20170505S0060-0074 (15 s), and science
    S20170505S0095-0110 (60 s: 9 guided on-target dithers, 7 unguided offset skies).

    Parameters
    ----------
    seed : int
        Night seed; every random choice derives from it.
    size : int
        Array size in pixels (2048 real).
    conditions : Conditions, optional
        Requested bands and delivered degradations (default: the tutorial programme's
        request, met; the degradations change no random draw, so a degraded night has the
        nominal night's noise, stars and dithers).
    date : datetime.date, optional
        The science UT date (default 2017-05-05, the tutorial's).  Every time moves by whole
        days, so file names, ``GS-CAL<date>`` flat observations and DATE-OBS follow; the
        standard's and science's observation numbers gain ``100 x (days mod 1000)``, so data
        labels stay unique across nights.  The random draws do not depend on it.

    Returns
    -------
    Night
    """
    days = 0 if date is None else (date - TUTORIAL_DATE).days
    shift = dt.timedelta(days=days)
    cal = f"GS-CAL{TUTORIAL_DATE + shift:%Y%m%d}"
    cond = Conditions() if conditions is None else conditions
    zeropoint = float(np.mean(NOMINAL_ZEROPOINTS["Kshort"]))
    rng = np.random.default_rng([seed, 0])
    f = 2048 / size
    frames = []
    fwhm_ao = 4.6  # pixels, Kshort GeMS-corrected (~0.09")

    def seed_of(k):
        return int(rng.integers(0, 2**31 - 1)) + k

    # The sky: a slow drift per sequence times the night's variation (SkyModel), evaluated
    # at mid-exposure.  Standard: 4 x 30 s every 58 s; science: 16 x 60 s every 94 s.
    t_std = dt.datetime(2017, 5, 4, 23, 48, 12) + shift
    std_exptime, std_cadence = 30.0, 30.0 + 28.0
    t0 = dt.datetime(2017, 5, 5, 23, 5, 31) + shift
    pattern = "OSOSOSOSOSOSOSOO"
    sci_exptime, cadence = 60.0, 60.0 + 34.0
    span = cadence * (len(pattern) - 1)
    std_start = (t_std - t0).total_seconds()
    sky = make_sky_model(seed, t0, [(std_start, std_start + 3 * std_cadence + std_exptime),
                                    (0.0, span + sci_exptime)])
    sky_base_rate = 48.0  # e-/s/pixel, Kshort ~13.6 mag/arcsec^2 at 0.0197"/pix
    sky_drift = 0.10      # +10 % linear drift over the science sequence (several sigma)
    sky_jitter = 0.0001   # frame-to-frame rms on top (unresolved by any model, 0.005 sigma)
    std_level = None  # the standard's sky level: 48 e-/s x U(0.97, 1.03), drawn below

    def record(plan, delivered, u, nominal_fwhm=None):
        # apply the sequence's degradation at fraction u of it; nominal_fwhm: a guided frame's
        iq_factor, extinction, sky_factor = delivered.at(u)
        if nominal_fwhm is not None:
            plan.fwhm_px = nominal_fwhm * iq_factor
        plan.sky_rate = plan.sky_rate * sky_factor
        plan.conditions = frame_record(
            cond.requested, iq_factor=iq_factor, extinction=extinction, sky_factor=sky_factor,
            fwhm_px=plan.fwhm_px, ao_fwhm_px=fwhm_ao * iq_factor, guided=plan.guided,
            airmass=plan.airmass, sky_rate=plan.sky_rate, pixel_scale=0.0197 * f,
            zeropoint=zeropoint, beta=MOFFAT_BETA)
        return plan

    def sky_at(start, exptime, level, drift=0.0):
        # drift measured from the first science frame's mid-exposure (t = exptime / 2)
        mid = sky.seconds(start) + exptime / 2
        v = float(sky.variation(mid))
        rate = level * (1.0 + drift * (mid - exptime / 2) / span) * (1.0 + v)
        return rate, {"sky_mid_s": round(mid, 3), "sky_variation": v}

    # Standard star, previous UT date, central 1024^2 ROI, 4 dithers of a few arcsec.
    # The star is put on the bottom-left array (ext 2) with an offset of ~20" E and N.
    t = t_std
    std_dithers = [(0.0, 0.0), (3.0, 3.0), (-3.0, 3.0), (3.0, -3.0)]
    base_p, base_q = 20.4, 20.6
    for k, (dp, dq) in enumerate(std_dithers):
        fwhm, frame_seed = fwhm_ao * float(rng.uniform(0.95, 1.08)), seed_of(k)
        # one level for the sequence; a draw per frame keeps the plan's random stream (the
        # frames' seeds and conditions) what it was when each frame had its own level
        level = sky_base_rate * float(rng.uniform(0.97, 1.03))
        std_level = level if std_level is None else std_level
        rate, sky_extra = sky_at(t, std_exptime, std_level)
        frames.append(record(FramePlan(
            filename=_name(t, 114 + k), kind="standard", is_sky=False, number=k + 1,
            obsid=_observation(9, days), program="GS-2017A-Q-29", obsclass="partnerCal",
            object="9132", ut_start=t.isoformat(), exptime=std_exptime, lnrs=2, coadds=1,
            poff=base_p + dp, qoff=base_q + dq, pa=0.0,
            target_ra=STANDARD_9132[0], target_dec=STANDARD_9132[1],
            airmass=round(1.021 + 0.002 * k, 3), guided=True, roi=True,
            fwhm_px=fwhm, seed=frame_seed, sky_rate=rate, extra=sky_extra,
            rotation_deg=float(rng.normal(0, 0.002)),
            plate_scale=1.0 + float(rng.normal(0, 2e-5))),
            cond.standard, k / (len(std_dithers) - 1), fwhm))
        t += dt.timedelta(seconds=std_cadence)

    # Dome flats: lamp on then lamp off, 15 s each, dayCal, AZEL_TOPO.
    for kind, first, obs, t in (("flat_on", 30, f"{cal}-3",
                                 dt.datetime(2017, 5, 5, 20, 58, 5) + shift),
                                ("flat_off", 60, f"{cal}-4",
                                 dt.datetime(2017, 5, 5, 21, 21, 40) + shift)):
        for k in range(15):
            frames.append(FramePlan(
                filename=_name(t, first + k), kind=kind, is_sky=False, number=k + 1,
                obsid=obs, program=cal, obsclass="dayCal",
                object="Domeflat" if kind == "flat_on" else "Domeflat OFF",
                ut_start=t.isoformat(), exptime=15.0, lnrs=2, coadds=1, poff=0.0, qoff=0.0,
                pa=0.0, target_ra=DOME[0], target_dec=DOME[1], airmass=1.413, guided=False,
                roi=False, fwhm_px=0.0, seed=seed_of(k),
                lamp_scale=1.0 + float(rng.normal(0, 0.004)),
                conditions={"requested": {"iq": 100, "cc": 100, "bg": 100, "wv": 100}}))
            t += dt.timedelta(seconds=15.0 + 26.0)

    # Science: 16 frames, 60 s.  Pattern: O S O S ... O S O O (9 on target, 7 sky).
    on_dithers = [(0.0, 0.0), (4.0, 4.0), (-4.0, 4.0), (-4.0, -4.0), (4.0, -4.0),
                  (2.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (0.0, -2.0)]
    sky_base = (-200.0, 260.0)  # far from the galaxy, > 75" from the field
    sky_dithers = [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0), (-5.0, 0.0), (0.0, -5.0),
                   (5.0, 5.0), (-5.0, -5.0)]
    n_on = n_sky = 0
    for k, c in enumerate(pattern):
        t = t0 + dt.timedelta(seconds=cadence * k)
        rate, sky_extra = sky_at(t, sci_exptime, sky_base_rate, sky_drift)
        on = c == "O"
        if on:
            dp, dq = on_dithers[n_on]
            n_on += 1
        else:
            dp, dq = sky_dithers[n_sky]
            dp, dq = dp + sky_base[0], dq + sky_base[1]
            n_sky += 1
        sci_fwhm = fwhm_ao * float(rng.uniform(0.92, 1.1)) if on \
            else max(28.0 / f, 4.0) * float(rng.uniform(0.9, 1.15))
        frames.append(record(FramePlan(
            filename=_name(t, 95 + k), kind="science", is_sky=not on, number=k + 1,
            obsid=_observation(13, days), program="GS-2017A-Q-29", obsclass="science",
            object="NGC5128", ut_start=t.isoformat(), exptime=sci_exptime, lnrs=2, coadds=1,
            poff=dp, qoff=dq, pa=0.0, target_ra=NGC5128[0], target_dec=NGC5128[1],
            airmass=round(1.041 + 0.0009 * k, 4), guided=on, roi=False,
            fwhm_px=sci_fwhm, seed=seed_of(k),
            sky_rate=rate * (1 + float(rng.normal(0, sky_jitter))), extra=sky_extra,
            rotation_deg=float(rng.normal(0, 0.002)),
            plate_scale=1.0 + float(rng.normal(0, 2e-5))),
            cond.science, k / (len(pattern) - 1), sci_fwhm if on else None))

    params = {
        "lamp_on_rate": 2600.0,     # e-/s per pixel at flat = 1 (dome lamp + thermal is on-off)
        "lamp_off_rate": 450.0,     # thermal emission of the dome, lamp off
        "sky_base_rate": sky_base_rate,
        "sky_drift": sky_drift,
        "sky_jitter": sky_jitter,
        "sky_model": sky.to_dict(),
        "standard_sky_rate": std_level,
        "cosmic_rate_per_cm2_per_min": 5.0,
        "pixel_pitch_um": 18.0,
        "galaxy": {
            "center_east": 45.0, "center_north": -45.0,   # arcsec from the tutorial target
            "scale_arcsec": 30.0, "axis_ratio": 0.75, "pa_deg": 35.0,
            "central_rate": 120.0,                        # e-/s per full-size pixel
            "taper_arcsec": [45.0, 80.0],                 # smooth cut-off of the halo
        },
        "standard": {"name": "9132", "ra": STANDARD_9132[0], "dec": STANDARD_9132[1],
                     "mag": 14.3},
        "extinction_mag_per_airmass": 0.065,
        "bright_stars": [  # (east, north) arcsec from NGC5128 target, Kshort magnitude
            (-21.0, 18.0, 9.3), (25.0, -22.0, 12.2), (-14.0, -27.0, 13.0)],
        "n_field_stars_full": 1400,
        "n_sky_stars_full": 160,
        "n_standard_field_stars_full": 40,
        "field_mag_range": [14.5, 22.5],
        "t_read": 0.66,
    }
    params["pixel_scale"] = 0.0197 * f
    params["fwhm_ao_px"] = fwhm_ao
    params["f"] = f
    params["science_span_s"] = span
    params["conditions"] = cond.to_dict()
    params["half_field_arcsec"] = 0.5 * (2 * 2048 + 145) * 0.0197 * 1.1
    return Night(seed=seed, size=size, frames=frames, params=params)
