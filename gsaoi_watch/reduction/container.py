"""The small container that reduction steps take and return: per array sci/var/dq + headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gsaoi_watch.data.headers import Header
from gsaoi_watch.errors import ReductionError

__all__ = ["Array", "Frame"]


@dataclass(frozen=True)
class Array:
    """One GSAOI array (one extension) of a frame.

    The pixel arrays may be read-only (memory maps of a frame store's files, see
    :class:`~gsaoi_watch.reduction.source.FrameStore`): steps read them and make new ones,
    and never write into the arrays they are given.

    Attributes
    ----------
    sci : ndarray of float32
        Pixel values (ADU or electrons, see the header BUNIT).
    var : ndarray of float32 or None
        Variance of ``sci`` (not sigma); None until addVAR.
    dq : ndarray of uint16 or None
        DRAGONS data-quality bits, combined with bitwise OR; None until addDQ.
    header : astropy.io.fits.Header
        The extension header.
    objmask : ndarray of uint8 or None
        Object mask from source detection (1 = object), used by the sky steps.
    """

    sci: np.ndarray
    var: np.ndarray | None
    dq: np.ndarray | None
    header: Header
    objmask: np.ndarray | None = None

    def with_(self, **changes: Any) -> Array:
        """Return a copy with some fields replaced (the arrays themselves are not copied)."""
        return replace(self, **changes)

    def need(self, plane: str) -> np.ndarray:
        """The plane ``plane`` ('var', 'dq' or 'objmask'), which a step requires.

        Raises
        ------
        ReductionError
            If the array has no such plane (addVAR or addDQ not run).
        """
        value = getattr(self, plane)
        if value is None:
            raise ReductionError(f"array {self.header.get('EXTVER', '?')} has no "
                                 f"{plane.upper()} plane")
        return value

    @property
    def shape(self) -> tuple[int, ...]:
        """(ny, nx) of the array."""
        return self.sci.shape


@dataclass(frozen=True)
class Frame:
    """A GSAOI frame being reduced: primary header, four arrays and bookkeeping.

    Steps never modify a Frame; they return a new one (see :meth:`with_`).  ``filename``
    is the current product name (DRAGONS replaces the suffix at every step).
    """

    phu: Header
    arrays: tuple
    filename: str
    orig_filename: str = ""
    meta: dict = field(default_factory=dict)

    def with_(self, **changes: Any) -> Frame:
        """Return a copy with some fields replaced; headers are copied, arrays are not."""
        if "phu" not in changes:
            changes["phu"] = self.phu.copy()
        if "meta" not in changes:
            changes["meta"] = dict(self.meta)
        return replace(self, **changes)

    def map_arrays(self, fn: Callable[[int, Array], Array]) -> Frame:
        """Return a new Frame whose arrays are ``fn(index, array)``."""
        return self.with_(arrays=tuple(fn(i, a) for i, a in enumerate(self.arrays)))

    def __len__(self) -> int:
        return len(self.arrays)
