"""Read a user's reference catalogue (FITS, VOTable or CSV) into one column layout.

A Gaia DR3 extract is the model: ``ra``, ``dec`` (degrees at ``ref_epoch``), ``ra_error``,
``dec_error`` (mas), ``pmra`` (mu_alpha cos dec), ``pmdec`` (mas/yr), their errors, and
``phot_g_mean_mag``.  Other names that catalogues and archives use for the same columns
(VizieR's ``RA_ICRS``/``RAJ2000``/``e_RA_ICRS``/``pmRA``/``Epoch``/``Gmag``, SExtractor's
``X_WORLD``/``Y_WORLD``, ...) are recognised too, case-insensitively, and units written in
the file (degrees or hours, mas or arcsec, mas/yr or arcsec/yr) are honoured through
astropy's units.  Coordinates may also be sexagesimal text.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table

from gsaoi_watch.errors import ReductionError

__all__ = ["COLUMN_NAMES", "read_reference_catalog"]

#: Canonical column -> names recognised for it (lower case), in order of preference.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "ra": ("ra", "ra_icrs", "raj2000", "_raj2000", "ra_deg", "radeg", "ra_j2000", "alpha_j2000",
           "x_world", "ra2000"),
    "dec": ("dec", "de_icrs", "dec_icrs", "dej2000", "_dej2000", "decj2000", "dec_deg",
            "dedeg", "decdeg", "dec_j2000", "delta_j2000", "y_world", "dec2000", "de"),
    "ra_error": ("ra_error", "e_ra_icrs", "e_raj2000", "ra_err", "era", "e_ra"),
    "dec_error": ("dec_error", "e_de_icrs", "e_dej2000", "dec_err", "edec", "e_de", "e_dec"),
    "pmra": ("pmra", "pm_ra", "pmra_cosdec", "pmracosd"),
    "pmdec": ("pmdec", "pmde", "pm_dec"),
    "pmra_error": ("pmra_error", "e_pmra", "pmra_err"),
    "pmdec_error": ("pmdec_error", "e_pmde", "e_pmdec", "pmdec_err"),
    "epoch": ("ref_epoch", "epoch", "epoch_yr", "refepoch"),
    "mag": ("phot_g_mean_mag", "gmag", "mag", "g", "magnitude", "kmag", "ksmag", "mag_auto"),
}
#: Units assumed when a column has none.
DEFAULT_UNITS = {"ra": u.deg, "dec": u.deg, "ra_error": u.mas, "dec_error": u.mas,
                 "pmra": u.mas / u.yr, "pmdec": u.mas / u.yr, "pmra_error": u.mas / u.yr,
                 "pmdec_error": u.mas / u.yr}


def _read_table(path: Path) -> Table:
    suffix = "".join(path.suffixes[-2:]).lower()
    formats: list[str | None]
    if suffix.endswith((".csv", ".csv.gz")):
        formats = ["ascii.csv", "ascii"]
    elif suffix.endswith((".vot", ".xml", ".votable")):
        formats = ["votable"]
    elif suffix.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        formats = ["fits"]
    else:
        formats = [None, "ascii.csv", "ascii"]
    last: Exception | None = None
    for fmt in formats:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = Table.read(path, format=fmt) if fmt else Table.read(path)
            return table
        except Exception as exc:  # noqa: BLE001 - astropy's readers raise many kinds
            last = exc
    text = str(last).splitlines()[0] if last and str(last) else type(last).__name__
    raise ReductionError(f"{path.name}: not a readable FITS, VOTable or CSV table ({text})")


def _column(table: Table, key: str) -> str | None:
    lower = {c.lower(): c for c in table.colnames}
    return next((lower[name] for name in COLUMN_NAMES[key] if name in lower), None)


def _values(table: Table, name: str, key: str, path: Path) -> np.ndarray:
    """The column as float64 in the canonical unit (NaN for masked or empty values)."""
    col = table[name]
    if key in ("ra", "dec") and col.dtype.kind in "US":
        return _sexagesimal(col, key, path)
    data = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan) \
        if col.dtype.kind in "biuf" else None
    if data is None:
        try:
            data = np.asarray([float(v) if str(v).strip() not in ("", "--") else np.nan
                               for v in col], dtype=np.float64)
        except ValueError:
            raise ReductionError(f"{path.name}: column {name} is not numeric") from None
    unit = getattr(col, "unit", None)
    want = DEFAULT_UNITS.get(key)
    if want is not None and unit is not None:
        try:
            data = (data * u.Unit(unit)).to_value(want)
        except (ValueError, TypeError, u.UnitsError):
            if key in ("ra", "dec") and str(unit).lower() in ("h", "hour", "hours", "hourangle"):
                data = data * 15.0
            else:
                raise ReductionError(f"{path.name}: column {name} in {unit}, which is not "
                                     f"convertible to {want}") from None
    return data


def _sexagesimal(col, key: str, path: Path) -> np.ndarray:
    from astropy.coordinates import Angle

    unit = u.hourangle if key == "ra" else u.deg
    out = np.full(len(col), np.nan)
    for k, value in enumerate(col):
        text = str(value).strip()
        if not text:
            continue
        try:
            out[k] = Angle(text, unit=unit).to_value(u.deg)
        except (ValueError, TypeError):
            raise ReductionError(f"{path.name}: {key} {text!r} in row {k + 1} is not an "
                                 "angle") from None
    return out


def _epoch(table: Table, name: str | None, path: Path) -> np.ndarray:
    """Epochs as decimal years, from a column (or the header's EPOCH) or NaN."""
    n = len(table)
    if name is not None:
        col = table[name]
        if col.dtype.kind in "US":
            text = [str(v).strip().lstrip("JjBb") for v in col]
            try:
                return np.asarray([float(t) if t else np.nan for t in text])
            except ValueError:
                raise ReductionError(f"{path.name}: column {name} is not an epoch") from None
        return np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
    for key in ("REF_EPOCH", "EPOCH", "ref_epoch", "epoch"):
        value = table.meta.get(key)
        try:
            return np.full(n, float(str(value).lstrip("JjBb")))
        except (TypeError, ValueError):
            continue
    return np.full(n, np.nan)


def read_reference_catalog(path: str | os.PathLike[str]) -> Table:
    """Read a reference catalogue for absolute astrometry.

    Parameters
    ----------
    path : str or os.PathLike
        A FITS table, a VOTable (``.vot``, ``.xml``) or a CSV file with at least right
        ascension and declination (see :data:`COLUMN_NAMES`).

    Returns
    -------
    astropy.table.Table
        Columns ``ra``, ``dec`` (degrees), ``ra_error``, ``dec_error`` (mas), ``pmra``
        (mu_alpha cos dec), ``pmdec``, ``pmra_error``, ``pmdec_error`` (mas/yr), ``epoch``
        (decimal year of the positions) and ``mag``, NaN where the catalogue has no
        value; rows without a finite position dropped.  ``meta['name']`` is the file's
        name and ``meta['path']`` its path.

    Raises
    ------
    ReductionError
        With a one-line message naming the file: missing or unreadable, no position
        columns, no usable rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"{path.name}: reference catalogue not found ({path})")
    table = _read_table(path)
    names = {key: _column(table, key) for key in COLUMN_NAMES}
    if names["ra"] is None or names["dec"] is None:
        raise ReductionError(f"{path.name}: reference catalogue needs right ascension and "
                             f"declination columns (ra, dec; found {', '.join(table.colnames)})"
                             [:300])
    out = Table()
    for key in ("ra", "dec", "ra_error", "dec_error", "pmra", "pmdec", "pmra_error",
                "pmdec_error", "mag"):
        name = names[key]
        out[key] = (_values(table, name, key, path) if name is not None
                    else np.full(len(table), np.nan))
    out["epoch"] = _epoch(table, names["epoch"], path)
    ok = np.isfinite(out["ra"]) & np.isfinite(out["dec"]) & (np.abs(out["dec"]) <= 90.0)
    out = out[ok]
    if len(out) == 0:
        raise ReductionError(f"{path.name}: reference catalogue has no rows with a position")
    out["ra"] = np.mod(out["ra"], 360.0)
    out.meta["name"] = path.name
    out.meta["path"] = str(path)
    return out
