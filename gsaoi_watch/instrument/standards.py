"""Photometric standard stars: catalogue magnitudes keyed by name and position."""

from __future__ import annotations

import math
from dataclasses import dataclass

from astropy.coordinates import angular_separation

__all__ = ["STANDARDS", "Standard", "find_standard"]


@dataclass(frozen=True)
class Standard:
    """One photometric standard star.

    Parameters
    ----------
    name : str
        The name as observers write it in the OBJECT keyword.
    ra, dec : float
        J2000 position in degrees.
    mags : dict
        Pretty filter name -> magnitude.
    source : str
        Where the magnitudes come from.
    """

    name: str
    ra: float
    dec: float
    mags: dict
    source: str = ""

    def magnitude(self, filter_name: str | None) -> float | None:
        """Return the magnitude in ``filter_name`` (K-band aliases tried), or None."""
        if not filter_name:
            return None
        for key in (filter_name, *_ALIASES.get(filter_name, ())):
            if key in self.mags:
                return float(self.mags[key])
        return None


# Kshort, K and Kprime magnitudes of a star differ by a few hundredths at most; a table
# entry for one is used for the others only when the exact filter is missing.
_ALIASES = {"Kshort": ("K", "Kprime"), "K": ("Kshort", "Kprime"), "Kprime": ("K", "Kshort")}

#: Known standards.  9132 is the standard of the DRAGONS GSAOI tutorial (a UKIRT/IRTF faint
#: near-IR standard field); its position and Kshort = 14.3 are the values the night simulator
#: plants (gsaoi_watch/sim/plan.py), not a published catalogue value.
STANDARDS = {
    "9132": Standard("9132", 209.43292, -34.01536, {"Kshort": 14.3},
                     source="gsaoi_watch simulator (tutorial standard 9132)"),
}


def _normalise(name) -> str:
    return "".join(str(name or "").split()).upper().removeprefix("FS")


def find_standard(object_name=None, ra=None, dec=None, *, radius_arcsec=60.0):
    """Find a standard by OBJECT name, else by position.

    Parameters
    ----------
    object_name : str, optional
        OBJECT keyword value; compared without spaces and case.
    ra, dec : float, optional
        Target position in degrees (used when the name is unknown).
    radius_arcsec : float
        Largest separation for a positional match.

    Returns
    -------
    Standard or None
    """
    key = _normalise(object_name)
    for std in STANDARDS.values():
        if key and _normalise(std.name) == key:
            return std
    if ra is None or dec is None:
        return None
    best, best_sep = None, radius_arcsec
    for std in STANDARDS.values():
        sep = 3600.0 * math.degrees(angular_separation(
            math.radians(float(ra)), math.radians(float(dec)), math.radians(std.ra),
            math.radians(std.dec)))
        if sep <= best_sep:
            best, best_sep = std, sep
    return best
