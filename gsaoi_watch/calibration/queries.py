"""Calibration association rules and product registration: named queries on the models."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gsaoi_watch.calibration.db import (
    Product,
    ProductCalibration,
    _now,
    checksum,
    claim,
    writing,
)
from gsaoi_watch.data.descriptors import FrameInfo

__all__ = ['FLAT_WINDOW', 'best_calibration', 'calibration_path', 'find_calibrations',
           'in_calibrations_dir', 'register_product']

log = logging.getLogger(__name__)

#: Calibrations are served within this time of the frame (Gemini calibration manager).
FLAT_WINDOW = dt.timedelta(days=30)


def register_product(path: str | os.PathLike[str], info: FrameInfo | None, *, kind: str,
                     is_calibration: bool, job: Any = None,
                     used: Iterable[tuple[Product, str]] = ()) -> Product:
    """Insert or update the Product row of a file (atomic); return it.

    A product is one row per path.  A calibration is one row per kind and file name, as in
    DRAGONS' calibration manager: registering a calibration whose name is already
    registered (the product ``S20170505S0030_flat.fits`` and its copy under
    ``calibrations/processed_flat/``, or the same file added twice) updates that row.  The
    row keeps the copy under a ``calibrations/`` directory, which is the one served; see
    :func:`calibration_path`.

    Parameters
    ----------
    path : str or os.PathLike
        The product file.
    info : gsaoi_watch.data.descriptors.FrameInfo or None
        Its headers (None where they cannot be read).
    kind : str
        'processed_flat', 'processed_bpm', 'sky_corrected', 'flat_corrected', ...
    is_calibration : bool
        Whether it may be served to other reductions.
    used : iterable of (Product, caltype)
        Calibrations this product was made with.
    """
    path = str(Path(path).resolve())
    fields = dict(filename=os.path.basename(path), kind=kind, job=job,
                  is_calibration=is_calibration, checksum=checksum(path), created=_now())
    if info is not None:  # its descriptors (a GSAOI frame or a stack)
        fields.update(
            data_label=info.data_label(), filter_name=info.filter_name(),
            read_mode=info.read_mode(), observation_class=info.observation_class(),
            ut_datetime=info.ut_datetime(),
            detector_section=json.dumps(info.detector_section(pretty=True)))
    with writing():
        # one row per path, and per kind and name for a calibration: looked up and written
        # under the name's lock, so concurrent writers on one server never both insert
        claim(f"product:{fields['filename']}")
        product = Product.get_or_none(Product.path == path)
        if product is None and is_calibration:
            product = Product.get_or_none((Product.is_calibration == True)  # noqa: E712
                                          & (Product.kind == kind)
                                          & (Product.filename == fields["filename"]))
        if product is None:
            product = Product.create(path=path, **fields)
        else:
            fields.pop("created")
            if is_calibration:
                fields["path"] = calibration_path(product, path, fields["checksum"])
            Product.update(**fields).where(Product.id == product.id).execute()
            product = Product.get_by_id(product.id)
        ProductCalibration.delete().where(ProductCalibration.product == product).execute()
        for cal, caltype in used:
            ProductCalibration.create(product=product, calibration=cal, caltype=caltype)
    return product


def in_calibrations_dir(path: str) -> bool:
    """Whether a file lies under a ``calibrations/`` directory (DRAGONS' served copies)."""
    return "calibrations" in Path(path).parts[:-1]


def calibration_path(row: Product, new_path: str, new_checksum: str) -> str:
    """The path a calibration row keeps when a file of the same name is registered again.

    The new file if it is the copy under ``calibrations/``; else the registered file if it
    still exists with the same content (the same calibration, registered from elsewhere);
    else the new file (another file of that name: it is now the one served).
    """
    if new_path == row.path or in_calibrations_dir(new_path):
        return new_path
    if row.checksum == new_checksum and Path(row.path).is_file():
        return row.path
    return new_path


def find_calibrations(name_or_path: str | os.PathLike[str]) -> list[Product]:
    """The calibration rows a ``caldb remove|bad|good`` argument names.

    By path first (the registered file), else by file name: the name of the product or of
    its copy under ``calibrations/`` finds the one row of that calibration (several rows in
    a database made before one calibration was one row).
    """
    text = str(name_or_path)
    path = str(Path(text).resolve())
    calibrations = Product.select().where(Product.is_calibration == True)  # noqa: E712
    rows = list(calibrations.where(Product.path == path))
    if not rows:
        rows = list(calibrations.where(Product.filename == Path(text).name)
                    .order_by(Product.id))
    return rows


def best_calibration(info: FrameInfo, kind: str = "processed_flat", *,
                     window: dt.timedelta = FLAT_WINDOW) -> Product | None:
    """The calibration to serve a frame, by the GSAOI rules of the Gemini calibration manager.

    processed_flat: identical raw filter name (FILTER1&FILTER2), within ``window`` of the
    frame, not marked bad, file present, nearest in time (ties: the newest made).  A
    full-frame flat serves ROI frames (reductions crop it).  processed_bpm: the latest BPM
    dated on or before the frame.  A frame without a date is served nothing.

    Returns
    -------
    Product or None
    """
    found = info.ut_datetime()
    if found is None:  # a frame without a date is served nothing (no rule can apply)
        return None
    when: dt.datetime = found
    query = Product.select().where((Product.kind == kind) & (Product.is_bad == False))  # noqa: E712
    if kind == "processed_flat":
        query = query.where((Product.filter_name == info.filter_name())
                            & (Product.ut_datetime > when - window)
                            & (Product.ut_datetime < when + window))
        ranked = sorted(query, key=lambda p: (abs(((p.ut_datetime or when) - when).total_seconds()),
                                              -p.created.timestamp()))
    else:
        query = query.where(Product.ut_datetime <= when)
        ranked = sorted(query, key=lambda p: p.ut_datetime or dt.datetime.min, reverse=True)
    for product in ranked:
        if Path(product.path).exists():
            return product
    return None

