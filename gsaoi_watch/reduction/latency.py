"""TEMPORARY shim (replaced by the real module)."""
from __future__ import annotations
from typing import Any
import numpy as np
from gsaoi_watch.reduction.container import Frame


def latency_mask(frame: Frame, *, non_linear: bool = True) -> Any:
    bits = 6 if non_linear else 4
    return (frame.phu.get("DATE-OBS"), [None if a.dq is None else (a.dq & bits) != 0 for a in frame.arrays])


def add_latency_to_dq(frame: Frame, earlier: Any, *, time: float = 900.0) -> Frame:
    return frame
