"""Frame arrival: what the arrival gate released becomes a ledger row and a sequence member.

A rejected file becomes a quarantined row (one warning line).  A processed product dropped
among the raw frames (a stack, a flat, a ``_skyCorrected`` frame: PROCESSED or PREPARED) is
recorded as ignored, never reduced (its data label may be its raw frame's, so this comes
first).  A raw frame is checked against the ledger (same checksum: nothing to do; same data
label under another name: a duplicate, quarantined), then recorded: a static BPM is
registered as a calibration, kinds that are not reduced are recorded as ignored, and
anything else joins the sequence its headers name (created OPEN if new); a frame lacking
what its reduction needs (EXPTIME, DATE-OBS, filters, a known read mode:
:func:`~gsaoi_watch.reduction.standardize.check_frame`) is quarantined with that reason
instead of failing its sequence's job again and again.
The sequence then gets ``first_frame`` or ``frame`` through the transition table (whose
``add_frame`` records the sequence's new last frame and starts the per-frame steps), and
sequences that a later observation followed close.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.calibration.caldb import calibration_kind
from gsaoi_watch.daemon.events import Event, FrameArrived
from gsaoi_watch.daemon.sequences import State, frame_kind, label, sequence_key
from gsaoi_watch.data.descriptors import FrameInfo, product_status
from gsaoi_watch.logs import log_name
from gsaoi_watch.reduction.standardize import check_frame

if TYPE_CHECKING:
    from gsaoi_watch.daemon.engine import Engine

__all__ = ["REDUCIBLE", "ingest", "ledger_path", "quarantine"]

log = logging.getLogger(__name__)

#: Frame kinds that form sequences and are reduced.
REDUCIBLE = {"flat_on", "flat_off", "flat", "standard", "science"}


def ledger_path(path: str | os.PathLike[str]) -> str:
    r"""The path a file is recorded under: resolved, and storable as UTF-8 text.

    A name that is not valid UTF-8 (its undecodable bytes are surrogates in a Python
    string) has those bytes written as ``\xNN``; any other path is kept as it is.
    """
    resolved = str(Path(path).resolve())
    try:
        resolved.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(resolved).decode("utf-8", "backslashreplace")
    return resolved


def quarantine(engine: Engine, path: str, problem: str) -> None:
    """Record a file the daemon will not use, with the reason (one warning line)."""
    path = ledger_path(path)
    with db.writing():
        db.claim(f"frame:{path}")
        row = db.Frame.get_or_none(db.Frame.path == path)
        if row is None:
            db.Frame.create(path=path, state="quarantined", error=problem)
        else:
            db.Frame.update(state="quarantined", error=problem,
                            updated=engine.now()).where(db.Frame.id == row.id).execute()
    engine.counts["quarantined"] += 1
    log.warning("frame=%s quarantined: %s", log_name(Path(path).name), log_name(problem))


def ingest(engine: Engine, arrived: FrameArrived) -> None:
    """Ledger row, then sequence membership and the sequence's event, for an arrived frame."""
    path = str(Path(arrived.path).resolve())
    info = arrived.info
    name = log_name(Path(path).name)
    digest = db.checksum(path)
    existing = db.Frame.get_or_none(db.Frame.path == path)
    if existing is not None and existing.checksum == digest:
        return
    kind = frame_kind(info)
    if kind == "product":  # a processed file: its data label may be its raw frame's
        _record_frame(engine, path, info, digest, "ignored", None, label=False)
        log.info("frame=%s ignored: processed product (%s), not a raw frame", name,
                 product_status(info.tags))
        return
    label_ = info.data_label()
    if label_:  # one frame per data label, also with other writers on the database
        db.claim(f"label:{label_}")
    twin = db.Frame.get_or_none(db.Frame.data_label == label_) if label_ else None
    if twin is not None and twin.path != path:
        quarantine(engine, path, f"duplicate of {Path(twin.path).name} "
                                 f"(same data label {label_})")
        return
    if kind == "bpm" or calibration_kind(info) == "processed_bpm":
        queries.register_product(path, info, kind="processed_bpm", is_calibration=True)
        log.info("frame=%s registered as static BPM", name)
        _record_frame(engine, path, info, digest, "used", None)
        return
    if kind not in REDUCIBLE:
        _record_frame(engine, path, info, digest, "ignored", None)
        log.info("frame=%s ignored: %s (%s)", name, kind,
                 info.observation_class() or info.observation_type())
        return
    problem = check_frame(info)
    if problem is not None:  # deterministic: no reduction of it could ever succeed
        quarantine(engine, path, f"cannot be reduced: {problem}")
        return
    _join(engine, path, info, digest)


def _join(engine: Engine, path: str, info: FrameInfo, digest: str) -> None:
    """The frame's ledger row names its sequence; then the sequence gets first_frame/frame."""
    key = sequence_key(info)
    now = engine.now()
    with db.writing():
        db.claim(f"sequence:{key.as_text()}")
        seq, created = db.Sequence.get_or_create(key=key.as_text(), defaults=dict(
            kind=key.kind, observation_id=key.observation_id, object=info.object(),
            filter_name=key.filter_name, exposure_time=key.exposure_time,
            read_mode=key.read_mode, roi=key.roi, state=State.OPEN.value, opened=now,
            owner=engine.owner,
            updated=now, last_frame_ut=info.ut_datetime()))
    _record_frame(engine, path, info, digest, "ingested", seq)
    engine.counts["frames"] += 1
    log.info("frame=%s → seq=%s (%d frames)", log_name(Path(path).name), label(seq),
             seq.frames.count())
    if created:
        log.info("seq=%s: new sequence OPEN", label(seq))
    engine.emit(seq.id, Event.FIRST_FRAME if created else Event.FRAME,
                frame=FrameArrived(path, info))
    # one observation at a time: a later frame of another observation closes open ones
    engine.close_superseded()


def _record_frame(engine: Engine, path: str, info: FrameInfo, digest: str, state: str,
                  seq: db.Sequence | None, *, label: bool = True) -> None:
    descriptors = {"object": info.object(), "observation_class": info.observation_class(),
                   "filter_name": info.filter_name(), "exposure_time": info.exposure_time(),
                   "observation_id": info.observation_id()}
    fields = dict(data_label=info.data_label() if label and state != "quarantined" else None,
                  checksum=digest, size=Path(path).stat().st_size,
                  descriptors=json.dumps(descriptors), tags=" ".join(sorted(info.tags)),
                  state=state, error=None, sequence=seq, ut_datetime=info.ut_datetime(),
                  updated=engine.now())
    with db.writing():
        db.claim(f"frame:{path}")
        row = db.Frame.get_or_none(db.Frame.path == path)
        if row is None:
            db.Frame.create(path=path, **fields)
        else:
            db.Frame.update(**fields).where(db.Frame.id == row.id).execute()
