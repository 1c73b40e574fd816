"""The observing plan of the simulated tutorial night: frames, times, offsets, conditions."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["FramePlan", "Night", "plan_night"]

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


def plan_night(seed: int = 20170505, size: int = 2048) -> Night:
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

    Returns
    -------
    Night
    """
    rng = np.random.default_rng([seed, 0])
    f = 2048 / size
    frames = []
    fwhm_ao = 4.6  # pixels, Kshort GeMS-corrected (~0.09")

    def seed_of(k):
        return int(rng.integers(0, 2**31 - 1)) + k

    # Standard star, previous UT date, central 1024^2 ROI, 4 dithers of a few arcsec.
    # The star is put on the bottom-left array (ext 2) with an offset of ~20" E and N.
    t = dt.datetime(2017, 5, 4, 23, 48, 12)
    std_dithers = [(0.0, 0.0), (3.0, 3.0), (-3.0, 3.0), (3.0, -3.0)]
    base_p, base_q = 20.4, 20.6
    for k, (dp, dq) in enumerate(std_dithers):
        frames.append(FramePlan(
            filename=_name(t, 114 + k), kind="standard", is_sky=False, number=k + 1,
            obsid="GS-2017A-Q-29-9", program="GS-2017A-Q-29", obsclass="partnerCal",
            object="9132", ut_start=t.isoformat(), exptime=30.0, lnrs=2, coadds=1,
            poff=base_p + dp, qoff=base_q + dq, pa=0.0,
            target_ra=STANDARD_9132[0], target_dec=STANDARD_9132[1],
            airmass=round(1.021 + 0.002 * k, 3), guided=True, roi=True,
            fwhm_px=fwhm_ao * float(rng.uniform(0.95, 1.08)), seed=seed_of(k),
            sky_rate=48.0 * float(rng.uniform(0.97, 1.03)),
            rotation_deg=float(rng.normal(0, 0.002)),
            plate_scale=1.0 + float(rng.normal(0, 2e-5))))
        t += dt.timedelta(seconds=30.0 + 28.0)

    # Dome flats: lamp on then lamp off, 15 s each, dayCal, AZEL_TOPO.
    for kind, first, obs, t in (("flat_on", 30, "GS-CAL20170505-3",
                                 dt.datetime(2017, 5, 5, 20, 58, 5)),
                                ("flat_off", 60, "GS-CAL20170505-4",
                                 dt.datetime(2017, 5, 5, 21, 21, 40))):
        for k in range(15):
            frames.append(FramePlan(
                filename=_name(t, first + k), kind=kind, is_sky=False, number=k + 1,
                obsid=obs, program="GS-CAL20170505", obsclass="dayCal",
                object="Domeflat" if kind == "flat_on" else "Domeflat OFF",
                ut_start=t.isoformat(), exptime=15.0, lnrs=2, coadds=1, poff=0.0, qoff=0.0,
                pa=0.0, target_ra=DOME[0], target_dec=DOME[1], airmass=1.413, guided=False,
                roi=False, fwhm_px=0.0, seed=seed_of(k),
                lamp_scale=1.0 + float(rng.normal(0, 0.004))))
            t += dt.timedelta(seconds=15.0 + 26.0)

    # Science: 16 frames, 60 s.  Pattern: O S O S ... O S O O (9 on target, 7 sky).
    pattern = "OSOSOSOSOSOSOSOO"
    on_dithers = [(0.0, 0.0), (4.0, 4.0), (-4.0, 4.0), (-4.0, -4.0), (4.0, -4.0),
                  (2.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (0.0, -2.0)]
    sky_base = (-200.0, 260.0)  # far from the galaxy, > 75" from the field
    sky_dithers = [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0), (-5.0, 0.0), (0.0, -5.0),
                   (5.0, 5.0), (-5.0, -5.0)]
    t0 = dt.datetime(2017, 5, 5, 23, 5, 31)
    cadence = 60.0 + 34.0
    span = cadence * (len(pattern) - 1)
    sky_base_rate = 48.0  # e-/s/pixel, Kshort ~13.6 mag/arcsec^2 at 0.0197"/pix
    sky_drift = 0.08      # +8 % linear drift over the sequence (several sigma)
    sky_jitter = 0.0005   # frame-to-frame rms on top of the drift (0.03 sigma)
    n_on = n_sky = 0
    for k, c in enumerate(pattern):
        t = t0 + dt.timedelta(seconds=cadence * k)
        frac = cadence * k / span
        on = c == "O"
        if on:
            dp, dq = on_dithers[n_on]
            n_on += 1
        else:
            dp, dq = sky_dithers[n_sky]
            dp, dq = dp + sky_base[0], dq + sky_base[1]
            n_sky += 1
        frames.append(FramePlan(
            filename=_name(t, 95 + k), kind="science", is_sky=not on, number=k + 1,
            obsid="GS-2017A-Q-29-13", program="GS-2017A-Q-29", obsclass="science",
            object="NGC5128", ut_start=t.isoformat(), exptime=60.0, lnrs=2, coadds=1,
            poff=dp, qoff=dq, pa=0.0, target_ra=NGC5128[0], target_dec=NGC5128[1],
            airmass=round(1.041 + 0.0009 * k, 4), guided=on, roi=False,
            fwhm_px=(fwhm_ao * float(rng.uniform(0.92, 1.1))) if on
            else max(28.0 / f, 4.0) * float(rng.uniform(0.9, 1.15)),
            seed=seed_of(k),
            sky_rate=sky_base_rate * (1.0 + sky_drift * frac)
            * (1 + float(rng.normal(0, sky_jitter))),
            rotation_deg=float(rng.normal(0, 0.002)),
            plate_scale=1.0 + float(rng.normal(0, 2e-5))))

    params = {
        "lamp_on_rate": 2600.0,     # e-/s per pixel at flat = 1 (dome lamp + thermal is on-off)
        "lamp_off_rate": 450.0,     # thermal emission of the dome, lamp off
        "sky_base_rate": sky_base_rate,
        "sky_drift": sky_drift,
        "sky_jitter": sky_jitter,
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
    params["half_field_arcsec"] = 0.5 * (2 * 2048 + 145) * 0.0197 * 1.1
    return Night(seed=seed, size=size, frames=frames, params=params)
