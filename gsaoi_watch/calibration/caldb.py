"""Calibrations in the database: what kind a file is, registering it, finding it by name."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import GsaoiWatchError

__all__ = ['add_calibration', 'calibration_kind']

def calibration_kind(info: FrameInfo) -> str | None:
    """'processed_flat' or 'processed_bpm' for a processed calibration, else None."""
    if "BPM" in info.tags:
        return "processed_bpm"
    if "PROCESSED" in info.tags and "FLAT" in info.tags:
        return "processed_flat"
    return None


def add_calibration(path: str | os.PathLike[str]) -> db.Product:
    """Register one processed calibration file; return its Product row.

    Raises
    ------
    GsaoiWatchError
        If the file is not a readable processed GSAOI calibration.
    """
    info = read_frame_info(path)
    kind = calibration_kind(info)
    if kind is None:
        raise GsaoiWatchError(f"{path}: not a processed calibration (tags: "
                              f"{' '.join(sorted(info.tags))}); only processed flats and "
                              "bad-pixel masks are served")
    return queries.register_product(path, info, kind=kind, is_calibration=True)


def calibration_files(paths: Iterable[str | os.PathLike[str]], walk: bool) -> Iterator[Path]:
    """The files ``caldb add`` registers: the files given, ``*.fits`` of directories."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            it = p.rglob("*.fits") if walk else p.glob("*.fits")
            yield from sorted(f for f in it if f.is_file())
        else:
            yield p


def find_calibration(name_or_path: str | os.PathLike[str]) -> db.Product | None:
    """The calibration row named by a path or file name, or None (see find_calibrations)."""
    rows = queries.find_calibrations(name_or_path)
    return rows[0] if rows else None
