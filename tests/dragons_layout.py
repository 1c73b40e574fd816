"""Test helper: rewrite one of gsaoi_watch's reduced frames in DRAGONS' exact file layout.

What DRAGONS (4.x) writes for a ``_skyCorrected`` / ``_sourcesDetected`` GSAOI frame:
a PHU with PROCSOFT/PROCSVER and its time stamps (PREPARE, ..., DETECSRC); per array the
SCI, VAR, DQ and OBJMASK images and the OBJCAT table, EXTVER 1..4, with BUNIT 'electron';
possibly a REFCAT table (EXTNAME REFCAT, no EXTVER).  The OBJCAT has SExtractor's columns
of ``geminidr/gemini/lookups/source_detection/default.param`` in its order and types
(``src/param.h``) and units ("count" for fluxes), then the five columns ``add_objcat``
appends.  DRAGONS is not needed: this builds the layout from one of our products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

#: SExtractor's default.param columns as DRAGONS asks for them: (name, TFORM, TUNIT).
SEXTRACTOR_COLUMNS = (
    ("NUMBER", "J", None), ("X_IMAGE", "E", "pixel"), ("Y_IMAGE", "E", "pixel"),
    ("ERRX2_IMAGE", "D", "pixel**2"), ("ERRY2_IMAGE", "D", "pixel**2"),
    ("ERRXY_IMAGE", "D", "pixel**2"), ("X_WORLD", "D", "deg"), ("Y_WORLD", "D", "deg"),
    ("ERRX2_WORLD", "D", "deg**2"), ("ERRY2_WORLD", "D", "deg**2"),
    ("ERRXY_WORLD", "D", "deg**2"), ("A_IMAGE", "E", "pixel"), ("B_IMAGE", "E", "pixel"),
    ("THETA_IMAGE", "E", "deg"), ("ERRA_IMAGE", "E", "pixel"), ("ERRB_IMAGE", "E", "pixel"),
    ("ERRTHETA_IMAGE", "E", "deg"), ("A_WORLD", "E", "deg"), ("B_WORLD", "E", "deg"),
    ("THETA_WORLD", "E", "deg"), ("ERRA_WORLD", "E", "deg"), ("ERRB_WORLD", "E", "deg"),
    ("ERRTHETA_WORLD", "E", "deg"), ("FWHM_IMAGE", "E", "pixel"), ("FWHM_WORLD", "E", "deg"),
    ("FLUX_RADIUS", "E", "pixel"), ("ELLIPTICITY", "E", None), ("FLUX_AUTO", "E", "count"),
    ("FLUXERR_AUTO", "E", "count"), ("MAG_AUTO", "E", "mag"), ("MAGERR_AUTO", "E", "mag"),
    ("FLUX_MAX", "E", "count"), ("CLASS_STAR", "E", None), ("ISOAREA_IMAGE", "J", "pixel**2"),
    ("FLAGS", "I", None), ("IMAFLAGS_ISO", "J", None), ("NIMAFLAGS_ISO", "J", None),
    ("BACKGROUND", "E", "count"),
    # appended by gempy.gemini.gemini_tools.add_objcat
    ("REF_NUMBER", "J", None), ("REF_MAG", "E", "mag"), ("REF_MAG_ERR", "E", "mag"),
    ("PROFILE_FWHM", "E", "pix"), ("PROFILE_EE50", "E", "pix"),
)

#: The time stamps of DRAGONS' GSAOI reduce recipe up to detectSources.
_STAMPS = ("PREPARE", "ADDDQ", "LINCORR", "ADUTOELE", "ADDVAR", "FLATCORR", "SUBSKY",
           "DETECSRC")


def sextractor_objcat(ours: fits.BinTableHDU, extver: int) -> fits.BinTableHDU:
    """Our OBJCAT as SExtractor (through DRAGONS) writes it: all its columns and types."""
    data = ours.data
    n = len(data)
    cols = []
    for name, form, unit in SEXTRACTOR_COLUMNS:
        if name in data.names:
            values = np.asarray(data[name])
        elif name.startswith("ERR") and name.endswith("_IMAGE"):
            values = np.full(n, 1e-4)  # SExtractor's position errors: small, positive
        elif name.startswith("ERR"):
            values = np.full(n, 1e-12)
        else:
            values = np.full(n, -999)
        cols.append(fits.Column(name=name, format=form, unit=unit, array=values))
    hdu = fits.BinTableHDU.from_columns(cols, name="OBJCAT")
    hdu.header["EXTVER"] = extver
    return hdu


def refcat_hdu(n: int = 5) -> fits.BinTableHDU:
    """A REFCAT as addReferenceCatalog attaches it (2MASS columns; EXTNAME only)."""
    cols = [fits.Column(name="Id", format="J", array=np.arange(1, n + 1)),
            fits.Column(name="Cat_Id", format="32A", array=[f"2MASS {k}" for k in range(n)]),
            fits.Column(name="RAJ2000", format="D", unit="deg", array=np.full(n, 201.365)),
            fits.Column(name="DEJ2000", format="D", unit="deg", array=np.full(n, -43.019)),
            fits.Column(name="Kmag", format="E", unit="mag", array=np.full(n, 14.0)),
            fits.Column(name="Kmag_err", format="E", unit="mag", array=np.full(n, 0.02))]
    return fits.BinTableHDU.from_columns(cols, name="REFCAT")


def to_dragons_layout(src: str | Path, dst: str | Path, *, objcat: str = "sextractor",
                      grouped: bool = False, refcat: bool = True) -> Path:
    """Write our reduced frame ``src`` as DRAGONS would have written it, to ``dst``.

    Parameters
    ----------
    objcat : {'sextractor', 'none', 'broken'}
        OBJCATs as SExtractor writes them; none at all; or as SExtractor writes them but
        the one of array 2 without its X_IMAGE and Y_IMAGE columns.
    grouped : bool
        Extensions grouped by kind (all SCI, all VAR, ...) instead of array by array.
    refcat : bool
        Add a REFCAT table.
    """
    with fits.open(src) as hdul:
        phu = hdul[0].header.copy()
        for key in [k for k, c in zip(phu.keys(), phu.comments) if "gsaoi_watch" in c]:
            phu.remove(key, ignore_missing=True)  # e.g. our GEM-TLM comment and QA cards
        phu["PROCSOFT"] = ("DRAGONS", "Data reduction software used")
        phu["PROCSVER"] = ("4.2.2", "Data reduction software version")
        phu["GEM-TLM"] = ("2026-12-03T09:00:00", "UT Last modification with GEMINI")
        for key in _STAMPS:
            phu[key] = ("2026-12-03T09:00:00", f"UT time stamp for {key}")
        phu["SKYLEVEL"] = (0.0, "Sky level measurement [electron]")  # a card we do not use
        per_array: dict[int, list[fits.hdu.base.ExtensionHDU]] = {}
        for hdu in hdul[1:]:
            ver = int(hdu.header.get("EXTVER", 1))
            name = hdu.name
            if name == "OBJCAT":
                if objcat == "none":
                    continue
                new = sextractor_objcat(hdu, ver)
                if objcat == "broken" and ver == 2:
                    keep = [c for c in new.columns if c.name not in ("X_IMAGE", "Y_IMAGE")]
                    new = fits.BinTableHDU.from_columns(keep, name="OBJCAT")
                    new.header["EXTVER"] = ver
            else:
                header = hdu.header.copy()
                header.remove("SKYLEV", ignore_missing=True)
                if name in ("SCI", "VAR"):
                    header["BUNIT"] = ("electron", "Physical units of the array values")
                header["DATASUM"] = "0"  # cards our writer never uses
                header["WCSAXES"] = 2
                new = fits.ImageHDU(hdu.data, header=header, name=name)
                new.header["EXTVER"] = ver
            per_array.setdefault(ver, []).append(new)
    order = ("SCI", "VAR", "DQ", "OBJMASK", "OBJCAT")
    if grouped:
        exts = [h for kind in order for v in sorted(per_array) for h in per_array[v]
                if h.name == kind]
    else:
        exts = [h for v in sorted(per_array) for h in per_array[v]]
    hdus = [fits.PrimaryHDU(header=phu), *exts]
    if refcat:
        hdus.append(refcat_hdu())
    dst = Path(dst)
    fits.HDUList(hdus).writeto(dst, overwrite=True)
    return dst
