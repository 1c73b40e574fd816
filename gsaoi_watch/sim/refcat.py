"""A Gaia-DR3-like reference catalogue of the simulated fields, and its truth.

The simulated stars (:func:`gsaoi_watch.sim.render.make_catalogue`) sit at their positions
of the night's epoch (the science sequence's UT start, 2017-05-05 in the tutorial night).
Here each star also gets a proper motion and a G - K colour, drawn from the night seed
apart from everything the frames use (the rendered pixels do not change), and the
catalogue gives what a Gaia DR3 extract would: positions at ``ref_epoch`` 2016.0 (the night's
position moved back by the proper motion) with Gaia-like errors that grow with G, proper
motions with their errors, and no proper motion for a few per cent of the sources
(two-parameter solutions).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table
from astropy.time import Time

from gsaoi_watch.sim.plan import plan_night
from gsaoi_watch.sim.render import make_catalogue

__all__ = ["FORMATS", "GAIA_REF_EPOCH", "SOURCE_ID_BASE", "gaia_errors", "night_epoch",
           "reference_catalogue", "true_star_positions", "write_reference_catalogue"]

#: Gaia DR3's reference epoch (Julian year).
GAIA_REF_EPOCH = 2016.0
#: ``source_id`` of simulated star ``id`` is ``SOURCE_ID_BASE + id``.
SOURCE_ID_BASE = 6_090_000_000_000_000_000
#: File suffix -> astropy format of :func:`write_reference_catalogue`.
FORMATS = {".fits": "fits", ".fit": "fits", ".csv": "ascii.csv", ".vot": "votable",
           ".xml": "votable"}

# Gaia DR3 typical uncertainties (Lindegren et al. 2021, Table 4 and Fig. 9): G, position
# (mas, per axis), proper motion (mas/yr, per axis); interpolated linearly in G in the log,
# constant outside.
_ERROR_G = np.array([15.0, 17.0, 20.0, 21.0])
_ERROR_POS = np.array([0.02, 0.05, 0.4, 1.0])
_ERROR_PM = np.array([0.02, 0.07, 0.5, 1.4])

_PM_SIGMA = 4.0          # mas/yr per axis, most stars
_PM_SIGMA_FAST = 25.0    # mas/yr per axis, the fast few
_FAST_FRACTION = 0.05
_COLOUR_RANGE = (1.0, 3.0)   # G - K, uniform
_MAS_PER_DEG = 3.6e6


def gaia_errors(g):
    """Gaia-DR3-like per-axis uncertainties at magnitude G.

    Parameters
    ----------
    g : array_like
        G magnitudes.

    Returns
    -------
    position : ndarray
        Position error in mas (of ``ra * cos(dec)`` and of ``dec``): 0.02 at G <= 15,
        0.05 at 17, 0.4 at 20, 1.0 at 21, interpolated in the log.
    pm : ndarray
        Proper-motion error in mas/yr: 0.02, 0.07, 0.5, 1.4 at the same G.
    """
    g = np.asarray(g, dtype=np.float64)
    pos = np.exp(np.interp(g, _ERROR_G, np.log(_ERROR_POS)))
    pm = np.exp(np.interp(g, _ERROR_G, np.log(_ERROR_PM)))
    return pos, pm


def night_epoch(seed: int = 20170505, size: int = 2048) -> float:
    """The night's epoch as a decimal year: the UT start of its first science frame.

    The star catalogue's ``ra``, ``dec`` are the positions at this epoch.
    """
    night = plan_night(seed, size)
    start = min(p.ut_start for p in night.frames if p.kind == "science")
    return float(Time(dt.datetime.fromisoformat(start), scale="utc").decimalyear)


def _star_draws(seed, n):
    # One stream for the reference catalogue only, drawn star by star in catalogue order.
    rng = np.random.default_rng([seed, 15])
    colour = rng.uniform(*_COLOUR_RANGE, n)
    fast = rng.random(n) < _FAST_FRACTION
    sigma = np.where(fast, _PM_SIGMA_FAST, _PM_SIGMA)
    pmra = rng.normal(0.0, 1.0, n) * sigma
    pmdec = rng.normal(0.0, 1.0, n) * sigma
    noise = rng.standard_normal((4, n))   # ra, dec, pmra, pmdec errors in sigma
    two_param = rng.random(n)             # smallest of a field: two-parameter solutions
    return colour, pmra, pmdec, noise, two_param


def _field_rows(cat, field):
    if field is None:
        return np.arange(len(cat["id"]))
    if field not in (0, 1, 2):
        raise ValueError(f"field must be 0 (science), 1 (sky), 2 (standard) or None, not {field}")
    return np.nonzero(cat["field"] == field)[0]


def true_star_positions(seed: int = 20170505, size: int = 2048, field: int | None = 0) -> Table:
    """The truth behind :func:`reference_catalogue`: every star of a field at the night's epoch.

    Parameters
    ----------
    seed, size : int
        The night (as :func:`gsaoi_watch.sim.simulate_night`).
    field : int or None
        0 science (NGC 5128), 1 offset sky, 2 standard; None for all.

    Returns
    -------
    astropy.table.Table
        Columns ``id`` (the star's index in ``truth.json`` ``catalogue`` and in the frames'
        star lists), ``source_id`` (``SOURCE_ID_BASE + id``), ``ra``, ``dec`` (deg, at the
        night's epoch: the rendered positions), ``mag`` (Kshort), ``pmra`` (mas/yr, of
        ``ra * cos(dec)``), ``pmdec`` (mas/yr), ``phot_g_mean_mag`` (G = Kshort + a colour
        uniform in 1-3) and ``field``; ``meta['epoch']`` is the night's epoch (decimal year).
    """
    cat = make_catalogue(seed, size)
    colour, pmra, pmdec, _, _ = _star_draws(seed, len(cat["id"]))
    rows = _field_rows(cat, field)
    t = Table()
    t["id"] = cat["id"][rows].astype(np.int64)
    t["source_id"] = t["id"] + np.int64(SOURCE_ID_BASE)
    t["ra"] = cat["ra"][rows]
    t["ra"].unit = "deg"
    t["dec"] = cat["dec"][rows]
    t["dec"].unit = "deg"
    t["mag"] = cat["mag"][rows]
    t["mag"].unit = "mag"
    t["pmra"] = pmra[rows]
    t["pmra"].unit = "mas / yr"
    t["pmdec"] = pmdec[rows]
    t["pmdec"].unit = "mas / yr"
    t["phot_g_mean_mag"] = cat["mag"][rows] + colour[rows]
    t["phot_g_mean_mag"].unit = "mag"
    t["field"] = cat["field"][rows]
    t.meta["epoch"] = night_epoch(seed, size)
    return t


def reference_catalogue(seed: int = 20170505, size: int = 2048, *, field: int | None = 0,
                        epoch: float = GAIA_REF_EPOCH, g_limit: float = 21.0,
                        two_parameter_fraction: float = 0.03) -> Table:
    """A Gaia-DR3-like extract of a simulated field.

    Parameters
    ----------
    seed, size : int
        The night (as :func:`gsaoi_watch.sim.simulate_night`).
    field : int or None
        0 science (default), 1 offset sky, 2 standard; None for all.  The galaxy is not in
        it (Gaia sees no point source there).
    epoch : float
        Reference epoch of the positions (Julian year; Gaia DR3: 2016.0).
    g_limit : float
        Faintest G in the catalogue (Gaia's limit, 21).
    two_parameter_fraction : float
        Fraction of the field's sources given a two-parameter solution: no proper motion
        (``pmra``, ``pmdec`` and their errors NaN) and 5 times the position error.

    Returns
    -------
    astropy.table.Table
        Gaia DR3 columns and units: ``source_id``, ``ref_epoch`` (yr), ``ra``, ``dec``
        (deg, at ``ref_epoch``), ``ra_error`` (mas, of ``ra * cos(dec)``), ``dec_error``
        (mas), ``pmra`` (mas/yr, mu_alpha* = mu_alpha cos(dec)), ``pmra_error``, ``pmdec``,
        ``pmdec_error`` (mas/yr) and ``phot_g_mean_mag`` (mag).  Positions are the night's
        (:func:`true_star_positions`) moved back by ``pm * (night_epoch - epoch)`` plus a
        Gaussian error of ``ra_error`` / ``dec_error`` (:func:`gaia_errors` at G); the proper
        motions carry Gaussian errors of ``pmra_error`` / ``pmdec_error``.  Sorted by
        ``source_id``.
    """
    if not 0.0 <= two_parameter_fraction <= 1.0:
        raise ValueError(f"two_parameter_fraction must be in [0, 1], not {two_parameter_fraction}")
    cat = make_catalogue(seed, size)
    colour, pmra, pmdec, noise, two_param = _star_draws(seed, len(cat["id"]))
    rows = _field_rows(cat, field)
    g = cat["mag"][rows] + colour[rows]
    rows, g = rows[g <= g_limit], g[g <= g_limit]
    n = len(rows)
    sig_pos, sig_pm = gaia_errors(g)
    two = np.zeros(n, dtype=bool)
    n_two = int(round(two_parameter_fraction * n))
    two[np.argsort(two_param[rows], kind="stable")[:n_two]] = True
    sig_pos = np.where(two, 5.0 * sig_pos, sig_pos)
    span = night_epoch(seed, size) - epoch
    ra, dec = cat["ra"][rows], cat["dec"][rows]
    pmra_t, pmdec_t = pmra[rows], pmdec[rows]
    # back to the reference epoch along the proper motion (linear: the offsets are < 1")
    dec_ref = dec - pmdec_t * span / _MAS_PER_DEG
    ra_ref = ra - pmra_t * span / _MAS_PER_DEG / np.cos(np.radians(0.5 * (dec + dec_ref)))
    dec_cat = dec_ref + noise[1, rows] * sig_pos / _MAS_PER_DEG
    ra_cat = (ra_ref + noise[0, rows] * sig_pos / _MAS_PER_DEG
              / np.cos(np.radians(dec_cat))) % 360.0
    pmra_cat = np.where(two, np.nan, pmra_t + noise[2, rows] * sig_pm)
    pmdec_cat = np.where(two, np.nan, pmdec_t + noise[3, rows] * sig_pm)
    sig_pm = np.where(two, np.nan, sig_pm)
    t = Table()
    for name, values, dtype, unit in (
            ("source_id", cat["id"][rows] + SOURCE_ID_BASE, np.int64, None),
            ("ref_epoch", np.full(n, float(epoch)), np.float64, "yr"),
            ("ra", ra_cat, np.float64, "deg"),
            ("ra_error", sig_pos, np.float32, "mas"),
            ("dec", dec_cat, np.float64, "deg"),
            ("dec_error", sig_pos, np.float32, "mas"),
            ("pmra", pmra_cat, np.float64, "mas / yr"),
            ("pmra_error", sig_pm, np.float32, "mas / yr"),
            ("pmdec", pmdec_cat, np.float64, "mas / yr"),
            ("pmdec_error", sig_pm, np.float32, "mas / yr"),
            ("phot_g_mean_mag", g, np.float32, "mag")):
        t[name] = np.asarray(values, dtype=dtype)
        t[name].unit = unit
    t.sort("source_id")
    return t


def write_reference_catalogue(path: str | os.PathLike[str], table: Table) -> Path:
    """Write a catalogue in the format its suffix names, atomically.

    ``.fits``/``.fit``: a FITS binary table (NaN for missing values); ``.csv``: comma
    separated with a header line, missing values empty (as the Gaia archive writes them);
    ``.vot``/``.xml``: a VOTable.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        For an unknown suffix, naming the file.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown catalogue format {path.suffix!r} "
                         f"(use {', '.join(FORMATS)})")
    out = table.copy()
    if fmt == "ascii.csv":
        for name in out.colnames:
            col = out[name]
            if col.dtype.kind == "f" and not np.all(np.isfinite(col)):
                out[name] = MaskedColumn(col, mask=~np.isfinite(col))
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    out.write(tmp, format=fmt, overwrite=True)
    os.replace(tmp, path)
    return path
