"""IRAF-style image sections ``[x1:x2,y1:y2]``: the one parser."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ['Section', 'parse_section']

@dataclass(frozen=True)
class Section:
    """A 0-based, end-exclusive rectangle (x1, x2, y1, y2), as DRAGONS' Section."""

    x1: int
    x2: int
    y1: int
    y2: int

    def as_iraf(self) -> str:
        """Return the 1-based inclusive IRAF form, e.g. '[1:2048,1:2048]'."""
        return f"[{self.x1 + 1}:{self.x2},{self.y1 + 1}:{self.y2}]"

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the rectangle."""
        return self.y2 - self.y1, self.x2 - self.x1

    def contains(self, other: Section) -> bool:
        """True if ``other`` lies entirely inside this section."""
        return (self.x1 <= other.x1 and other.x2 <= self.x2
                and self.y1 <= other.y1 and other.y2 <= self.y2)


_SECTION_RE = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


def parse_section(text: Any) -> Section | None:
    """Parse an IRAF section string '[x1:x2,y1:y2]' (1-based, inclusive) into a Section."""
    if not isinstance(text, str):
        return None
    m = _SECTION_RE.match(text)
    if not m:
        return None
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    return Section(min(x1, x2) - 1, max(x1, x2), min(y1, y2) - 1, max(y1, y2))

