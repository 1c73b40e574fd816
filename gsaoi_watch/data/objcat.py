"""OBJCAT, the source catalogue of an array, in the columns DRAGONS' detectSources writes.

DRAGONS runs SExtractor with ``geminidr/gemini/lookups/source_detection/default.param``
and appends five columns of its own (``gempy/gemini/gemini_tools.py`` ``add_objcat``:
REF_NUMBER, REF_MAG, REF_MAG_ERR, PROFILE_FWHM, PROFILE_EE50).  :data:`OBJCAT_COLUMNS`
lists, in that order, the columns gsaoi_watch writes, with SExtractor's data types and
units (``src/param.h``: T_LONG 32-bit, T_SHORT 16-bit, T_FLOAT 32-bit, T_DOUBLE 64-bit).
The columns SExtractor measures that gsaoi_watch does not (the ERR*_IMAGE / ERR*_WORLD
position errors) are left out: none of DRAGONS' consumers reads them (merge_gsaoi_objcats,
adjustWCSToReference, determineAstrometricSolution, measureIQ's clip_sources, measureBG's
measure_bg_from_objcat, measureCC).

Three things are here: the format (:data:`OBJCAT_COLUMNS`), the world columns computed
from an array's WCS when the catalogue is written (:func:`with_world_columns`,
:func:`objcat_table`), and the reader of a catalogue found in a file, ours, DRAGONS' or an
older gsaoi_watch product with lowercase names (:func:`read_objcat`).  An undefined value
is written as -999, DRAGONS' placeholder (SExtractor writes no NaN), and read back as NaN.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from gsaoi_watch.errors import CatalogError

__all__ = ["DETECT_COLUMNS", "MEASURED_COLUMNS", "OBJCAT_COLUMNS", "UNDEFINED", "objcat_hdu",
           "objcat_table", "read_objcat", "with_world_columns"]

#: DRAGONS' placeholder for a value not measured (``add_objcat``).
UNDEFINED = -999

#: (name, FITS data type, TUNIT) of every OBJCAT column written, in DRAGONS' order.
#: ``None`` as unit: none written (SExtractor writes no TUNIT for dimensionless columns);
#: ``"flux"``: "count" as SExtractor writes it for the image's own units (the TUNIT comment
#: names the array's BUNIT, 'electron'; "electron" is not a FITS-standard unit, and astropy
#: warns reading it from a table).
OBJCAT_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("NUMBER", "i4", None),
    ("X_IMAGE", "f4", "pixel"),
    ("Y_IMAGE", "f4", "pixel"),
    ("X_WORLD", "f8", "deg"),
    ("Y_WORLD", "f8", "deg"),
    ("A_IMAGE", "f4", "pixel"),
    ("B_IMAGE", "f4", "pixel"),
    ("THETA_IMAGE", "f4", "deg"),
    ("A_WORLD", "f4", "deg"),
    ("B_WORLD", "f4", "deg"),
    ("THETA_WORLD", "f4", "deg"),
    ("FWHM_IMAGE", "f4", "pixel"),
    ("FWHM_WORLD", "f4", "deg"),
    ("FLUX_RADIUS", "f4", "pixel"),
    ("ELLIPTICITY", "f4", None),
    ("FLUX_AUTO", "f4", "flux"),
    ("FLUXERR_AUTO", "f4", "flux"),
    ("MAG_AUTO", "f4", "mag"),
    ("MAGERR_AUTO", "f4", "mag"),
    ("FLUX_MAX", "f4", "flux"),
    ("CLASS_STAR", "f4", None),
    ("ISOAREA_IMAGE", "i4", "pixel**2"),
    ("FLAGS", "i2", None),
    ("IMAFLAGS_ISO", "i4", None),
    ("NIMAFLAGS_ISO", "i4", None),
    ("BACKGROUND", "f4", "flux"),
    ("REF_NUMBER", "i4", None),
    ("REF_MAG", "f4", "mag"),
    ("REF_MAG_ERR", "f4", "mag"),
    ("PROFILE_FWHM", "f4", "pix"),
    ("PROFILE_EE50", "f4", "pix"),
)

#: The columns detectSources (``gsaoi_watch.reduction.detect``) measures, in OBJCAT order.
DETECT_COLUMNS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE",
                  "FWHM_IMAGE", "FLUX_RADIUS", "ELLIPTICITY", "FLUX_AUTO", "FLUXERR_AUTO",
                  "MAG_AUTO", "MAGERR_AUTO", "FLUX_MAX", "CLASS_STAR", "ISOAREA_IMAGE",
                  "FLAGS", "IMAFLAGS_ISO", "NIMAFLAGS_ISO", "BACKGROUND")

#: The measurements gsaoi_watch's own consumers read (stack alignment, QA, photometry):
#: always present, as float64, in a table :func:`read_objcat` returns (NaN if unknown).
MEASURED_COLUMNS = ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FWHM_IMAGE",
                    "ELLIPTICITY", "FLUX_MAX")

#: Older gsaoi_watch products: the lowercase names and what they are.
_LEGACY = {"number": "NUMBER", "x": "X_IMAGE", "y": "Y_IMAGE", "flux": "FLUX_AUTO",
           "flux_err": "FLUXERR_AUTO", "fwhm": "FWHM_IMAGE", "ellipticity": "ELLIPTICITY",
           "peak": "FLUX_MAX", "area": "ISOAREA_IMAGE"}


def _data_unit(header: Any) -> str:
    """The unit of an array's values: its BUNIT in astropy's spelling ('electron', 'adu')."""
    unit = str(header.get("BUNIT", "electron") if header is not None else "electron")
    unit = unit.strip().lower()
    return "electron" if unit.startswith("electron") else (unit or "electron")


def with_world_columns(table: Table, header: Any) -> Table:
    """Add X_WORLD, Y_WORLD, A_WORLD, B_WORLD, THETA_WORLD and FWHM_WORLD from a WCS.

    Pure: a new table is returned.  Positions go through the full WCS of ``header``
    (1-based X_IMAGE/Y_IMAGE, ``all_pix2world``); sizes and angles through its local
    Jacobian at each source (tangent-plane degrees, world x towards the East as
    SExtractor's world axis 1).  Without a usable celestial WCS the world columns are
    NaN (written as -999).

    Parameters
    ----------
    table : astropy.table.Table
        A catalogue with X_IMAGE, Y_IMAGE (and A_IMAGE, B_IMAGE, THETA_IMAGE, FWHM_IMAGE
        when present).
    header : astropy.io.fits.Header or mapping
        The array's header.

    Returns
    -------
    astropy.table.Table
    """
    out = table.copy(copy_data=False)
    n = len(out)
    x = np.asarray(out["X_IMAGE"], float)
    y = np.asarray(out["Y_IMAGE"], float)
    nan = np.full(n, np.nan)
    ra, dec, jac = nan, nan, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(fits.Header(header) if not isinstance(header, fits.Header) else header)
            if wcs.has_celestial and n:
                h = 0.5
                pts = np.concatenate([np.column_stack([x, y]), np.column_stack([x + h, y]),
                                      np.column_stack([x - h, y]), np.column_stack([x, y + h]),
                                      np.column_stack([x, y - h])])
                # the full WCS (distortion included) when it is the celestial one
                cel = wcs if wcs.naxis == 2 and wcs.wcs.lng == 0 else wcs.celestial
                world = cel.all_pix2world(pts, 1)
                ra, dec = world[:n, 0], world[:n, 1]
                cosd = np.cos(np.radians(dec))

                def tangent(k: int) -> np.ndarray:  # (east, north) degrees from the centre
                    w = world[k * n:(k + 1) * n]
                    dra = (w[:, 0] - ra + 180.0) % 360.0 - 180.0
                    return np.column_stack([dra * cosd, w[:, 1] - dec])

                jac = np.stack([(tangent(1) - tangent(2)) / (2 * h),
                                (tangent(3) - tangent(4)) / (2 * h)], axis=-1)  # n x 2 x 2
    except Exception:  # noqa: BLE001 - a header without a usable WCS: world columns unknown
        ra, dec, jac = nan, nan, None
    values = {"X_WORLD": ra, "Y_WORLD": dec}
    if jac is not None:
        scale = np.sqrt(np.abs(np.linalg.det(jac)))
        theta = np.radians(np.asarray(out["THETA_IMAGE"], float)) if "THETA_IMAGE" in \
            out.colnames else np.zeros(n)
        major = np.einsum("nij,nj->ni", jac, np.column_stack([np.cos(theta), np.sin(theta)]))
        minor = np.einsum("nij,nj->ni", jac, np.column_stack([-np.sin(theta), np.cos(theta)]))
        a = np.asarray(out["A_IMAGE"], float) if "A_IMAGE" in out.colnames else nan
        b = np.asarray(out["B_IMAGE"], float) if "B_IMAGE" in out.colnames else nan
        fwhm = np.asarray(out["FWHM_IMAGE"], float) if "FWHM_IMAGE" in out.colnames else nan
        angle = np.degrees(np.arctan2(major[:, 1], major[:, 0]))
        values.update(A_WORLD=a * np.hypot(*major.T), B_WORLD=b * np.hypot(*minor.T),
                      THETA_WORLD=(angle + 90.0) % 180.0 - 90.0, FWHM_WORLD=fwhm * scale)
    else:
        values.update(A_WORLD=nan, B_WORLD=nan, THETA_WORLD=nan, FWHM_WORLD=nan)
    for name, value in values.items():
        out[name] = np.asarray(value, float)
    return out


def objcat_table(table: Table, header: Any) -> Table:
    """The OBJCAT as written: every column of :data:`OBJCAT_COLUMNS`, in order, typed.

    The world columns come from ``header``'s WCS (:func:`with_world_columns`); DRAGONS'
    own columns are filled as ``add_objcat`` fills them (REF_* undefined until
    determineAstrometricSolution matches a reference catalogue), with PROFILE_FWHM the
    half-maximum FWHM (FWHM_IMAGE: the same circularised count of pixels above half the
    peak that DRAGONS' ``_profile_sources`` makes) and PROFILE_EE50 the diameter holding
    half the flux (twice FLUX_RADIUS).  Columns not measured are -999; NaN becomes -999.

    Parameters
    ----------
    table : astropy.table.Table
        A detectSources catalogue (:data:`DETECT_COLUMNS`, or any subset with X_IMAGE and
        Y_IMAGE).
    header : astropy.io.fits.Header or mapping
        The array's header (WCS; BUNIT for the flux unit).

    Returns
    -------
    astropy.table.Table
        Units in each column's ``unit`` (TUNIT when written).
    """
    full = with_world_columns(table, header)
    n = len(full)
    extra = {}
    if "FWHM_IMAGE" in full.colnames:
        extra["PROFILE_FWHM"] = np.asarray(full["FWHM_IMAGE"], float)
    if "FLUX_RADIUS" in full.colnames:
        extra["PROFILE_EE50"] = 2.0 * np.asarray(full["FLUX_RADIUS"], float)
    out = Table()
    for name, dtype, unit in OBJCAT_COLUMNS:
        if name in full.colnames:
            values = np.asarray(full[name])
        elif name in extra:
            values = extra[name]
        elif name == "NUMBER":
            values = np.arange(1, n + 1)
        else:
            values = np.full(n, UNDEFINED)
        if np.dtype(dtype).kind == "f":
            values = np.where(np.isfinite(values.astype(float)), values, UNDEFINED)
        out[name] = np.asarray(values).astype(dtype)
        if unit is not None:
            out[name].unit = "count" if unit == "flux" else unit
    return out


def objcat_hdu(table: Table, header: Any, extver: int) -> fits.BinTableHDU:
    """The OBJCAT BinTable of one array (EXTNAME OBJCAT, EXTVER ``extver``).

    TUNITn are the strings of :data:`OBJCAT_COLUMNS` as SExtractor writes them
    ("pixel", "pixel**2", "deg", "mag", "count" for fluxes in the image's units, the
    TUNIT comment naming the array's BUNIT).
    """
    cat = objcat_table(table, header)
    cols = [fits.Column(name=name, format=_tform(cat[name].dtype),
                        unit=_unit_text(name, header), array=np.asarray(cat[name]))
            for name in cat.colnames]
    hdu = fits.BinTableHDU.from_columns(cols, name="OBJCAT")
    for i, name in enumerate(cat.colnames, start=1):
        if _UNITS[name] == "flux":
            hdu.header.comments[f"TUNIT{i}"] = f"{_data_unit(header)} (BUNIT of the SCI)"
    hdu.header["EXTVER"] = extver
    return hdu


def _tform(dtype: np.dtype) -> str:
    return {"i2": "I", "i4": "J", "i8": "K", "f4": "E", "f8": "D"}[np.dtype(dtype).str[1:]]


_UNITS = {n: u for n, _, u in OBJCAT_COLUMNS}


def _unit_text(name: str, header: Any) -> str | None:
    return "count" if _UNITS[name] == "flux" else _UNITS[name]


def read_objcat(table: Table, *, path: Any, extver: int) -> Table:
    """The catalogue of an OBJCAT found in a file, in gsaoi_watch's (DRAGONS') columns.

    Accepts the OBJCAT gsaoi_watch writes, DRAGONS' (SExtractor's columns, whatever their
    types, with -999 placeholders) and older gsaoi_watch products (lowercase ``x``, ``y``,
    ``flux``...).  Column names are matched without regard to case.  The columns of
    :data:`MEASURED_COLUMNS` are always present in the result, as float64, with -999 and
    non-finite values as NaN; the other columns are kept as found.

    Parameters
    ----------
    table : astropy.table.Table
        The table as read (``Table(hdu.data)``).
    path : str or os.PathLike
        The file, for the error message.
    extver : int
        The OBJCAT's EXTVER, for the error message.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    CatalogError
        One line naming the file, the OBJCAT and the problem: no X_IMAGE/Y_IMAGE or no
        FLUX_AUTO column, or a measured column that is not numeric.
    """
    where = f"OBJCAT {extver}"
    upper = {str(name).strip().upper() for name in table.colnames}
    names: dict[str, str] = {}
    for name in table.colnames:
        key = str(name).strip()
        canon = key.upper()
        if key in _LEGACY and _LEGACY[key] not in upper:  # an older gsaoi_watch product
            canon = _LEGACY[key]
        names.setdefault(canon, name)
    if "X_IMAGE" not in names or "Y_IMAGE" not in names:
        raise CatalogError(path, f"{where} has no X_IMAGE/Y_IMAGE columns")
    if "FLUX_AUTO" not in names:
        raise CatalogError(path, f"{where} has no FLUX_AUTO column")
    out = Table()
    n = len(table)
    for canon, name in names.items():
        col = table[name]
        if canon in MEASURED_COLUMNS:
            values = np.asarray(col)
            if values.dtype.kind not in "iuf" or values.ndim != 1:
                raise CatalogError(path, f"{where}: {canon} is not a numeric column")
            values = values.astype(float)
            values[~np.isfinite(values) | (values == UNDEFINED)] = np.nan
            out[canon] = values
        else:
            out[canon] = col
    for canon in MEASURED_COLUMNS:
        if canon not in out.colnames:
            out[canon] = np.full(n, np.nan)
    return out

