"""The engine: the one thread that owns state, writes the database and submits jobs.

Everything else (the watchdog handler, apscheduler jobs, finished-job callbacks, signal
handlers) only puts typed events (:mod:`gsaoi_watch.daemon.events`) on :attr:`Engine.events`.
:meth:`Engine.handle` is the one door every event passes, queued or raised while handling
another: it finds the event's handler (an unknown event is a logged error) and calls it.  A
:class:`~gsaoi_watch.daemon.events.SequenceEvent` is applied through the transition table
(:mod:`gsaoi_watch.daemon.sequences`): one database update, one log line such as
``seq=GS-2017A-Q-29-13 science NGC5128 Kshort 60s: OPEN→COMPLETE (new observation) 16
frames``, then the row's actions (:mod:`gsaoi_watch.daemon.actions`), which may raise further
events for the same or other sequences; those pass through :meth:`Engine.handle` at once,
depth first.  Frames arriving are handled by :mod:`gsaoi_watch.daemon.ingest`, finished jobs
by :mod:`gsaoi_watch.daemon.outcomes`.

:meth:`Engine.handle` is the error boundary (:mod:`gsaoi_watch.daemon.boundary`): an event
handled from the queue is one database transaction (``BEGIN IMMEDIATE``), and the events it
raises are handled inside it, each sequence's in a savepoint, so a state change and the job
row it asks for are written together or not at all.  Jobs are submitted, files deleted and
state changes logged only once the transaction has committed.  An exception while handling
one sequence's event marks that sequence FAILED with the reason (one ERROR line); one while
handling a frame quarantines that frame; the loop goes on.  A database that cannot be used
(locked past the busy wait, gone, failing) keeps the event and those after it, tried again
with backoff (:meth:`Engine.summary` says so, and the heartbeat with it).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import multiprocessing
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import peewee as pw

from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import owner_of, pid_alive
from gsaoi_watch.config import Config
from gsaoi_watch.daemon import ingest, outcomes
from gsaoi_watch.daemon.actions import EXECUTORS, calibration_ready, live_job
from gsaoi_watch.daemon.boundary import Boundary, first_line
from gsaoi_watch.daemon.events import (
    EngineEvent,
    Event,
    FileNoticed,
    FrameArrived,
    FrameRejected,
    Heartbeat,
    JobFinished,
    OperatorCommand,
    PreparedFinished,
    Recover,
    Rescan,
    SequenceEvent,
    Stop,
    StreamFinished,
    Tick,
)
from gsaoi_watch.daemon.failures import RetrySchedule
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.pool import SupervisedPool
from gsaoi_watch.daemon.sequences import State, advance, label, reason
from gsaoi_watch.daemon.streaming import PROVISIONAL_DIR
from gsaoi_watch.daemon.watcher import ArrivalGate, scan_directory
from gsaoi_watch.logs import (
    WorkerLogging,
    log_name,
    start_worker_logging,
    worker_log_initializer,
)

__all__ = ["BUSY_WAIT", "Engine", "JobExecutor"]

log = logging.getLogger(__name__)

#: How long the daemon waits for another process's database lock before it keeps the event
#: and retries with backoff (seconds; SQLite's busy timeout on the daemon's connection).
BUSY_WAIT = 2.0

#: States an operator's ``close`` acts on.
CLOSABLE = (State.OPEN, State.REOPENED, State.FAILED)


def _writer_alive(name: str) -> bool:
    """Whether the writer of a hidden ``.NAME.PID.X.tmp`` file runs (unknown: assumed so)."""
    parts = name[:-len(".tmp")].rsplit(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return True
    return pid_alive(int(parts[1]))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class JobExecutor(Protocol):
    """The part of :class:`concurrent.futures.Executor` the engine uses."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its future."""
        ...


class Engine:
    """Consume events; keep sequences, jobs and products in the database.

    Parameters
    ----------
    config : gsaoi_watch.config.Config
        The validated configuration (paths, timeouts, workers, tries).
    executor : concurrent.futures.Executor, optional
        Where jobs run (default: a process pool of ``config.jobs.workers``).
    now : callable, optional
        Wall-clock source returning a naive UTC datetime (injected in tests).
    """

    def __init__(self, config: Config, *, executor: JobExecutor | None = None,
                 now: Callable[[], dt.datetime] = _utcnow) -> None:
        self.config = config
        self.raw_dir = Path(config.paths.raw_dir)
        self.output_dir = Path(config.paths.output_dir)
        #: The name its sequences, jobs and commands carry; it acts on those alone (other
        #: engines share the database: :mod:`gsaoi_watch.calibration.daemons`).
        self.owner = owner_of(self.raw_dir)
        self._calibrations_seen: int | None = None  # the newest calibration row looked at
        self.events: queue.Queue[EngineEvent] = queue.Queue()
        self.now = now
        self.gate = ArrivalGate(settle=config.watch.settle_seconds,
                                give_up=config.watch.give_up_seconds)
        self._own_executor = executor is None
        self.relay: WorkerLogging | None = None
        if executor is None:
            # forkserver, not fork: forking a process that runs threads (observer,
            # scheduler) can copy a held lock (e.g. logging's) into the worker and hang it.
            # The supervised pool replaces a pool whose worker died; its workers die with
            # the daemon and log through it.
            ctx = multiprocessing.get_context("forkserver")
            self.relay = start_worker_logging(ctx)
            executor = SupervisedPool(config.jobs.workers, mp_context=ctx,
                                      initializer=worker_log_initializer,
                                      initargs=self.relay.initargs)
        self.executor: JobExecutor = executor
        self.retries = RetrySchedule()  # jobs waiting after a transient failure
        self.futures: dict[int, Future[Any]] = {}
        self.cache_dir = self.output_dir / ".prepared"
        self.preparing: dict[str, Future[Any]] = {}
        self.streaming: dict[int, Future[Any]] = {}  # sequence id -> its streaming step
        self.stream_again: set[int] = set()  # frames landed while it ran: run it again
        self.stopping = False
        self.counts = {"frames": 0, "quarantined": 0, "products": 0}
        self._handlers: dict[type, Callable[[Any], None]] = {
            FileNoticed: lambda e: self.gate.notice(e.path, closed=e.closed),
            FrameArrived: lambda e: ingest.ingest(self, e),
            FrameRejected: lambda e: ingest.quarantine(self, e.path, e.problem),
            Tick: self._on_tick,
            Rescan: lambda e: self.rescan(),
            Heartbeat: lambda e: None,  # the service's loop answers it (sd_notify)
            Stop: self._on_stop,
            OperatorCommand: self._on_command,
            JobFinished: lambda e: outcomes.job_finished(self, e),
            PreparedFinished: lambda e: outcomes.prepared_finished(self, e),
            StreamFinished: lambda e: outcomes.stream_finished(self, e),
            SequenceEvent: self._guarded_sequence_event,
            Recover: self._on_recover,
        }
        self.boundary = Boundary(self._dispatch, self._failed, now,
                                 coalesce=(Tick, Rescan, Recover))

    # --- lifecycle -------------------------------------------------------------------------
    def recover(self) -> None:
        """After a restart: re-run interrupted jobs, repair stranded sequences, catch up.

        First the temporary files a killed worker left half-written in the daemon's own
        directories are removed (:meth:`remove_temporaries`); no worker runs yet.
        """
        self.remove_temporaries(orphans_only=False)
        self.handle(Recover())

    def remove_temporaries(self, *, orphans_only: bool = True) -> None:
        """Remove the half-written files of killed writers from the daemon's directories.

        The atomic writers' hidden ``.NAME.PID.*.tmp`` files in the prepared-frame cache,
        ``provisional/``, the output directory and its ``calibrations/`` folders.  With
        ``orphans_only`` (while the daemon runs: after a worker died, at each rescan) only
        those whose writer, the process named in the file name, is no longer alive;
        otherwise (at the start, before any worker runs) every one.
        """
        calibrations = self.output_dir / "calibrations"
        try:
            kinds = [p for p in calibrations.iterdir() if p.is_dir()]
        except OSError:
            kinds = []
        for directory in (self.cache_dir, self.output_dir / PROVISIONAL_DIR, self.output_dir,
                          *kinds):
            try:
                stale = [p for p in directory.iterdir()
                         if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
            except OSError:
                continue
            for p in stale:
                if orphans_only and _writer_alive(p.name):
                    continue
                p.unlink(missing_ok=True)
                log.info("removed %s, left half-written by a worker killed %s",
                         log_name(str(p.relative_to(self.output_dir))),
                         "mid-write" if orphans_only else "before this start")

    def _on_recover(self, event: Recover) -> None:
        """Recover in one transaction: interrupted jobs, stranded sequences, missed files.

        Rows of an older schema without an owner become this engine's (:meth:`adopt`);
        then this engine's interrupted jobs run again (bounded tries); its sequences found
        REDUCING or COMPLETE without a live job get ``interrupted`` (submitted again through
        the table); then the raw directory is scanned.  Other engines' rows are theirs.
        """
        self.adopt()
        for job in list(db.Job.select().where(db.Job.state.in_(("RUNNING", "SUBMITTED"))
                                              & self.mine(db.Job))):
            try:  # each job on its own: one that cannot be re-run does not stop the others
                self.boundary.savepoint(functools.partial(self._rerun, job))
            except Exception as exc:
                if db.unavailable(exc):
                    raise
                self.job_state(job, "FAILED", error=f"not re-run: {first_line(exc)}")
                log.error("job=%d %s could not be re-run after a restart: %s", job.id,
                          job.recipe, first_line(exc))
                if job.sequence_id is not None:
                    self._sequence_failed(job.sequence_id, Event.INTERRUPTED, exc)
        for seq in list(db.Sequence.select().where(db.Sequence.state.in_(
                (State.REDUCING, State.COMPLETE)) & self.mine(db.Sequence))
                .order_by(db.Sequence.id)):
            if seq.state == State.REDUCING and live_job(seq) is not None:
                continue
            seq = db.Sequence.get_by_id(seq.id)  # an earlier repair may have taken it along
            if seq.state == State.REDUCING and live_job(seq) is not None:
                continue
            log.warning("seq=%s: found %s without a job after a restart: submitted again",
                        label(seq), seq.state)
            self.emit(seq.id, Event.INTERRUPTED)
        self.rescan()

    def mine(self, model: type[db.Sequence] | type[db.Job]) -> Any:
        """The condition that a sequence or job row is this engine's."""
        return model.owner == self.owner

    def adopt(self) -> None:
        """Make rows of an older schema (owner ``""``) this engine's: the first to recover.

        Such rows were written when one engine acted on the whole database; they are
        reduced on by whichever engine starts on the upgraded database first.
        """
        for model in (db.Sequence, db.Job):
            n = model.update(owner=self.owner).where(model.owner == "").execute()
            if n:
                log.info("%d %s row(s) from before engines had owners are now this "
                         "daemon's", n, model.__name__.lower())

    def _rerun(self, job: db.Job) -> None:
        """Run an interrupted job again, or give it up once it was interrupted too often."""
        seq = job.sequence
        if job.tries >= self.config.jobs.max_tries:
            self.job_state(job, "FAILED", error="interrupted too often")
            log.error("job=%d %s given up: interrupted %d times", job.id, job.recipe,
                      job.tries)
            if seq is not None and job.recipe != "stack":  # a flat's lamp-on and lamp-off
                for seq_id in json.loads(job.parameters).get("sequences", [seq.id]):
                    self.emit(seq_id, Event.JOB_GAVE_UP, job_id=job.id)
            return
        log.info("job=%d %s interrupted by a restart: running it again (try %d of %d)",
                 job.id, job.recipe, job.tries + 1, self.config.jobs.max_tries)
        self.start_job(job)

    def rescan(self) -> None:
        """Offer every candidate file in the raw directory that is not in the ledger yet.

        Also removes what writers killed mid-write left (:meth:`remove_temporaries`).
        """
        self.remove_temporaries()
        known = {f.path for f in db.Frame.select(db.Frame.path)}
        for path in scan_directory(self.raw_dir):
            if str(Path(path).resolve()) not in known:
                self.gate.notice(path, closed=True)

    def step(self, timeout: float = 0.2) -> None:
        """Handle at most one queued event, then let the arrival gate release frames.

        Events kept while the database was unavailable are tried first, once their backoff
        has passed.
        """
        self.boundary.retry()
        wait = self.boundary.next_try_in()
        try:
            event: EngineEvent | None = self.events.get(
                timeout=timeout if wait is None else min(timeout, wait))
        except queue.Empty:
            event = None
        if event is not None:
            self.handle(event)
        self.poll()

    def poll(self) -> None:
        """Retry the events kept for the database and let the arrival gate release frames.

        What :meth:`step` does besides taking an event: the service's loop takes the events
        itself (it answers the heartbeats, which the engine must never swallow: a heartbeat
        taken here was lost, and three lost in a row made ``status`` and ``close`` call the
        daemon gone).
        """
        self.boundary.retry()
        try:
            ready, rejected = self.gate.poll()
        except Exception as exc:  # noqa: BLE001 -- the loop goes on; files are offered again
            log.error("arrival gate: %s", first_line(exc))
            return
        for path, problem in rejected:
            self.handle(FrameRejected(path, problem))
        for path, info in ready:
            self.handle(FrameArrived(path, info))

    def handle(self, event: EngineEvent) -> None:
        """Handle one event: the single door of every event, queued or raised by another.

        From the queue, the event is one transaction through the error boundary (kept for
        later if the database cannot be used); raised while handling another, it is handled
        inside that one's transaction.  Events that need no database (a file noticed, stop,
        heartbeat) are handled at once even while others wait for the database.  An event of
        a type the engine does not know is a logged error, never dropped silently.
        """
        if type(event) not in self._handlers:
            log.error("unknown event %r: not handled", event)
            return
        if self.boundary.inside:
            self._dispatch(event)
        elif isinstance(event, (FileNoticed, Stop, Heartbeat)):
            self._dispatch(event)
        else:
            self.boundary.submit(event)

    def _dispatch(self, event: EngineEvent) -> None:
        self._handlers[type(event)](event)

    def _failed(self, event: EngineEvent, exc: BaseException) -> None:
        """Record the reason an event could not be handled (in a transaction of its own)."""
        text = first_line(exc)
        if isinstance(event, FrameArrived):
            ingest.quarantine(self, event.path, f"could not be ingested: {text}")
        elif isinstance(event, SequenceEvent):
            self._sequence_failed(event.sequence_id, event.event, exc)
        elif isinstance(event, JobFinished):
            job = db.Job.get_or_none(db.Job.id == event.job_id)
            if job is not None:
                self.job_state(job, "FAILED", error=f"outcome not recorded: {text}")
                for seq_id in json.loads(job.parameters).get("sequences", []):
                    self._sequence_failed(seq_id, Event.JOB_DONE, exc)
            log.error("job=%d: its outcome could not be recorded: %s", event.job_id, text)
        else:
            log.error("%s not handled: %s", type(event).__name__, text)

    def _sequence_failed(self, sequence_id: int, event: Event, exc: BaseException) -> None:
        """Mark one sequence FAILED with the reason; the rest of the night goes on."""
        seq = db.Sequence.get_or_none(db.Sequence.id == sequence_id)
        why = f"error on {event}: {first_line(exc)}"
        if seq is None:
            log.error("seq id %d: %s", sequence_id, why)
            return
        db.Sequence.update(state=State.FAILED.value, reason=why[:250]).where(
            db.Sequence.id == seq.id).execute()
        log.error("seq=%s: %s→FAILED (%s)", label(seq), seq.state, why)

    def emit(self, sequence_id: int, event: Event, **context: Any) -> None:
        """Apply ``event`` to a sequence now (``context``: see :class:`SequenceEvent`)."""
        self.handle(SequenceEvent(sequence_id, event, **context))

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current event's transaction has committed (dropped if not)."""
        self.boundary.after_commit(fn)

    def run(self, *, idle_exit: float | None = None) -> None:
        """Loop until a stop event (or, with ``idle_exit`` seconds, until nothing is left)."""
        quiet_since = time.monotonic()
        while not self.stopping:
            self.step()
            if idle_exit is not None:
                busy = (self.futures or self.preparing or self.streaming or self.gate.pending
                        or self.retries.due_at or not self.events.empty()
                        or self.boundary.waiting)
                if busy:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > idle_exit:
                    break

    def shutdown(self) -> None:
        """Stop submitting; abandon running jobs (they are re-run after a restart)."""
        if self._own_executor and isinstance(self.executor, SupervisedPool):
            self.executor.shutdown(wait=False, cancel_futures=True)  # workers terminated
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def summary(self) -> str:
        """A one-line status: sequences by state, jobs running, products made.

        Prefixed with ``database unavailable since ...`` while events wait for it; if the
        database cannot even be read, that alone.
        """
        busy = self.boundary.status()
        try:
            states: dict[str, int] = {}
            for seq in db.Sequence.select(db.Sequence.state).where(self.mine(db.Sequence)):
                states[seq.state] = states.get(seq.state, 0) + 1
            running = db.Job.select().where((db.Job.state == "RUNNING")
                                            & self.mine(db.Job)).count()
            products = db.Product.select().join(db.Job).where(self.mine(db.Job)).count()
        except Exception as exc:  # noqa: BLE001 -- the status line must always be given
            if busy is None:
                busy = f"database unreadable: {first_line(exc)}"
            return f"{busy}; frames: {self.counts['frames']}"
        seqs = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        line = (f"sequences: {seqs}; jobs running: {running}; frames: "
                f"{self.counts['frames']}; quarantined: {self.counts['quarantined']}; "
                f"products: {products}")
        return f"{busy}; {line}" if busy else line

    # --- jobs ------------------------------------------------------------------------------
    def start_job(self, job: db.Job, *, count_try: bool = True) -> None:
        """Mark a job RUNNING; submit it once that is committed.

        With ``count_try`` (default) the run is one more try; a run after a worker's death
        or a transient failure is not (:mod:`gsaoi_watch.daemon.failures`).  Its end comes
        back as a :class:`~gsaoi_watch.daemon.events.JobFinished` event.
        """
        spec = json.loads(job.parameters)
        tries = job.tries + 1 if count_try else max(job.tries, 1)
        with db.writing():
            db.Job.update(state="RUNNING", tries=tries, started=self.now(),
                          error=None).where(db.Job.id == job.id).execute()
        name = label(job.sequence) if job.sequence else ""
        job_id, recipe = job.id, job.recipe
        again = "" if count_try else ", again"
        if count_try:  # a fresh run: a transient wait before it is over
            self.after_commit(lambda: self.retries.forget(job_id))
        self.after_commit(lambda: log.info("job=%d %s %s started (%d frames, try %d%s)", job_id,
                                           recipe, name, len(spec["paths"]), tries, again))
        self.after_commit(lambda: self._submit_job(job_id, spec))

    def _submit_job(self, job_id: int, spec: dict[str, Any]) -> None:
        """Submit a job (after its commit); a submit that fails ends the job with that error.

        The failure comes back as its :class:`~gsaoi_watch.daemon.events.JobFinished`, so
        the job row is never left RUNNING with nothing running it.
        """
        if self.stopping:
            return
        try:
            future = self.executor.submit(run_job, spec)
        except Exception as exc:  # noqa: BLE001 -- e.g. a broken pool: the job's failure
            future = Future()
            future.set_exception(exc)
        self.futures[job_id] = future

        def finished(f: Future[Any]) -> None:  # in the worker pool's thread: only enqueue
            self.events.put(JobFinished(job_id, f))

        future.add_done_callback(finished)

    def job_state(self, job: db.Job, state: str, error: str | None = None) -> None:
        """Record that a job ended (DONE, RETRY or FAILED)."""
        with db.writing():
            db.Job.update(state=state, finished=self.now(), error=error).where(
                db.Job.id == job.id).execute()

    # --- sequences ---------------------------------------------------------------------------
    def close_superseded(self) -> None:
        """Close open sequences that a later observation has followed (new_observation).

        The telescope runs one observation at a time, so a sequence is complete once frames
        of another observation taken after its last frame exist.  Frames copied in bulk
        arrive in any order: only a sequence quiet for ``min_quiet`` seconds is closed.
        Only this engine's sequences count (another raw directory is another timeline).
        """
        now = self.now()
        quiet = dt.timedelta(seconds=self.config.sequences.min_quiet)
        for seq in list(db.Sequence.select().where(db.Sequence.state.in_(
                (State.OPEN, State.REOPENED)) & self.mine(db.Sequence))):
            if now - seq.updated >= quiet and seq.last_frame_ut is not None and \
                    db.Sequence.select().where(
                        (db.Sequence.observation_id != seq.observation_id)
                        & (db.Sequence.last_frame_ut > seq.last_frame_ut)
                        & self.mine(db.Sequence)).exists():
                self.emit(seq.id, Event.NEW_OBSERVATION)

    def _guarded_sequence_event(self, event: SequenceEvent) -> None:
        """One sequence's event in a savepoint: an exception marks only that sequence."""
        try:
            self.boundary.savepoint(lambda: self._on_sequence_event(event))
        except Exception as exc:
            if db.unavailable(exc):
                raise
            self._sequence_failed(event.sequence_id, event.event, exc)

    def _on_sequence_event(self, event: SequenceEvent) -> None:
        """One row of the table: the state and reason in one update, a log line, the actions."""
        seq = db.Sequence.get_by_id(event.sequence_id)
        t = advance(seq.state, event.event)
        if t is None:
            return
        why = reason(seq.kind, event.event, seq.state)
        with db.writing():
            db.Sequence.update(state=t.next_state.value, reason=why).where(
                db.Sequence.id == seq.id).execute()
        if t.next_state != seq.state:
            line = (label(seq), seq.state, t.next_state.value, why, seq.frames.count())
            self.after_commit(lambda: log.info("seq=%s: %s→%s (%s) %d frames", *line))
        seq = db.Sequence.get_by_id(seq.id)
        for action in t.actions:
            EXECUTORS[action](self, seq, event)

    def _on_tick(self, event: Tick) -> None:
        """Time-driven transitions: idle sequences close, flat waits expire; operator commands."""
        now = self.now()
        for cmd in list(db.Command.select().where(db.Command.done.is_null()
                                                  & db.Command.owner.in_((self.owner, "")))):
            self.handle(OperatorCommand(cmd.id))
        idle = dt.timedelta(seconds=self.config.sequences.idle_timeout)
        wait = dt.timedelta(seconds=self.config.sequences.flat_wait)
        self.close_superseded()
        outcomes.start_due_retries(self)
        for seq in list(db.Sequence.select().where(db.Sequence.state.in_(
                (State.OPEN, State.REOPENED)) & self.mine(db.Sequence))):
            if now - seq.updated >= idle:
                self.emit(seq.id, Event.IDLE_TIMEOUT)
        self.release_on_new_calibrations()
        for seq in list(db.Sequence.select().where((db.Sequence.state == State.WAITING)
                                                   & self.mine(db.Sequence))):
            if seq.wait_started is not None and now - seq.wait_started >= wait:
                self.emit(seq.id, Event.WAIT_EXPIRED)

    def release_on_new_calibrations(self) -> None:
        """Release this engine's waiting standards and science on calibrations new to it.

        Calibrations registered since the last look (by another daemon on the database,
        ``caldb add``) release its waiting and quick-looked standards and science; the
        first look, at the start, takes every calibration as new.  A flat this engine makes
        releases them at once (``release_dependents``); this finds the others, one cheap
        query per tick until a calibration row is new.
        """
        newest = db.Product.select(pw.fn.MAX(db.Product.id)).where(
            db.Product.is_calibration == True).scalar() or 0  # noqa: E712
        if self._calibrations_seen is not None and newest <= self._calibrations_seen:
            return
        self._calibrations_seen = newest  # the first look (at the start) takes them all
        for seq in list(db.Sequence.select().where(
                db.Sequence.state.in_((State.WAITING, State.QUICKLOOK))
                & db.Sequence.kind.in_(("standard", "science")) & self.mine(db.Sequence))
                .order_by(db.Sequence.id)):
            if calibration_ready(seq):
                self.emit(seq.id, Event.CALIBRATION_READY)

    def _on_command(self, event: OperatorCommand) -> None:
        """``gsaoi-watch close SEQ|--all``: operator_close to each open or failed target."""
        cmd = db.Command.get_by_id(event.command_id)
        targets = db.Sequence.select().where(self.mine(db.Sequence))
        if cmd.argument and cmd.argument != "--all":
            targets = targets.where(db.Sequence.key.contains(cmd.argument)
                                    | db.Sequence.observation_id.contains(cmd.argument))
        else:
            targets = targets.where(db.Sequence.state.in_(CLOSABLE))
        n = 0
        for seq in list(targets):
            if seq.state in CLOSABLE:
                self.emit(seq.id, Event.OPERATOR_CLOSE)
                n += 1
        with db.writing():
            db.Command.update(done=self.now()).where(db.Command.id == cmd.id).execute()
        log.info("command %s %s: %d sequence(s) closed", log_name(cmd.verb),
                 log_name(cmd.argument or ""), n)

    def _on_stop(self, event: Stop) -> None:
        self.stopping = True

