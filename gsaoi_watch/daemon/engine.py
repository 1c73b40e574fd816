"""The engine: the one thread that owns state, writes the database and submits jobs.

Everything else (the watchdog handler, apscheduler jobs, finished-job callbacks, signal
handlers) only puts events on :attr:`Engine.events`.  Each state change is one database
update and one log line, e.g.
``seq=GS-2017A-Q-29-13 science NGC5128 Kshort 60s: OPEN→COMPLETE (new observation) 16 frames``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import queue
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.calibration.caldb import calibration_kind
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.prepared import cache_path, prepare_ahead
from gsaoi_watch.daemon.sequences import advance, frame_kind, sequence_key
from gsaoi_watch.daemon.watcher import ArrivalGate, scan_directory
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.quicklook.summary import write_summary

__all__ = ["Engine"]

log = logging.getLogger("gsaoi_watch")

MEMBER_STATES = ("ingested", "used", "unusable")
REDUCIBLE = {"flat_on", "flat_off", "flat", "standard", "science"}
REASONS = {"new_observation": "new observation", "idle_timeout": "idle",
           "operator_close": "closed by operator", "calibration_ready": "calibration ready",
           "calibration_missing": "waiting for a flat", "wait_expired": "flat wait expired",
           "job_done": "reduced", "job_done_quicklook": "quick-look reduced",
           "job_failed": "job failed, retrying", "job_gave_up": "job failed", "frame": "late frame"}


def _utcnow():
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


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

    def __init__(self, config, *, executor=None, now=_utcnow):
        self.config = config
        self.raw_dir = Path(config.paths.raw_dir)
        self.output_dir = Path(config.paths.output_dir)
        self.events = queue.Queue()
        self.now = now
        self.gate = ArrivalGate(settle=config.watch.settle_seconds,
                                give_up=config.watch.give_up_seconds)
        # forkserver, not fork: forking a process that runs threads (observer, scheduler)
        # can copy a held lock (e.g. logging's) into the worker and hang it
        self.executor = executor or ProcessPoolExecutor(
            max_workers=config.jobs.workers, mp_context=multiprocessing.get_context("forkserver"))
        self._own_executor = executor is None
        self.futures = {}
        self.cache_dir = self.output_dir / ".prepared"
        self.preparing = {}
        self.stopping = False
        self.counts = {"frames": 0, "quarantined": 0, "products": 0}

    # --- lifecycle -------------------------------------------------------------------------
    def recover(self):
        """After a restart: re-run interrupted jobs (bounded tries), then catch up on files."""
        for job in db.Job.select().where(db.Job.state.in_(("RUNNING", "SUBMITTED"))):
            seq = job.sequence
            if job.tries >= self.config.jobs.max_tries:
                self._job_state(job, "FAILED", error="interrupted too often")
                log.error("job=%d %s given up: interrupted %d times", job.id, job.recipe,
                          job.tries)
                if seq is not None and job.recipe != "stack":
                    self._apply(seq, "job_gave_up")
                continue
            log.info("job=%d %s interrupted by a restart: running it again (try %d of %d)",
                     job.id, job.recipe, job.tries + 1, self.config.jobs.max_tries)
            self._start(job)
        self.rescan()

    def rescan(self):
        """Offer every candidate file in the raw directory that is not in the ledger yet."""
        known = {f.path for f in db.Frame.select(db.Frame.path)}
        for path in scan_directory(self.raw_dir):
            if str(Path(path).resolve()) not in known:
                self.gate.notice(path, closed=True)

    def step(self, timeout=0.2):
        """Handle at most one queued event, then let the arrival gate release frames."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            event = None
        if event is not None:
            self.handle(event)
        ready, rejected = self.gate.poll()
        for path, problem in rejected:
            self._quarantine(path, problem)
        for path, info in ready:
            self._ingest(path, info)

    def handle(self, event):
        """Dispatch one event tuple (kind, *args)."""
        kind = event[0]
        if kind in ("seen", "closed"):
            self.gate.notice(event[1], closed=kind == "closed")
        elif kind == "tick":
            self.tick()
        elif kind == "rescan":
            self.rescan()
        elif kind == "job_finished":
            self._finished(*event[1:])
        elif kind == "prepared":
            self._prepared(*event[1:])
        elif kind == "stop":
            self.stopping = True

    def tick(self):
        """Time-driven transitions: idle sequences close, flat waits expire; operator commands."""
        now = self.now()
        for cmd in db.Command.select().where(db.Command.done.is_null()):
            self._command(cmd)
        idle = dt.timedelta(seconds=self.config.sequences.idle_timeout)
        wait = dt.timedelta(seconds=self.config.sequences.flat_wait)
        self._close_superseded()
        for seq in db.Sequence.select().where(db.Sequence.state.in_(("OPEN", "REOPENED"))):
            if now - seq.updated >= idle:
                self._apply(seq, "idle_timeout")
        for seq in db.Sequence.select().where(db.Sequence.state == "WAITING"):
            if seq.wait_started is not None and now - seq.wait_started >= wait:
                self._apply(seq, "wait_expired")

    def _close_superseded(self):
        """Close open sequences that a later observation has followed (new_observation).

        The telescope runs one observation at a time, so a sequence is complete once frames
        of another observation taken after its last frame exist.  Frames copied in bulk
        arrive in any order: only a sequence quiet for ``min_quiet`` seconds is closed.
        """
        now = self.now()
        quiet = dt.timedelta(seconds=self.config.sequences.min_quiet)
        for seq in db.Sequence.select().where(db.Sequence.state.in_(("OPEN", "REOPENED"))):
            if now - seq.updated >= quiet and seq.last_frame_ut is not None and \
                    db.Sequence.select().where(
                        (db.Sequence.observation_id != seq.observation_id)
                        & (db.Sequence.last_frame_ut > seq.last_frame_ut)).exists():
                self._apply(seq, "new_observation")

    def shutdown(self):
        """Stop submitting; abandon running jobs (they are re-run after a restart)."""
        if self._own_executor:
            # the worker processes, taken before shutdown() forgets them
            procs = list((getattr(self.executor, "_processes", None) or {}).values())
            self.executor.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(timeout=5)

    def summary(self) -> str:
        """A one-line status: sequences by state, jobs running, products made."""
        states = {}
        for seq in db.Sequence.select(db.Sequence.state):
            states[seq.state] = states.get(seq.state, 0) + 1
        running = db.Job.select().where(db.Job.state == "RUNNING").count()
        seqs = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        return (f"sequences: {seqs}; jobs running: {running}; frames: "
                f"{self.counts['frames']}; quarantined: {self.counts['quarantined']}; "
                f"products: {db.Product.select().count()}")

    # --- frames ----------------------------------------------------------------------------
    def _quarantine(self, path, problem):
        path = str(Path(path).resolve())
        with db.writing():
            row = db.Frame.get_or_none(db.Frame.path == path)
            if row is None:
                db.Frame.create(path=path, state="quarantined", error=problem)
            else:
                db.Frame.update(state="quarantined", error=problem,
                                updated=self.now()).where(db.Frame.id == row.id).execute()
        self.counts["quarantined"] += 1
        log.warning("frame=%s quarantined: %s", Path(path).name, problem)

    def _ingest(self, path, info):
        path = str(Path(path).resolve())
        name = Path(path).name
        digest = db.checksum(path)
        existing = db.Frame.get_or_none(db.Frame.path == path)
        if existing is not None and existing.checksum == digest:
            return
        label = info.data_label()
        twin = db.Frame.get_or_none(db.Frame.data_label == label) if label else None
        if twin is not None and twin.path != path:
            self._quarantine(path, f"duplicate of {Path(twin.path).name} "
                                   f"(same data label {label})")
            return
        kind = frame_kind(info)
        if kind == "bpm" or calibration_kind(info) == "processed_bpm":
            queries.register_product(path, info, kind="processed_bpm", is_calibration=True)
            log.info("frame=%s registered as static BPM", name)
            self._record_frame(path, info, digest, "used", None)
            return
        if kind not in REDUCIBLE:
            self._record_frame(path, info, digest, "ignored", None)
            log.info("frame=%s ignored: %s (%s)", name, kind,
                     info.observation_class() or info.observation_type())
            return
        key = sequence_key(info)
        with db.writing():
            seq, created = db.Sequence.get_or_create(key=key.as_text(), defaults=dict(
                kind=key.kind, observation_id=key.observation_id, object=info.object(),
                filter_name=key.filter_name, exposure_time=key.exposure_time,
                read_mode=key.read_mode, roi=key.roi, state="OPEN", opened=self.now(),
                updated=self.now(), last_frame_ut=info.ut_datetime()))
        self._record_frame(path, info, digest, "ingested", seq)
        self.counts["frames"] += 1
        if key.kind in ("standard", "science") and self.config.jobs.prepare_ahead:
            self._prepare_ahead(path, info)
        n = seq.frames.count()
        log.info("frame=%s → seq=%s (%d frames)", name, self._label(seq), n)
        if created:
            log.info("seq=%s: new sequence OPEN", self._label(seq))
        # one observation at a time: a later frame of another observation closes open ones
        when = info.ut_datetime()
        seq = db.Sequence.get_by_id(seq.id)
        last = max(filter(None, [seq.last_frame_ut, when]), default=None)
        with db.writing():
            db.Sequence.update(updated=self.now(), last_frame_ut=last).where(
                db.Sequence.id == seq.id).execute()
        self._close_superseded()
        if not created:
            self._apply(db.Sequence.get_by_id(seq.id), "frame")

    def _record_frame(self, path, info, digest, state, seq):
        descriptors = {"object": info.object(), "observation_class": info.observation_class(),
                       "filter_name": info.filter_name(), "exposure_time": info.exposure_time(),
                       "observation_id": info.observation_id()}
        fields = dict(data_label=info.data_label() if state != "quarantined" else None,
                      checksum=digest, size=Path(path).stat().st_size,
                      descriptors=json.dumps(descriptors), tags=" ".join(sorted(info.tags)),
                      state=state, error=None, sequence=seq, ut_datetime=info.ut_datetime(),
                      updated=self.now())
        with db.writing():
            row = db.Frame.get_or_none(db.Frame.path == path)
            if row is None:
                db.Frame.create(path=path, **fields)
            else:
                db.Frame.update(**fields).where(db.Frame.id == row.id).execute()

    def _prepare_ahead(self, path, info):
        """Run the per-frame steps on a frame now, while its sequence is still observed."""
        if self.stopping:
            return
        flat = queries.best_calibration(info)
        bpm = queries.best_calibration(info, "processed_bpm")
        spec = {"path": path, "cache_dir": str(self.cache_dir),
                "flat": flat.path if flat else None, "bpm": bpm.path if bpm else None}
        future = self.executor.submit(prepare_ahead, spec)
        self.preparing[path] = future
        future.add_done_callback(lambda f, p=path: self.events.put(("prepared", p, f)))

    def _prepared(self, path, future):
        if self.preparing.get(path) is future:
            del self.preparing[path]
        if future.cancelled():
            return
        exc = future.exception()
        name = Path(path).name
        if exc is not None:  # not fatal: the sequence job prepares the raw frame itself
            log.warning("frame=%s per-frame steps failed (%s); left to the sequence job", name,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        res = future.result()
        log.info("frame=%s prepared in %.1f s (%s)", name, res["seconds"],
                 f"flat {res['flat']}" if res["flat"] else "no flat yet")

    def _drop_prepared(self, paths):
        for path in paths:
            cache_path(self.cache_dir, path).unlink(missing_ok=True)

    # --- state machine -------------------------------------------------------------------
    def _label(self, seq):
        return (f"{seq.observation_id} {seq.kind} {seq.object} "
                f"{(seq.filter_name or '').split('_')[0]} {seq.exposure_time:g}s")

    def _apply(self, seq, event, *, covered=False):
        seq = db.Sequence.get_by_id(seq.id)
        t = advance(seq.state, event)
        if t is None:
            return
        reason = REASONS.get(event, event)
        if event == "calibration_missing" and seq.kind in ("flat_on", "flat_off"):
            reason = "waiting for the lamp-{} frames".format(
                "off" if seq.kind == "flat_on" else "on")
        with db.writing():
            db.Sequence.update(state=t.next_state, reason=reason).where(
                db.Sequence.id == seq.id).execute()
        if t.next_state != seq.state:
            log.info("seq=%s: %s→%s (%s) %d frames", self._label(seq), seq.state, t.next_state,
                     reason, seq.frames.count())
        seq = db.Sequence.get_by_id(seq.id)
        for action in t.actions:
            self._act(seq, action, covered=covered)

    def _act(self, seq, action, *, covered=False):
        if action == "check_calibration":
            self._apply(seq, "calibration_ready" if self._calibration_ready(seq)
                        else "calibration_missing")
        elif action == "start_wait":
            with db.writing():
                db.Sequence.update(wait_started=self.now()).where(
                    db.Sequence.id == seq.id).execute()
        elif action == "cancel_wait":
            with db.writing():
                db.Sequence.update(wait_started=None).where(db.Sequence.id == seq.id).execute()
        elif action in ("submit", "submit_quicklook") and not covered:
            self._submit(seq, quicklook=action == "submit_quicklook")
        elif action == "resubmit":
            job = db.Job.select().where(db.Job.sequence == seq).order_by(
                db.Job.id.desc()).first()
            if job is not None:
                self._start(job)
        elif action == "mark_stale":
            with db.writing():
                db.Sequence.update(stale=True).where(db.Sequence.id == seq.id).execute()
        elif action == "release_dependents":
            self._release(seq)
        elif action == "record_failure":
            log.error("seq=%s: reduction FAILED after %d tries", self._label(seq),
                      self.config.jobs.max_tries)

    def _partner(self, seq):
        want = {"flat_on": "flat_off", "flat_off": "flat_on"}.get(seq.kind)
        if want is None:
            return None
        return (db.Sequence.select().where(
            (db.Sequence.kind == want) & (db.Sequence.filter_name == seq.filter_name)
            & (db.Sequence.read_mode == seq.read_mode) & (db.Sequence.roi == seq.roi))
            .order_by(db.Sequence.opened.desc()).first())

    def _first_info(self, seq):
        frame = seq.frames.order_by(db.Frame.ut_datetime).first()
        return read_frame_info(frame.path)

    def _calibration_ready(self, seq):
        if seq.kind in ("flat_on", "flat_off"):
            info = self._first_info(seq)
            wave = info.effective_wavelength()
            if wave is not None and wave < 1.4:
                return True
            partner = self._partner(seq)
            return partner is not None and partner.state in ("COMPLETE", "WAITING")
        if seq.kind == "flat":
            return True
        return queries.best_calibration(self._first_info(seq)) is not None

    def _paths(self, seq):
        # every member, also those a previous reduction used or could not use: a sequence
        # is always reduced whole (re-opened, re-calibrated, or after quick-look)
        return [f.path for f in seq.frames.where(db.Frame.state.in_(MEMBER_STATES))
                .order_by(db.Frame.ut_datetime)]

    def _submit(self, seq, *, quicklook=False):
        info = self._first_info(seq)
        bpm = queries.best_calibration(info, "processed_bpm")
        spec = {"output_dir": str(self.output_dir), "bpm": bpm.path if bpm else None,
                "params": {}, "sequences": [seq.id]}
        if seq.kind.startswith("flat"):
            paths = self._paths(seq)
            partner = self._partner(seq)
            if partner is not None and partner.state in ("COMPLETE", "WAITING", "REDUCING"):
                paths += self._paths(partner)
                spec["sequences"].append(partner.id)
            spec.update(recipe="flat", paths=paths, flat=None,
                        pictures=self.config.quicklook.pictures)
        else:
            flat = None if quicklook else queries.best_calibration(info)
            spec.update(recipe="images", paths=self._paths(seq),
                        flat=flat.path if flat else None, cache_dir=str(self.cache_dir),
                        qa=self.config.quicklook.qa, pictures=self.config.quicklook.pictures)
        with db.writing():
            job = db.Job.create(sequence=seq, recipe=spec["recipe"],
                                parameters=json.dumps(spec), state="SUBMITTED")
            db.Sequence.update(quicklook=quicklook).where(db.Sequence.id == seq.id).execute()
        self._start(job)
        for other in spec["sequences"][1:]:  # the partner flat rides on this job
            self._apply(db.Sequence.get_by_id(other), "calibration_ready", covered=True)

    def _start(self, job):
        spec = json.loads(job.parameters)
        with db.writing():
            db.Job.update(state="RUNNING", tries=job.tries + 1, started=self.now(),
                          error=None).where(db.Job.id == job.id).execute()
        log.info("job=%d %s %s started (%d frames, try %d)", job.id, job.recipe,
                 self._label(job.sequence) if job.sequence else "", len(spec["paths"]),
                 job.tries + 1)
        if self.stopping:
            return
        future = self.executor.submit(run_job, spec)
        self.futures[job.id] = future
        future.add_done_callback(lambda f, jid=job.id: self.events.put(("job_finished", jid,
                                                                         f)))

    def _job_state(self, job, state, error=None):
        with db.writing():
            db.Job.update(state=state, finished=self.now(), error=error).where(
                db.Job.id == job.id).execute()

    def _finished(self, job_id, future):
        self.futures.pop(job_id, None)
        job = db.Job.get_by_id(job_id)
        spec = json.loads(job.parameters)
        seqs = [db.Sequence.get_by_id(i) for i in spec.get("sequences", [])]
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            gave_up = job.tries >= self.config.jobs.max_tries
            self._job_state(job, "FAILED" if gave_up else "RETRY", error=text)
            log.error("job=%d %s failed (try %d of %d): %s", job.id, job.recipe, job.tries,
                      self.config.jobs.max_tries, text)
            for seq in seqs[:1]:
                self._apply(seq, "job_gave_up" if gave_up else "job_failed")
            if not seqs and not gave_up:  # a follow-up job (the stack): run it again
                self._start(db.Job.get_by_id(job.id))
            return
        result = future.result()
        if spec["recipe"] == "stack":
            self._stack_finished(job, spec, result)
            return
        used = []
        if spec.get("flat"):
            flat = db.Product.get_or_none(db.Product.path == spec["flat"])
            if flat is not None:
                used.append((flat, "processed_flat"))
        if spec.get("bpm"):
            bpm = db.Product.get_or_none(db.Product.path == spec["bpm"])
            if bpm is not None:
                used.append((bpm, "processed_bpm"))
        for path, kind in result["products"]:
            queries.register_product(path, read_frame_info(path), kind=kind,
                                is_calibration=kind == "processed_flat", job=job, used=used)
        self._supersede(job, seqs, {str(Path(p).resolve()) for p, _ in result["products"]})
        for name, reason in result["skipped"]:
            log.warning("frame=%s not used: %s", Path(name).name, reason)
        skipped = {str(Path(n).resolve()) for n, _ in result["skipped"]}
        with db.writing():
            for path in spec["paths"]:
                db.Frame.update(state="used" if path not in skipped else "unusable").where(
                    db.Frame.path == path).execute()
        self._job_state(job, "DONE")
        log.info("job=%d %s done in %.1f s → %s", job.id, job.recipe, result["seconds"],
                 result["note"])
        self._record_qa(result.get("qa") or [], result["products"])
        quick = spec["recipe"] == "images" and not spec.get("flat")
        if not quick:  # reduced with its flat: the prepared frames have served
            self._drop_prepared(spec["paths"])
        for seq in seqs:
            self._apply(seq, "job_done_quicklook" if quick else "job_done")
            seq = db.Sequence.get_by_id(seq.id)
            if seq.stale:
                with db.writing():
                    db.Sequence.update(stale=False).where(db.Sequence.id == seq.id).execute()
                self._apply(seq, "frame")
        if spec["recipe"] == "images" and seqs and seqs[0].kind == "science":
            objects = [p for p, kind in result["products"] if kind == "sky_corrected"]
            if len(objects) >= 2 and db.Sequence.get_by_id(seqs[0].id).state in (
                    "DONE", "QUICKLOOK"):
                self._submit_stack(seqs[0], objects)
        self._refresh_summary()

    # --- follow-up work: QA, stack, summary ------------------------------------------------
    def _record_qa(self, measured, products):
        path_of = {Path(p).name: str(Path(p).resolve()) for p, _ in products}
        for qa in measured:
            with db.writing():
                db.Product.update(qa=json.dumps(qa)).where(
                    db.Product.path == path_of.get(qa["file"])).execute()
            log.info("qa %s", qa["log"])

    def _submit_stack(self, seq, objects):
        """Distortion-correct, align and stack the sequence's reduced object frames."""
        name = Path(sorted(objects)[0]).name.replace("_skyCorrected", "_stack")
        spec = {"recipe": "stack", "paths": sorted(objects), "output_dir": str(self.output_dir),
                "output_name": name, "pictures": self.config.quicklook.pictures}
        with db.writing():
            job = db.Job.create(sequence=seq, recipe="stack", parameters=json.dumps(spec),
                                state="SUBMITTED")
        self._start(job)

    def _stack_finished(self, job, spec, result):
        for path, kind in result["products"]:
            queries.register_product(path, None, kind=kind, is_calibration=False, job=job)
        for name, reason in result["skipped"]:
            log.warning("frame=%s left out of the stack: %s", Path(name).name, reason)
        self._job_state(job, "DONE")
        log.info("job=%d stack done in %.1f s → %s", job.id, result["seconds"],
                 result["note"])
        self._refresh_summary()

    def _refresh_summary(self):
        """Rewrite the night summary page from the database (never fails the engine)."""
        if not self.config.quicklook.summary:
            return
        sequences = []
        for seq in db.Sequence.select().order_by(db.Sequence.opened):
            products = []
            for job in seq.jobs.where(db.Job.state == "DONE").order_by(db.Job.id):
                for p in job.products.order_by(db.Product.filename):
                    products.append({"path": p.path, "qa": json.loads(p.qa) if p.qa else None})
            sequences.append({"name": self._label(seq), "kind": seq.kind,
                              "state": seq.state + (" quick-look" if seq.quicklook else ""),
                              "frames": seq.frames.count(), "products": products})
        try:
            write_summary(self.output_dir, sequences)
        except OSError as exc:
            log.warning("night summary not written: %s", exc)

    def _supersede(self, job, seqs, fresh):
        """Retire products of earlier jobs of these sequences that this job did not remake.

        A sequence re-reduced with more frames can give products other names (a flat is
        named after its first lamp-on frame): the old files and rows go, and sequences that
        were reduced with a retired calibration are reduced again.
        """
        earlier = db.Job.select().where((db.Job.id != job.id) & (db.Job.state == "DONE"))
        ids = {s.id for s in seqs}
        redo = set()
        for old in earlier:
            if not ids & set(json.loads(old.parameters).get("sequences", [])):
                continue
            for product in old.products:
                if product.path in fresh:
                    continue
                for use in product.used_by:
                    src = use.product.job
                    if src is not None and src.sequence is not None:
                        redo.add(src.sequence.id)
                with db.writing():
                    product.delete_instance(recursive=True)
                Path(product.path).unlink(missing_ok=True)
                if product.kind == "processed_flat":  # and its copy beside the products
                    (self.output_dir / product.filename).unlink(missing_ok=True)
                log.info("product=%s retired: superseded by job=%d", product.filename, job.id)
        for seq_id in redo - ids:
            self._apply(db.Sequence.get_by_id(seq_id), "recalibrate")

    def _release(self, seq):
        if seq.kind not in ("flat_on", "flat_off", "flat"):
            return
        for other in db.Sequence.select().where(
                db.Sequence.state.in_(("WAITING", "QUICKLOOK"))
                & db.Sequence.kind.in_(("standard", "science"))):
            if queries.best_calibration(self._first_info(other)) is not None:
                self._apply(other, "calibration_ready")

    def _command(self, cmd):
        targets = db.Sequence.select()
        if cmd.argument and cmd.argument != "--all":
            targets = targets.where(db.Sequence.key.contains(cmd.argument)
                                    | db.Sequence.observation_id.contains(cmd.argument))
        else:
            targets = targets.where(db.Sequence.state.in_(("OPEN", "REOPENED", "FAILED")))
        n = 0
        for seq in targets:
            if seq.state in ("OPEN", "REOPENED", "FAILED"):
                self._apply(seq, "operator_close")
                n += 1
        with db.writing():
            db.Command.update(done=self.now()).where(db.Command.id == cmd.id).execute()
        log.info("command %s %s: %d sequence(s) closed", cmd.verb, cmd.argument or "", n)

    def run(self, *, idle_exit=None):
        """Loop until a stop event (or, with ``idle_exit`` seconds, until nothing is left)."""
        quiet_since = time.monotonic()
        while not self.stopping:
            self.step()
            if idle_exit is not None:
                busy = (self.futures or self.preparing or self.gate.pending
                        or not self.events.empty())
                if busy:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > idle_exit:
                    break
