"""Calibration association rules and product registration: named queries on the models."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from gsaoi_watch.calibration.db import Product, ProductCalibration, _now, checksum, writing

__all__ = ['FLAT_WINDOW', 'best_calibration', 'register_product']

log = logging.getLogger(__name__)

#: Calibrations are served within this time of the frame (Gemini calibration manager).
FLAT_WINDOW = dt.timedelta(days=30)


def register_product(path, info, *, kind, is_calibration, job=None, used=()):
    """Insert or update the Product row of a file (atomic); return it.

    Parameters
    ----------
    path : str or os.PathLike
        The product file.
    info : gsaoi_watch.data.descriptors.FrameInfo or None
        Its headers (None for a product that is not a GSAOI frame, such as a stack).
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
    if info is not None:  # a GSAOI frame (a stack is one resampled image: no descriptors)
        fields.update(
            data_label=info.data_label(), filter_name=info.filter_name(),
            read_mode=info.read_mode(), observation_class=info.observation_class(),
            ut_datetime=info.ut_datetime(),
            detector_section=json.dumps(info.detector_section(pretty=True)))
    with writing():
        product = Product.get_or_none(Product.path == path)
        if product is None:
            product = Product.create(path=path, **fields)
        else:
            fields.pop("created")
            Product.update(**fields).where(Product.id == product.id).execute()
            product = Product.get_by_id(product.id)
        ProductCalibration.delete().where(ProductCalibration.product == product).execute()
        for cal, caltype in used:
            ProductCalibration.create(product=product, calibration=cal, caltype=caltype)
    return product


def best_calibration(info, kind="processed_flat", *, window=FLAT_WINDOW):
    """The calibration to serve a frame, by the GSAOI rules of the Gemini calibration manager.

    processed_flat: identical raw filter name (FILTER1&FILTER2), within ``window`` of the
    frame, not marked bad, file present, nearest in time (ties: the newest made).  A
    full-frame flat serves ROI frames (reductions crop it).  processed_bpm: the latest BPM
    dated on or before the frame.

    Returns
    -------
    Product or None
    """
    when = info.ut_datetime()
    query = Product.select().where((Product.kind == kind) & (Product.is_bad == False))  # noqa: E712
    if kind == "processed_flat":
        query = query.where((Product.filter_name == info.filter_name())
                            & (Product.ut_datetime > when - window)
                            & (Product.ut_datetime < when + window))
        ranked = sorted(query, key=lambda p: (abs((p.ut_datetime - when).total_seconds()),
                                              -p.created.timestamp()))
    else:
        query = query.where(Product.ut_datetime <= when)
        ranked = sorted(query, key=lambda p: p.ut_datetime, reverse=True)
    for product in ranked:
        if Path(product.path).exists():
            return product
    return None

