"""One executor per action of the transition table.

:data:`EXECUTORS` maps every :class:`~gsaoi_watch.daemon.sequences.Action` to the function
that performs it: ``executor(engine, sequence, event)``, called by the engine after the
sequence's state was updated, with the :class:`~gsaoi_watch.daemon.events.SequenceEvent`
that caused the transition (the frame that arrived, the job that finished and its result).
An executor that changes another sequence (the partner flat taken along, dependents
released, users of a retired calibration re-reduced) does so by raising that sequence's
event through :meth:`~gsaoi_watch.daemon.engine.Engine.emit`, never by writing its state.
Job rows are created here, in the same transaction as the state change that asks for them;
what cannot be rolled back (a job or the per-frame steps submitted, a retired file deleted)
runs once that transaction has committed (:meth:`~gsaoi_watch.daemon.engine.Engine.
after_commit`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.daemon.events import Event, PreparedFinished, SequenceEvent
from gsaoi_watch.daemon.prepared import prepare_ahead
from gsaoi_watch.daemon.sequences import Action, State, label
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.logs import log_name

if TYPE_CHECKING:
    from gsaoi_watch.daemon.engine import Engine

__all__ = ["EXECUTORS", "LIVE_JOB_STATES", "Executor", "calibration_ready", "live_job",
           "member_paths", "partner"]

log = logging.getLogger(__name__)

#: Frame states of the members a reduction takes.
MEMBER_STATES = ("ingested", "used", "unusable")
FLAT_KINDS = ("flat_on", "flat_off", "flat")
#: Job states of a job that is still going to end (and give its sequences their event).
LIVE_JOB_STATES = ("SUBMITTED", "RUNNING", "RETRY")
#: States of a lamp flat's partner whose frames a flat job takes along: complete, waiting,
#: or already reduced (a late frame of either lamp re-makes the flat from all frames).
PARTNER_STATES = (State.COMPLETE, State.WAITING, State.REDUCING, State.DONE)

Executor = Callable[["Engine", db.Sequence, SequenceEvent], None]

#: action -> executor; every action of the table has one.
EXECUTORS: dict[Action, Executor] = {}


def _executes(action: Action) -> Callable[[Executor], Executor]:
    def register(fn: Executor) -> Executor:
        EXECUTORS[action] = fn
        return fn
    return register


# --- what a sequence needs ------------------------------------------------------------------
def partner(seq: db.Sequence) -> db.Sequence | None:
    """The lamp-off sequence of a lamp-on one (and the reverse): same filter and read mode.

    The nearest in time (last frames), ties to the latest opened: with several nights'
    flats in the database (an archive), each night's lamps pair with each other.  Only
    the same engine's (owner's): another raw directory's lamps are not this one's partner.
    """
    want = {"flat_on": "flat_off", "flat_off": "flat_on"}.get(seq.kind)
    if want is None:
        return None
    candidates = list(db.Sequence.select().where(
        (db.Sequence.kind == want) & (db.Sequence.filter_name == seq.filter_name)
        & (db.Sequence.read_mode == seq.read_mode) & (db.Sequence.roi == seq.roi)
        & (db.Sequence.owner == seq.owner))
        .order_by(db.Sequence.opened.desc()))
    when = seq.last_frame_ut

    def distance(other: db.Sequence) -> float:
        if when is None or other.last_frame_ut is None:
            return 0.0
        return abs((other.last_frame_ut - when).total_seconds())

    return min(candidates, key=distance) if candidates else None


def live_job(seq: db.Sequence) -> db.Job | None:
    """A job that will still end for ``seq``: its own, or a flat job that took it along."""
    for job in db.Job.select().where(db.Job.state.in_(LIVE_JOB_STATES)):
        if job.sequence_id == seq.id or seq.id in json.loads(job.parameters).get(
                "sequences", []):
            return job
    return None


def _first_info(seq: db.Sequence) -> FrameInfo:
    frame = seq.frames.order_by(db.Frame.ut_datetime).first()
    return read_frame_info(frame.path)


def calibration_ready(seq: db.Sequence) -> bool:
    """Whether what the reduction of ``seq`` needs exists.

    A lamp-on or lamp-off flat below 1.4 um needs nothing; above, its partner must be
    complete, waiting or already reduced (a late frame re-makes the on - off flat from the
    frames of both).  Standards and science need a processed flat.
    """
    if seq.kind in ("flat_on", "flat_off"):
        wave = _first_info(seq).effective_wavelength()
        if wave is not None and wave < 1.4:
            return True
        other = partner(seq)
        return other is not None and other.state in (State.COMPLETE, State.WAITING,
                                                     State.DONE)
    if seq.kind == "flat":
        return True
    return queries.best_calibration(_first_info(seq)) is not None


def member_paths(seq: db.Sequence) -> list[str]:
    """Every member frame, in time order: a sequence is always reduced whole.

    Also those a previous reduction used or could not use (re-opened, re-calibrated, or
    after quick-look).
    """
    return [f.path for f in seq.frames.where(db.Frame.state.in_(MEMBER_STATES))
            .order_by(db.Frame.ut_datetime)]


def _submit(engine: Engine, seq: db.Sequence, *, quicklook: bool = False) -> None:
    """Create the reduction job of ``seq`` and start it; a flat takes its partner along."""
    info = _first_info(seq)
    taken = False
    bpm = queries.best_calibration(info, "processed_bpm")
    spec: dict[str, Any] = {"output_dir": str(engine.output_dir),
                            "bpm": bpm.path if bpm else None, "params": {},
                            "sequences": [seq.id]}
    pictures = engine.config.quicklook.pictures
    if seq.kind.startswith("flat"):
        paths = member_paths(seq)
        other = partner(seq)
        if other is not None and other.state in PARTNER_STATES:
            paths += member_paths(other)
            spec["sequences"].append(other.id)
            taken = other.state != State.REDUCING  # else it rides on this job already
        spec.update(recipe="flat", paths=paths, flat=None, pictures=pictures)
    else:
        flat = None if quicklook else queries.best_calibration(info)
        spec.update(recipe="images", paths=member_paths(seq),
                    flat=flat.path if flat else None, cache_dir=str(engine.cache_dir),
                    qa=engine.config.quicklook.qa, pictures=pictures)
    with db.writing():
        job = db.Job.create(sequence=seq, recipe=spec["recipe"], owner=engine.owner,
                            parameters=json.dumps(spec), state="SUBMITTED")
        db.Sequence.update(quicklook=quicklook).where(db.Sequence.id == seq.id).execute()
    engine.start_job(job)
    for other_id in spec["sequences"][1:]:  # the partner flat rides on this job
        if taken:
            engine.emit(other_id, Event.PARTNER_SUBMITTED)


def _set(seq: db.Sequence, **fields: Any) -> None:
    with db.writing():
        db.Sequence.update(**fields).where(db.Sequence.id == seq.id).execute()


# --- the executors --------------------------------------------------------------------------
@_executes(Action.ADD_FRAME)
def add_frame(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """A new member: the sequence's last frame and activity; the per-frame steps start.

    The frame's ledger row already names its sequence (ingest writes it, whatever the
    state).  Here the sequence records the new member: its idle clock restarts and its last
    frame time (what tells that a later observation followed it) moves on.  A standard or
    science frame then goes through the per-frame steps now, while the sequence is observed.
    """
    frame = event.frame
    if frame is None:
        return
    last = max(filter(None, [seq.last_frame_ut, frame.info.ut_datetime()]), default=None)
    _set(seq, updated=engine.now(), last_frame_ut=last)
    if engine.stopping or seq.kind not in ("standard", "science") \
            or not engine.config.jobs.prepare_ahead:
        return
    flat = queries.best_calibration(frame.info)
    bpm = queries.best_calibration(frame.info, "processed_bpm")
    spec = {"path": frame.path, "cache_dir": str(engine.cache_dir),
            "flat": flat.path if flat else None, "bpm": bpm.path if bpm else None}
    engine.after_commit(lambda: _prepare(engine, spec))


def _prepare(engine: Engine, spec: dict[str, Any]) -> None:
    """Submit the per-frame steps of one frame (after the commit of its arrival)."""
    if engine.stopping:
        return
    future = engine.executor.submit(prepare_ahead, spec)
    path = spec["path"]
    engine.preparing[path] = future

    def finished(f: Future[Any]) -> None:  # in the worker pool's thread: only enqueue
        engine.events.put(PreparedFinished(path, f))

    future.add_done_callback(finished)


@_executes(Action.CHECK_CALIBRATION)
def check_calibration(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Raise calibration_ready or calibration_missing for the sequence itself."""
    engine.emit(seq.id, Event.CALIBRATION_READY if calibration_ready(seq)
                else Event.CALIBRATION_MISSING)


@_executes(Action.START_WAIT)
def start_wait(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Start the flat_wait clock (the tick raises wait_expired)."""
    _set(seq, wait_started=engine.now())


@_executes(Action.CANCEL_WAIT)
def cancel_wait(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Stop the flat_wait clock."""
    _set(seq, wait_started=None)


@_executes(Action.SUBMIT)
def submit(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Submit the reduction with the best calibration."""
    _submit(engine, seq)


@_executes(Action.SUBMIT_QUICKLOOK)
def submit_quicklook(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Submit the reduction without a flat, flagged quick-look."""
    _submit(engine, seq, quicklook=True)


@_executes(Action.RESUBMIT)
def resubmit(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Run the failed job (else the sequence's latest) again; the tries are bounded."""
    job = db.Job.get_or_none(db.Job.id == event.job_id) if event.job_id is not None else None
    if job is None:
        job = db.Job.select().where(db.Job.sequence == seq).order_by(db.Job.id.desc()).first()
    if job is not None:
        engine.start_job(job)


@_executes(Action.MARK_STALE)
def mark_stale(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """A frame arrived while the job ran: the job's end re-opens the sequence."""
    _set(seq, stale=True)


@_executes(Action.REOPEN)
def reopen(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Clear the stale mark and re-open the sequence for its late frames."""
    _set(seq, stale=False)
    engine.emit(seq.id, Event.REOPEN)


@_executes(Action.RECORD_FAILURE)
def record_failure(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """The error line of a sequence whose job gave up (the job row has the error)."""
    job = db.Job.get_or_none(db.Job.id == event.job_id) if event.job_id else None
    if job is None:
        log.error("seq=%s: reduction FAILED", label(seq))
        return
    log.error("seq=%s: reduction FAILED (job=%d, after %d run(s); its error above)",
              label(seq), job.id, job.tries)


@_executes(Action.RELEASE_DEPENDENTS)
def release_dependents(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """A flat was made: standards and science waiting (or quick-looked) get calibration_ready."""
    if seq.kind not in FLAT_KINDS:
        return
    for other in list(db.Sequence.select().where(
            db.Sequence.state.in_((State.WAITING, State.QUICKLOOK))
            & db.Sequence.kind.in_(("standard", "science")) & engine.mine(db.Sequence))):
        if queries.best_calibration(_first_info(other)) is not None:
            engine.emit(other.id, Event.CALIBRATION_READY)


@_executes(Action.RETIRE_SUPERSEDED)
def retire_superseded(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Retire products of earlier jobs of the job's sequences that the job did not remake.

    A sequence re-reduced with more frames can give products other names (a flat is named
    after its first lamp-on frame): the old files and rows go, and sequences reduced with
    a retired calibration get recalibrate.  A calibration re-made under the same name (a
    late flat frame) has the same row: what was reduced with its old content gets
    recalibrate too.  Run for each sequence of a job (a flat's two); the job's own sequence
    does it, the others find nothing left.  Files are deleted once the change is committed.
    """
    if event.job_id is None or event.result is None:
        return
    job = db.Job.get_by_id(event.job_id)
    if job.sequence_id is not None and seq.id != job.sequence_id:
        return
    ids = set(json.loads(job.parameters).get("sequences", []))
    fresh = {str(Path(p).resolve()) for p, _ in event.result["products"]}
    redo: set[int] = set()
    for old in list(db.Job.select().where((db.Job.id != job.id) & (db.Job.state == "DONE"))):
        if not ids & set(json.loads(old.parameters).get("sequences", [])):
            continue
        for product in list(old.products):
            if product.path in fresh:
                continue
            redo |= _users(product)
            with db.writing():
                product.delete_instance(recursive=True)
            _delete_later(engine, Path(product.path))
            if product.kind == "processed_flat":  # and its copy beside the products
                _delete_later(engine, engine.output_dir / product.filename)
            log.info("product=%s retired: superseded by job=%d", log_name(product.filename),
                     job.id)
    for product in list(job.products.where(db.Product.is_calibration == True)):  # noqa: E712
        users = _users(product)  # reduced with the content this job has just replaced
        if users - ids:
            log.info("product=%s re-made by job=%d: %d sequence(s) reduced with it again",
                     log_name(product.filename), job.id, len(users - ids))
        redo |= users
    for seq_id in sorted(redo - ids):
        if db.Sequence.get_by_id(seq_id).state in (State.DONE, State.QUICKLOOK):
            engine.emit(seq_id, Event.RECALIBRATE)


def _users(product: db.Product) -> set[int]:
    """The sequences whose products were made with ``product``."""
    found: set[int] = set()
    for use in product.used_by:
        src = use.product.job
        if src is not None and src.sequence is not None:
            found.add(src.sequence.id)
    return found


def _delete_later(engine: Engine, path: Path) -> None:
    engine.after_commit(lambda: path.unlink(missing_ok=True))


@_executes(Action.SUBMIT_STACK)
def submit_stack(engine: Engine, seq: db.Sequence, event: SequenceEvent) -> None:
    """Science: distortion-correct, align and stack the reduced object frames (two or more)."""
    if seq.kind != "science" or event.result is None:
        return
    objects = sorted(p for p, kind in event.result["products"] if kind == "sky_corrected")
    if len(objects) < 2:
        return
    name = Path(objects[0]).name.replace("_skyCorrected", "_stack")
    spec = {"recipe": "stack", "paths": objects, "output_dir": str(engine.output_dir),
            "output_name": name, "pictures": engine.config.quicklook.pictures,
            "reference_catalog": engine.config.stack.reference_catalog or None}
    with db.writing():
        job = db.Job.create(sequence=seq, recipe="stack", parameters=json.dumps(spec),
                            state="SUBMITTED", owner=engine.owner)
    engine.start_job(job)
