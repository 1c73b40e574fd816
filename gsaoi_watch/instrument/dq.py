"""DRAGONS' data-quality bits (the one home of DQ values in gsaoi_watch)."""

from __future__ import annotations

__all__ = ['DQ', 'FAIL_BITS']

#: DRAGONS data-quality bits (geminidr/gemini/lookups/DQ_definitions.py).
DQ = {
    "good": 0,
    "bad_pixel": 1,
    "non_linear": 2,
    "saturated": 4,
    "cosmic_ray": 8,
    "no_data": 16,
    "overlap": 32,
    "unilluminated": 64,
}


#: DQ bits that exclude a pixel from a stack (bad_pixel | saturated | cosmic_ray | no_data).
FAIL_BITS = DQ["bad_pixel"] | DQ["saturated"] | DQ["cosmic_ray"] | DQ["no_data"]

