"""What finished worker tasks leave: job rows, products, frames used, QA; then the table.

A reduction job's outcome is recorded once per job (a flat job serves two sequences): the
job row, its products (registered with the calibrations they used), the member frames used
or unusable, the QA values, the prepared frames that served.  Each sequence of the job then
gets its event (``job_done``, ``job_done_stale``, ``job_done_quicklook[_stale]``,
``job_failed``, ``job_gave_up``) and the transition table does the rest.  A stack job is a
follow-up of its science sequence and changes no sequence: its products are registered, a
failure is retried while tries are left.  How a failed job goes on depends on why it failed
(:mod:`gsaoi_watch.daemon.failures`): a worker's death and a transient cause do not use up
its tries, a deterministic error gives it up at once.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.daemon.events import Event, JobFinished, PreparedFinished, StreamFinished
from gsaoi_watch.daemon.failures import Failure, classify
from gsaoi_watch.daemon.prepared import forget
from gsaoi_watch.daemon.sequences import label
from gsaoi_watch.daemon.streaming import provisional_path, stream_science
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import log_name
from gsaoi_watch.quicklook.pictures import picture_path
from gsaoi_watch.quicklook.summary import write_summary

if TYPE_CHECKING:
    from gsaoi_watch.daemon.engine import Engine

__all__ = ["job_finished", "member_of", "prepared_finished", "refresh_summary",
           "remove_provisional", "request_stream", "start_due_retries", "stream_finished"]

log = logging.getLogger(__name__)

#: (reduced without a flat, a frame arrived meanwhile) -> the sequence's event
_DONE = {(False, False): Event.JOB_DONE, (False, True): Event.JOB_DONE_STALE,
         (True, False): Event.JOB_DONE_QUICKLOOK, (True, True): Event.JOB_DONE_QUICKLOOK_STALE}


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def job_finished(engine: Engine, event: JobFinished) -> None:
    """Record a finished job, then give each of its sequences its event."""
    engine.futures.pop(event.job_id, None)
    job = db.Job.get_by_id(event.job_id)
    spec = json.loads(job.parameters)
    seq_ids: list[int] = spec.get("sequences", [])
    future = event.future
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        _failed(engine, job, seq_ids, exc)
        return
    engine.retries.forget(job.id)
    result = future.result()
    if spec["recipe"] == "stack":
        _stack_finished(engine, job, result)
        return
    _record(engine, job, spec, result)
    quick = spec["recipe"] == "images" and not spec.get("flat")
    for seq_id in seq_ids:
        stale = bool(db.Sequence.get_by_id(seq_id).stale)
        engine.emit(seq_id, _DONE[(quick, stale)], job_id=job.id, result=result)
    refresh_summary(engine)


def _failed(engine: Engine, job: db.Job, seq_ids: list[int], exc: BaseException) -> None:
    """A job raised: by the kind of failure, run it again now, later, or give it up."""
    kind = classify(exc)
    if kind is Failure.CRASH:
        _crashed(engine, job, seq_ids, exc)
        return
    text = _first_line(exc)
    if kind is Failure.TRANSIENT:
        delay, when = engine.retries.schedule(job.id, engine.now())
        engine.job_state(job, "RETRY", error=text)
        log.warning("job=%d %s failed: %s; a transient cause: next try at %s UTC (in %.0f s)",
                    job.id, job.recipe, text, when.strftime("%Y-%m-%d %H:%M:%S"), delay)
        return
    engine.retries.forget(job.id)
    deterministic = kind is Failure.DETERMINISTIC
    gave_up = deterministic or job.tries >= engine.config.jobs.max_tries
    engine.job_state(job, "FAILED" if gave_up else "RETRY", error=text)
    if deterministic:
        log.error("job=%d %s failed: %s (not retried: it would fail the same way)", job.id,
                  job.recipe, text)
    else:
        log.error("job=%d %s failed (try %d of %d): %s", job.id, job.recipe, job.tries,
                  engine.config.jobs.max_tries, text)
    if seq_ids and gave_up:  # every sequence of the job: a flat's lamp-on and lamp-off
        for seq_id in seq_ids:
            engine.emit(seq_id, Event.JOB_GAVE_UP, job_id=job.id)
    elif seq_ids:  # run again, with all its sequences, by the first
        engine.emit(seq_ids[0], Event.JOB_FAILED, job_id=job.id)
    elif not gave_up:  # a follow-up job (the stack): run it again
        engine.start_job(db.Job.get_by_id(job.id))


def _crashed(engine: Engine, job: db.Job, seq_ids: list[int], exc: BaseException) -> None:
    """The job's worker died: counted apart from the tries; again until max_crashes."""
    crashes = job.crashes + 1
    limit = engine.config.jobs.max_crashes
    how = getattr(exc, "how", "unknown")
    engine.remove_temporaries()  # what the dead worker was writing
    with db.writing():
        db.Job.update(crashes=crashes).where(db.Job.id == job.id).execute()
    if crashes >= limit:
        engine.retries.forget(job.id)
        why = f"worker died ({how}) {crashes} times"
        engine.job_state(job, "FAILED", error=why)
        log.error("job=%d %s given up: %s", job.id, job.recipe, why)
        for seq_id in seq_ids:
            engine.emit(seq_id, Event.JOB_GAVE_UP, job_id=job.id)
        return
    log.warning("job=%d %s: its worker died (%s; %d of %d deaths allowed): running it again",
                job.id, job.recipe, how, crashes, limit)
    engine.start_job(db.Job.get_by_id(job.id), count_try=False)


def start_due_retries(engine: Engine) -> None:
    """Start the jobs whose wait after a transient failure is over (on the engine's tick).

    The first call also takes up jobs left waiting (RETRY) by an earlier run of the daemon.
    """
    if not engine.retries.adopted:
        engine.retries.adopted = True
        for left in db.Job.select(db.Job.id).where((db.Job.state == "RETRY")
                                                   & engine.mine(db.Job)):
            if left.id not in engine.futures and not engine.retries.waiting(left.id):
                engine.retries.due_at[left.id] = engine.now()
    for job_id in engine.retries.due(engine.now()):
        job = db.Job.get_or_none(db.Job.id == job_id)
        if engine.stopping or job is None or job.state != "RETRY":
            continue
        log.info("job=%d %s: trying again after a transient failure (%s)", job.id,
                 job.recipe, job.error)
        engine.start_job(job, count_try=False)


def _record(engine: Engine, job: db.Job, spec: Mapping[str, Any],
            result: Mapping[str, Any]) -> None:
    """Products, frames used or unusable, the job row, QA and the prepared frames."""
    used = []
    for key, caltype in (("flat", "processed_flat"), ("bpm", "processed_bpm")):
        if spec.get(key):
            cal = db.Product.get_or_none(db.Product.path == spec[key])
            if cal is not None:
                used.append((cal, caltype))
    for path, kind in result["products"]:
        queries.register_product(path, read_frame_info(path), kind=kind,
                                 is_calibration=kind == "processed_flat", job=job, used=used)
    skipped: dict[str, str] = {}
    for name, why in result["skipped"]:
        path = member_of(name, spec["paths"])
        if path is not None:
            skipped[path] = str(why)
        log.warning("frame=%s not used: %s", log_name(Path(name).name), why)
    with db.writing():
        for path in spec["paths"]:
            db.Frame.update(state="used" if path not in skipped else "unusable",
                            error=skipped.get(path)).where(db.Frame.path == path).execute()
    engine.job_state(job, "DONE")
    log.info("job=%d %s done in %.1f s → %s", job.id, job.recipe, result["seconds"],
             result["note"])
    _record_qa(result.get("qa") or [], result["products"])
    if spec["recipe"] != "images" or spec.get("flat"):
        # reduced with its flat: the prepared frames have served
        for path in spec["paths"]:
            engine.after_commit(functools.partial(forget, engine.cache_dir, path))
    if spec["recipe"] == "images":
        engine.after_commit(functools.partial(_retire_provisional, engine, spec))


def member_of(name: str, paths: list[str]) -> str | None:
    """The job's raw frame a reported file name stands for (full path, else file name).

    Reductions report a skipped frame by its path or by its file name; a bare name is
    never resolved against the working directory.
    """
    if name in paths:
        return name
    if Path(name).is_absolute():
        resolved = str(Path(name).resolve())
        if resolved in paths:
            return resolved
    base = Path(name).name
    found = [p for p in paths if Path(p).name == base]
    if not found:  # a product name reported for its raw frame (same stem, a suffix added)
        found = [p for p in paths if base.startswith(Path(p).stem + "_")]
    return found[0] if len(found) == 1 else None


def _record_qa(measured: list[dict[str, Any]], products: list[tuple[str, str]], *,
               prefix: str = "qa") -> None:
    path_of = {Path(p).name: str(Path(p).resolve()) for p, _ in products}
    for qa in measured:
        with db.writing():
            db.Product.update(qa=json.dumps(qa)).where(
                db.Product.path == path_of.get(qa["file"])).execute()
        log.info("%s %s", prefix, log_name(qa["log"]))
        for line in qa.get("warnings", ()):
            log.warning("%s%s", log_name(line), " (provisional)" if "provisional" in prefix
                        else "")


def _stack_finished(engine: Engine, job: db.Job, result: Mapping[str, Any]) -> None:
    astrometry = result.get("astrometry")
    for path, kind in result["products"]:
        try:  # a stack has DRAGONS' descriptors too (data label, filter, read mode, ...)
            info = read_frame_info(path)
        except GsaoiWatchError as exc:
            log.warning("product=%s header unreadable: %s", log_name(Path(path).name),
                        log_name(exc))
            info = None
        row = queries.register_product(path, info, kind=kind, is_calibration=False, job=job)
        if astrometry is not None:
            with db.writing():
                db.Product.update(qa=json.dumps({"astrometry": astrometry})).where(
                    db.Product.id == row.id).execute()
    for line in result.get("warnings", ()):
        log.warning("%s", log_name(line))
    for name, why in result["skipped"]:
        log.warning("frame=%s left out of the stack: %s", log_name(Path(name).name), why)
    engine.job_state(job, "DONE")
    log.info("job=%d stack done in %.1f s → %s", job.id, result["seconds"], result["note"])
    refresh_summary(engine)


def prepared_finished(engine: Engine, event: PreparedFinished) -> None:
    """Log how the per-frame steps done ahead went (a failure is left to the sequence job)."""
    path, future = event.path, event.future
    if engine.preparing.get(path) is future:
        del engine.preparing[path]
    if future.cancelled():
        return
    exc = future.exception()
    name = log_name(Path(path).name)
    if exc is not None:  # not fatal: the sequence job prepares the raw frame itself
        if classify(exc) is Failure.DETERMINISTIC:  # the job will meet it and report it
            log.info("frame=%s per-frame steps not done ahead (%s); left to the sequence "
                     "job", name, _first_line(exc))
        else:
            log.warning("frame=%s per-frame steps failed (%s); left to the sequence job",
                        name, _first_line(exc))
        return
    res = future.result()
    log.info("frame=%s prepared in %.1f s (%s)", name, res["seconds"],
             f"flat {res['flat']}" if res["flat"] else "no flat yet")
    frame = db.Frame.get_or_none(db.Frame.path == path)
    sequence_id = getattr(frame, "sequence_id", None) if frame is not None else None
    if sequence_id is not None:
        request_stream(engine, int(sequence_id))


#: Sequence states in which frames are still landing (the streaming step runs).
OBSERVING = ("OPEN", "REOPENED")


def request_stream(engine: Engine, sequence_id: int) -> None:
    """Run the streaming step of a science sequence now, or once the running one ends."""
    seq = db.Sequence.get_or_none(db.Sequence.id == sequence_id)
    if engine.stopping or seq is None or seq.kind != "science" or seq.state not in OBSERVING \
            or not engine.config.jobs.streaming:
        return
    if sequence_id in engine.streaming:
        engine.stream_again.add(sequence_id)
        return
    # the frames whose per-frame steps are done (one still being prepared waits for the
    # next step: taking it now would prepare it twice)
    paths = [f.path for f in seq.frames.where(db.Frame.state == "ingested")
             .order_by(db.Frame.ut_datetime) if f.path not in engine.preparing]
    if len(paths) < 2:
        return
    info = read_frame_info(paths[0])
    flat = queries.best_calibration(info)
    bpm = queries.best_calibration(info, "processed_bpm")
    spec: dict[str, Any] = {"paths": paths, "cache_dir": str(engine.cache_dir),
            "output_dir": str(engine.output_dir), "flat": flat.path if flat else None,
            "bpm": bpm.path if bpm else None, "params": {},
            "qa": engine.config.quicklook.qa, "pictures": engine.config.quicklook.pictures}
    engine.after_commit(lambda: _submit_stream(engine, sequence_id, spec))


def _submit_stream(engine: Engine, sequence_id: int, spec: dict[str, Any]) -> None:
    if engine.stopping or sequence_id in engine.streaming:
        return
    future = engine.executor.submit(stream_science, spec)
    engine.streaming[sequence_id] = future

    def finished(f: Future[Any]) -> None:  # in the worker pool's thread: only enqueue
        engine.events.put(StreamFinished(sequence_id, f))

    future.add_done_callback(finished)


def stream_finished(engine: Engine, event: StreamFinished) -> None:
    """Log and register what the streaming step made; run it again if frames landed."""
    sequence_id, future = event.sequence_id, event.future
    if engine.streaming.get(sequence_id) is future:
        del engine.streaming[sequence_id]
    again = sequence_id in engine.stream_again
    engine.stream_again.discard(sequence_id)
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:  # not fatal: the final reduction does everything itself
        log.warning("sequence=%d streaming step failed (%s); left to the final reduction",
                    sequence_id, _first_line(exc))
        return
    res = future.result()
    seq = db.Sequence.get_or_none(db.Sequence.id == sequence_id)
    for name in res["masks"]:
        log.info("frame=%s pass-1 object mask made (sky frame)", log_name(name))
    final = seq is None or seq.state not in OBSERVING + ("COMPLETE", "WAITING")
    for path, kind in res["products"]:
        if final:  # the final products are (being) made: this one is not needed
            remove_provisional(path)
            continue
        queries.register_product(path, read_frame_info(path), kind=kind, is_calibration=False)
        log.info("product=%s PROVISIONAL (skies landed so far; the final replaces it)",
                 log_name(Path(path).name))
    if not final:  # their QA in the database too (the live page plots it)
        _record_qa(res["qa"], res["products"], prefix="qa provisional")
    if again:
        request_stream(engine, sequence_id)


def remove_provisional(path: str | Path) -> None:
    """Delete a provisional product, its picture and its database row."""
    path = Path(path)
    for p in (path, picture_path(path)):
        p.unlink(missing_ok=True)
    with db.writing():
        db.Product.delete().where(db.Product.path == str(path.resolve())).execute()


def _retire_provisional(engine: Engine, spec: Mapping[str, Any]) -> None:
    """The final products of a science job are in: the provisional ones go."""
    gone = 0
    for raw in spec["paths"]:
        path = provisional_path(engine.output_dir, Path(raw).name)
        if path.exists():
            remove_provisional(path)
            gone += 1
    if gone:
        log.info("%d provisional product(s) replaced by the final ones", gone)


def refresh_summary(engine: Engine) -> None:
    """Rewrite the night summary page from the database (never fails the engine)."""
    if not engine.config.quicklook.summary:
        return
    sequences = []
    for seq in db.Sequence.select().where(engine.mine(db.Sequence)).order_by(
            db.Sequence.opened):
        products = []
        for job in seq.jobs.where(db.Job.state == "DONE").order_by(db.Job.id):
            for p in job.products.order_by(db.Product.filename):
                products.append({"path": p.path, "qa": json.loads(p.qa) if p.qa else None})
        sequences.append({"name": label(seq), "kind": seq.kind,
                          "state": seq.state + (" quick-look" if seq.quicklook else ""),
                          "frames": seq.frames.count(), "products": products})
    try:
        write_summary(engine.output_dir, sequences)
    except OSError as exc:
        log.warning("night summary not written: %s", exc)
