"""Running an archive plan: the daemon's engine, fed phase by phase, its jobs on a cluster.

The archive is reduced by the daemon's own :class:`~gsaoi_watch.daemon.engine.Engine`, so
ingest, sequences (same keys, same transition table), calibration association
(:func:`~gsaoi_watch.calibration.queries.best_calibration`: same filter, within 30 days,
nearest in time), job rows, products, ``product_calibration`` links, QA and the stack
follow-up are the daemon's, recorded by the one client process.  Only what differs for an
archive is here:

- frames are offered phase by phase (:data:`~gsaoi_watch.archive.plan.PHASES`), each
  phase's sequences completed at once (in an archive every sequence is complete: by the
  next observation, else idle), and the cluster drained before the next phase: every flat
  of every night exists before a standard or science sequence asks for one, so a night
  without flats gets the nearest flat of another night within 30 days;
- the raw directory is not rescanned and no time-driven transition runs (no flat wait: a
  sequence with no flat within 30 days is reduced quick-look, flagged so, at the end);
- resuming: the engine's recovery re-runs jobs a killed client left RUNNING; finished
  products whose file is gone or changed (checksum) are made again; frames already in the
  ledger with the same checksum are not ingested twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gsaoi_watch.archive.plan import PHASES, ArchivePlan
from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import REPROCESS
from gsaoi_watch.config import Config
from gsaoi_watch.daemon import outcomes
from gsaoi_watch.daemon.actions import calibration_ready
from gsaoi_watch.daemon.engine import Engine, JobExecutor
from gsaoi_watch.daemon.events import Event, FrameArrived, FrameRejected, Tick
from gsaoi_watch.daemon.sequences import State
from gsaoi_watch.logs import log_name

__all__ = ["ArchiveEngine", "ArchiveSummary", "archive_config", "describe", "reprocess"]

log = logging.getLogger(__name__)

#: Called after each engine step with (jobs finished, jobs known) of this run.
Progress = Callable[[int, int], None]
_ENDED = ("DONE", "FAILED")


def archive_config(config: Config) -> Config:
    """The daemon's configuration for an archive: no per-frame steps ahead, no streaming.

    Both exist to have results while a night is observed; the final products are the same
    without them.
    """
    return config.replace("jobs", prepare_ahead=False, streaming=False)


class ArchiveEngine(Engine):
    """The daemon's engine without a raw directory to rescan or a clock driving sequences.

    Its rows have the owner :data:`~gsaoi_watch.calibration.daemons.REPROCESS`: daemons
    on the same database go on with theirs, the next reprocess resumes these.
    """

    def __init__(self, config: Config, *, executor: JobExecutor) -> None:
        super().__init__(config, executor=executor)
        self.owner = REPROCESS
        self._handlers[Tick] = self._retry_due

    def rescan(self) -> None:
        """Nothing: the archive offers its frames itself, phase by phase."""

    def _retry_due(self, event: Tick) -> None:
        """Only jobs due again after a transient failure (no idle or flat-wait clock)."""
        outcomes.start_due_retries(self)

    def busy(self) -> bool:
        """Whether jobs run, wait to run again, or events wait to be handled."""
        return bool(self.futures or self.retries.due_at or not self.events.empty()
                    or self.boundary.waiting)


@dataclasses.dataclass
class ArchiveSummary:
    """What a run did: sequences and jobs by state, products, frames refused, failures."""

    sequences: dict[str, int]
    jobs: dict[str, int]
    products: int
    quarantined: int
    failed: list[str]
    seconds: float


def _complete(engine: Engine, kinds: frozenset[str]) -> None:
    """Complete every open sequence of ``kinds`` as the daemon would with all frames in.

    In time order: closed by the next observation if one followed it, else idle.
    """
    open_ = list(db.Sequence.select().where(
        db.Sequence.state.in_((State.OPEN, State.REOPENED)) & db.Sequence.kind.in_(kinds)
        & engine.mine(db.Sequence)).order_by(db.Sequence.last_frame_ut, db.Sequence.id))
    for seq in open_:
        later = db.Sequence.select().where(
            (db.Sequence.observation_id != seq.observation_id)
            & (db.Sequence.last_frame_ut > seq.last_frame_ut)
            & engine.mine(db.Sequence)).exists()
        engine.emit(seq.id, Event.NEW_OBSERVATION if later else Event.IDLE_TIMEOUT)


def _release_waiting(engine: Engine, *, expire: bool = False) -> None:
    """WAITING standards and science: released if a flat exists, else (``expire``) quick-look."""
    for seq in list(db.Sequence.select().where(
            (db.Sequence.state == State.WAITING) & db.Sequence.kind.in_(("standard", "science"))
            & engine.mine(db.Sequence)).order_by(db.Sequence.id)):
        if calibration_ready(seq):
            engine.emit(seq.id, Event.CALIBRATION_READY)
        elif expire:
            log.warning("seq=%s: no flat within 30 days: reduced quick-look", seq.key)
            engine.emit(seq.id, Event.WAIT_EXPIRED)


def _verify_products(engine: Engine) -> None:
    """Products of finished jobs whose file is gone or changed are made again."""
    for job in list(db.Job.select().where((db.Job.state == "DONE") & engine.mine(db.Job))):
        bad = [p for p in job.products
               if not Path(p.path).is_file() or db.checksum(p.path) != p.checksum]
        if not bad:
            continue
        names = ", ".join(log_name(p.filename) for p in bad)
        seq = job.sequence
        if job.recipe == "stack":
            log.warning("job=%d stack: %s missing or changed: made again", job.id, names)
            engine.start_job(job)
        elif seq is not None and seq.state in (State.DONE, State.QUICKLOOK):
            log.warning("seq=%s: %s missing or changed: reduced again", seq.key, names)
            engine.emit(seq.id, Event.RECALIBRATE)


def _retry_failed(engine: Engine) -> None:
    """Sequences that failed in an earlier run are tried again (the cause may be fixed).

    Through the table's operator-close row (FAILED -> COMPLETE, its calibration looked
    up): a flat's two lamps both, so they are reduced together again.
    """
    for seq in list(db.Sequence.select().where((db.Sequence.state == State.FAILED)
                                               & engine.mine(db.Sequence))
                    .order_by(db.Sequence.id)):
        log.warning("seq=%s: failed in an earlier run (%s): tried again", seq.key,
                    seq.reason)
        engine.emit(seq.id, Event.OPERATOR_CLOSE)


def _job_counts(since_id: int) -> tuple[int, int]:
    ended = known = 0
    for job in db.Job.select(db.Job.state).where((db.Job.id > since_id)
                                                 & (db.Job.owner == REPROCESS)):
        known += 1
        ended += job.state in _ENDED
    return ended, known


def _drain(engine: ArchiveEngine, progress: Progress | None, first_job: int) -> None:
    """Step the engine until no job runs or waits; a due retry is started by a Tick."""
    last_tick = time.monotonic()
    while engine.busy():
        engine.step(timeout=0.2)
        if engine.retries.due_at and time.monotonic() - last_tick > 1.0:
            engine.handle(Tick())
            last_tick = time.monotonic()
        if progress is not None:
            progress(*_job_counts(first_job))


def reprocess(config: Config, plan: ArchivePlan, executor: JobExecutor, *,
              progress: Progress | None = None) -> ArchiveSummary:
    """Reduce an archive plan with the daemon's engine, its jobs on ``executor``.

    The database must be open (:func:`gsaoi_watch.calibration.db.open_database`); this
    process is its only writer for the run.

    Parameters
    ----------
    config : gsaoi_watch.config.Config
        Output directory, tries, QA and pictures (see :func:`archive_config`).
    plan : ArchivePlan
        From :func:`gsaoi_watch.archive.plan.plan_archive`.
    executor : JobExecutor
        Where jobs run: a :class:`~gsaoi_watch.archive.cluster.DaskExecutor`, or any
        ``concurrent.futures`` executor.
    progress : callable, optional
        ``progress(finished, known)`` jobs of this run, after each step.

    Returns
    -------
    ArchiveSummary
    """
    t0 = time.perf_counter()
    engine = ArchiveEngine(archive_config(config), executor=executor)
    last = db.Job.select(db.Job.id).order_by(db.Job.id.desc()).first()
    first_job = last.id if last is not None else 0
    engine.recover()  # half-written files; jobs a killed run left RUNNING run again
    _verify_products(engine)
    _retry_failed(engine)
    for path, problem in plan.rejected:
        engine.handle(FrameRejected(path, problem))
    try:
        for n, ((name, kinds), frames) in enumerate(zip(PHASES, plan.phases)):
            log.info("phase %d (%s): %d frames", n + 1, name, len(frames))
            for path, info in frames:
                engine.handle(FrameArrived(path, info))
            _complete(engine, kinds)
            _release_waiting(engine)
            _drain(engine, progress, first_job)
        _release_waiting(engine, expire=True)
        _drain(engine, progress, first_job)
    finally:
        engine.shutdown()
    return _summary(time.perf_counter() - t0)


def _summary(seconds: float) -> ArchiveSummary:
    sequences: dict[str, int] = {}
    for seq in db.Sequence.select(db.Sequence.state).where(db.Sequence.owner == REPROCESS):
        sequences[seq.state] = sequences.get(seq.state, 0) + 1
    jobs: dict[str, int] = {}
    failed = []
    for job in db.Job.select().where(db.Job.owner == REPROCESS):
        jobs[job.state] = jobs.get(job.state, 0) + 1
        if job.state == "FAILED":
            failed.append(f"job={job.id} {job.recipe}: {job.error}")
    for seq in db.Sequence.select().where((db.Sequence.state == State.FAILED)
                                          & (db.Sequence.owner == REPROCESS)):
        failed.append(f"seq={seq.key}: {seq.reason}")
    quarantined = db.Frame.select().where(db.Frame.state == "quarantined").count()
    products = db.Product.select().join(db.Job).where(db.Job.owner == REPROCESS).count()
    return ArchiveSummary(sequences=sequences, jobs=jobs, products=products,
                          quarantined=quarantined, failed=failed, seconds=seconds)


def describe(summary: ArchiveSummary) -> list[str]:
    """The summary as lines for the terminal."""
    seqs = ", ".join(f"{n} {s}" for s, n in sorted(summary.sequences.items())) or "none"
    jobs = ", ".join(f"{n} {s}" for s, n in sorted(summary.jobs.items())) or "none"
    lines = [f"sequences: {seqs}", f"jobs: {jobs}",
             f"products: {summary.products}; frames quarantined: {summary.quarantined}",
             f"done in {summary.seconds:.1f} s"]
    lines += [f"FAILED {line}" for line in summary.failed]
    return lines


