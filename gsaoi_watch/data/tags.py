"""DRAGONS tag rules for GSAOI, as a pure function of the primary header.

Each rule returns a :class:`TagSet` (tags added, tags blocked, tags that block it) or None,
exactly as the ``@astro_data_tag`` methods of DRAGONS' ``AstroDataGemini`` and
``AstroDataGsaoi`` do; :func:`resolve` then applies DRAGONS' ordering and blocking.
A rule that meets a missing keyword (KeyError) is silently skipped, as in DRAGONS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ALL_TAGS", "TagSet", "compute_tags", "resolve"]


@dataclass(frozen=True)
class TagSet:
    """Tags one rule adds, the tags it blocks, and the tags that block it."""

    add: frozenset = frozenset()
    blocks: frozenset = frozenset()
    blocked_by: frozenset = frozenset()


def _ts(add, blocks=(), blocked_by=()):
    return TagSet(frozenset(add), frozenset(blocks), frozenset(blocked_by))


def _airmass(phu):
    am = phu.get("AIRMASS", -1)
    if isinstance(am, str):
        return None
    return am if am >= 1 else None


# --- Gemini-level rules (gemini_instruments/gemini/adclass.py) -------------------------------
def _type_observatory(phu):
    return _ts(["GEMINI"])


def _type_acquisition(phu):
    if phu["OBSCLASS"] in ("acq", "acqCal"):
        return _ts(["ACQUISITION"])
    return None


def _type_az(phu):
    if phu.get("FRAME") == "AZEL_TOPO":
        if _airmass(phu) == 1.0:
            return _ts(["AZEL_TARGET", "AT_ZENITH"])
        return _ts(["AZEL_TARGET"])
    return None


def _type_fringe(phu):
    if {"GIFRINGE", "PROCFRNG"} & set(phu.keys()):
        return _ts(["FRINGE", "CAL"])
    return None


def _type_gcalflat(phu):
    lamp = phu.get("GCALLAMP")
    if lamp == "IRhigh" or (isinstance(lamp, str) and lamp.startswith("QH")):
        return _ts(["GCALFLAT", "FLAT", "CAL"])
    return None


def _type_site(phu):
    site = str(phu.get("OBSERVAT", "")).upper()
    if site == "GEMINI-NORTH":
        return _ts(["NORTH"])
    if site == "GEMINI-SOUTH":
        return _ts(["SOUTH"])
    return None


def _type_mode(phu):
    mode = str(phu.get("OBSMODE", "")).upper()
    if mode:
        return _ts([mode] if mode == "IMAGE" else [mode, "SPECT"])
    return None


def _type_sidereal(phu):
    frames = {phu.get("TRKFRAME"), phu.get("FRAME")}
    if frames & {"FK5", "APPT"}:
        try:
            if float(phu["DECTRACK"]) == 0 and float(phu["RATRACK"]) == 0:
                return _ts(["SIDEREAL"])
        except (ValueError, TypeError, KeyError):
            pass
        return _ts(["NON_SIDEREAL"])
    return None


def _type_bad_pixel_mask(phu):
    if "BPMASK" in phu or "PROCBPM" in phu:
        return _ts(["BPM", "CAL", "PROCESSED"],
                   blocks=["IMAGE", "SPECT", "NON_SIDEREAL", "AZEL_TARGET", "GCALFLAT",
                           "LAMPON", "GCAL_IR_ON", "GCAL_IR_OFF", "DARK"])
    return None


def _type_mos_mask(phu):
    if str(phu.get("OBSTYPE", "")).upper() == "MASK":
        return _ts(["MASK"], blocks=["IMAGE", "SPECT"])
    return None


def _status_raw(phu):
    return None if "GEM-TLM" in phu else _ts(["RAW"])


def _status_prepared(phu):
    if any("PREPAR" in kw for kw in phu.keys()):
        return _ts(["PREPARED"])
    return _ts(["UNPREPARED"])


_PROCESSED_CAL_KEYWORDS = {"PROCARC", "GBIAS", "PROCBIAS", "PROCDARK", "GIFLAT", "PROCFLAT",
                           "GIFRINGE", "PROCFRNG", "PROCPNHL", "PROCSTND", "PROCILLM"}


def _status_processed_cals(phu):
    if _PROCESSED_CAL_KEYWORDS & set(phu.keys()):
        return _ts(["PROCESSED"])
    return None


def _status_processed_science(phu):
    if phu["OBSTYPE"] == "OBJECT" and {"GMOSAIC", "PROCSCI"} & set(phu.keys()):
        return _ts(["PROCESSED_SCIENCE", "PROCESSED"], blocks=["RAW"])
    return None


# --- GSAOI rules (gemini_instruments/gsaoi/adclass.py) ---------------------------------------
# GSAOI's _type_gcal_lamp overrides the Gemini GCALLAMP/GCALSHUT rule of the same name.
def _tag_instrument(phu):
    return _ts(["GSAOI"])


def _tag_dark(phu):
    if phu.get("OBSTYPE") == "DARK":
        return _ts(["DARK", "CAL"], blocks=["IMAGE"])
    return None


def _tag_image(phu):
    tags = ["IMAGE"]
    if phu.get("OBSTYPE") == "FLAT":
        tags += ["FLAT", "CAL"]
    obj = str(phu.get("OBJECT", "")).upper()
    if "DOMEFLAT" in obj:
        tags += ["DOMEFLAT", "FLAT", "CAL"]
    elif "TWILIGHT" in obj:
        tags += ["TWILIGHT", "FLAT", "CAL"]
    return _ts(tags)


def _type_gcal_lamp(phu):
    obj = str(phu.get("OBJECT", "")).upper()
    if obj == "DOMEFLAT":
        return _ts(["LAMPON"])
    if obj == "DOMEFLAT OFF":
        return _ts(["LAMPOFF"])
    return None


# Sorted by method name, as DRAGONS collects them (inspect.getmembers order).
_RULES: tuple[tuple[str, Callable], ...] = tuple(sorted({
    "_status_prepared": _status_prepared,
    "_status_processed_cals": _status_processed_cals,
    "_status_processed_science": _status_processed_science,
    "_status_raw": _status_raw,
    "_tag_dark": _tag_dark,
    "_tag_image": _tag_image,
    "_tag_instrument": _tag_instrument,
    "_type_acquisition": _type_acquisition,
    "_type_az": _type_az,
    "_type_bad_pixel_mask": _type_bad_pixel_mask,
    "_type_fringe": _type_fringe,
    "_type_gcal_lamp": _type_gcal_lamp,
    "_type_gcalflat": _type_gcalflat,
    "_type_mode": _type_mode,
    "_type_mos_mask": _type_mos_mask,
    "_type_observatory": _type_observatory,
    "_type_sidereal": _type_sidereal,
    "_type_site": _type_site,
}.items()))

#: Every tag these rules can produce.
ALL_TAGS = frozenset({
    "GEMINI", "GSAOI", "SOUTH", "NORTH", "IMAGE", "SPECT", "FLAT", "DOMEFLAT", "TWILIGHT",
    "GCALFLAT", "LAMPON", "LAMPOFF", "DARK", "CAL", "AZEL_TARGET", "AT_ZENITH", "SIDEREAL",
    "NON_SIDEREAL", "RAW", "UNPREPARED", "PREPARED", "PROCESSED", "PROCESSED_SCIENCE",
    "ACQUISITION", "BPM", "FRINGE", "MASK",
})


def resolve(tagsets: Iterable[Any]) -> frozenset:
    """Combine tag sets with DRAGONS' precedence and blocking rules.

    Sets that block others are applied first, sets that can be blocked last; a set any of
    whose tags is already blocked, or whose ``blocked_by`` tags are present, is dropped whole.
    """
    ordered = sorted(tagsets, key=lambda t: len(t.blocks), reverse=True)
    ordered = sorted(ordered, key=lambda t: len(t.blocked_by))
    tags: set = set()
    blocked: set = set()
    for ts in ordered:
        if ts.blocked_by & tags or ts.add & blocked:
            continue
        tags |= ts.add
        blocked |= ts.blocks
    return frozenset(tags)


def compute_tags(phu: Mapping) -> frozenset:
    """Return the DRAGONS tags of a GSAOI frame from its primary header.

    Parameters
    ----------
    phu : Mapping
        The primary header (an `astropy.io.fits.Header` or any mapping of keyword to value).

    Returns
    -------
    frozenset of str
        The tags, e.g. ``{'GEMINI', 'GSAOI', 'IMAGE', 'RAW', 'SIDEREAL', 'SOUTH', 'UNPREPARED'}``.
    """
    results = []
    for _name, rule in _RULES:
        try:
            ts = rule(phu)
        except KeyError:
            ts = None
        if ts is not None and (ts.add or ts.blocks):
            results.append(ts)
    return resolve(results)
