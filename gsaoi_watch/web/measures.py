"""A reduced frame's QA record (``product.qa``, JSON) as the live page's IQ, CC and BG objects.

Each object has ``value``, ``error``, ``unit``, ``band``, ``requested``, ``met`` (true,
false or null), ``probability``, ``reason`` (why the value or the verdict is missing),
``limits`` (``{"20": 0.45, ...}``: the band limits drawn on the plot) and ``better``
(``"lower"``: a value meets a band when it is at most the band's limit, as IQ and CC;
``"higher"``: when it is at least the limit, as BG), plus the measurements behind it:
``fwhm``, ``fwhm_zenith``, ``strehl``, ``ellipticity``, ``n_stars`` for IQ, ``extinction``,
``zeropoint`` (mean over arrays) and ``zeropoints`` for CC, ``mag`` and ``rate`` for BG.

The verdicts come from ``qa["requirements"]`` (``{"iq": R, "cc": R, "bg": R}``, written by
the QA step when it knows the observation's requested conditions) when it is there; older
records without it give the value and band from the measurements and null for
``requested`` and ``met``, with the band limits of :mod:`gsaoi_watch.instrument.tables`.
Pure functions of plain data: no database, no files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from gsaoi_watch.instrument.tables import AO_IQ_BANDS, BG_BANDS, CC_BANDS

__all__ = ["MEASURES", "measures", "no_qa"]

#: The three measures, their unit and which way is better.
MEASURES = {"iq": ("arcsec", "lower"), "cc": ("mag", "lower"), "bg": ("mag/arcsec2", "higher")}

_REQUIREMENT_KEYS = ("value", "error", "unit", "band", "requested", "met", "probability",
                     "reason")


def _num(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _limits(table: Mapping[Any, Any] | None) -> dict[str, float]:
    """Band limits with percentile keys as text, finite values only, best band first."""
    out = {}
    for key, value in (table or {}).items():
        number = _num(value)
        if number is not None and str(key).strip():
            out[str(key)] = number
    return dict(sorted(out.items(), key=lambda kv: (not kv[0].isdigit(),
                                                    int(kv[0]) if kv[0].isdigit() else 0)))


@functools.lru_cache(maxsize=64)
def _tables(filter_name: str | None) -> dict[str, dict[str, float]]:
    """The band limits of the tables (BG by filter; Kshort as Ks, Kprime as K); do not edit."""
    name = (filter_name or "").split("_")[0]
    bg = BG_BANDS.get({"Kshort": "Ks", "Kprime": "K"}.get(name, name))
    return {"iq": _limits(AO_IQ_BANDS), "cc": _limits(CC_BANDS), "bg": _limits(bg)}


def _empty(name: str, reason: str | None, limits: dict[str, float]) -> dict[str, Any]:
    unit, better = MEASURES[name]
    return {"value": None, "error": None, "unit": unit, "band": None, "requested": None,
            "met": None, "probability": None, "reason": reason, "limits": dict(limits),
            "better": better}


def _fallback(name: str, qa: Mapping[str, Any], limits: dict[str, float]) -> dict[str, Any]:
    """Value, band and reason from the measurements of a record without requirements."""
    part = qa.get(name)
    out = _empty(name, None, limits)
    if not isinstance(part, Mapping):
        if name == "cc":
            out["reason"] = ("no standard star in this frame" if not qa.get("standard")
                             else f"standard {qa['standard']} not measured")
        else:
            out["reason"] = {"iq": "image quality not measured",
                             "bg": "background not measured"}[name]
        notes = [str(n) for n in qa.get("notes") or []]
        if notes and name != "cc":
            out["reason"] += ": " + "; ".join(notes)
        return out
    key = {"iq": "seeing", "cc": "extinction", "bg": "mag"}[name]
    out["value"] = _num(part.get(key))
    band = _text(part.get("band"))
    out["band"] = None if band is None or band.endswith("Unknown") else band
    if name == "cc":
        out["error"] = _num(part.get("extinction_err"))
    if out["value"] is None:
        out["reason"] = f"no {key} measured"
    return out


def _extras(name: str, qa: Mapping[str, Any]) -> dict[str, Any]:
    found = qa.get(name)
    part: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    if name == "iq":
        n_stars = part.get("n_stars")
        return {"fwhm": _num(part.get("fwhm")), "fwhm_zenith": _num(part.get("fwhm_zenith")),
                "strehl": _num(part.get("strehl")), "ellipticity": _num(part.get("ellipticity")),
                "seeing": _num(part.get("seeing")),
                "n_stars": n_stars if isinstance(n_stars, int) else None}
    if name == "cc":
        zps: list[dict[str, Any]] = []
        for z in qa.get("zeropoints") or []:
            if isinstance(z, Mapping) and _num(z.get("zp")) is not None:
                array = z.get("array")
                zps.append({"array": array + 1 if isinstance(array, int) else None,
                            "zp": _num(z.get("zp")), "zp_err": _num(z.get("zp_err"))})
        mean = sum(z["zp"] for z in zps) / len(zps) if zps else None
        return {"extinction": _num(part.get("extinction")), "zeropoint": mean,
                "zeropoints": zps, "standard": _text(qa.get("standard"))}
    return {"mag": _num(part.get("mag")), "rate": _num(part.get("rate"))}


def _requirement(name: str, given: Mapping[str, Any], limits: dict[str, float]
                 ) -> dict[str, Any]:
    out = _empty(name, None, _limits(given.get("limits")) or limits)
    for key in _REQUIREMENT_KEYS:
        value = given.get(key)
        if key in ("value", "error", "probability"):
            out[key] = _num(value)
        elif key == "met":
            out[key] = value if isinstance(value, bool) else None
        elif value is not None:
            out[key] = str(value)
    return out


def measures(qa: Mapping[str, Any] | None, filter_name: str | None = None
             ) -> dict[str, dict[str, Any]]:
    """The IQ, CC and BG objects of one frame from its QA record.

    Parameters
    ----------
    qa : mapping or None
        ``FrameQA.to_dict()`` as stored in ``product.qa`` (None: no QA recorded).
    filter_name : str, optional
        The frame's filter, for the BG band limits of a record without requirements.

    Returns
    -------
    dict
        ``{"iq": {...}, "cc": {...}, "bg": {...}}`` (see the module docstring).
    """
    if not isinstance(qa, Mapping):
        return no_qa("no QA recorded", filter_name)
    tables = _tables(filter_name)
    requirements = qa.get("requirements")
    if not isinstance(requirements, Mapping):
        requirements = {}
    out = {}
    for name in MEASURES:
        given = requirements.get(name)
        if isinstance(given, Mapping):
            item = _requirement(name, given, tables[name])
        else:
            item = _fallback(name, qa, tables[name])
        out[name] = {**item, **_extras(name, qa)}
    return out


def no_qa(reason: str, filter_name: str | None = None) -> dict[str, dict[str, Any]]:
    """The IQ, CC and BG objects of a frame without a usable QA record (``reason``)."""
    tables = _tables(filter_name)
    return {name: {**_empty(name, reason, tables[name]), **_extras(name, {})}
            for name in MEASURES}
