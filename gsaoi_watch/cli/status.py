"""``gsaoi-watch status`` and ``close``: what the daemon on a database is doing, and asking it.

``status`` says whether a daemon is running on the database (pid, host, last heartbeat: see
:mod:`gsaoi_watch.calibration.daemons`; each of them, with its raw directory, when several
share it) and, for each sequence, why it is in its state: frames arriving and when it
closes, what it waits for, which job reduces it, what failed.  ``close`` records an operator
request each running daemon acts on, on its own sequences, within a tick; with no daemon
running it says so and records nothing (exit 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import (
    REPROCESS,
    DaemonStatus,
    daemon_status,
    describe_owner,
    running_daemons,
)
from gsaoi_watch.cli.options import config_from_args
from gsaoi_watch.config import Config
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import log_name

__all__ = ["describe_daemon", "describe_sequence", "run_close", "run_status"]


def _open(args: argparse.Namespace, verb: str) -> Config | None:
    """Open the daemon's database (``-d``, else ``-c``); None after a one-line error."""
    try:
        config = config_from_args(args)
        db.open_database(config.database.url)
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch {verb}: {exc}", file=sys.stderr)
        return None
    return config


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_daemon(status: DaemonStatus, now: dt.datetime) -> str:
    """One line: whether a daemon runs on the database, its pid, host and heartbeat age."""
    if status.running:
        up = "" if status.started is None else \
            f", up {_ago((now - status.started).total_seconds())}"
        note = f"; {status.note}" if status.note else ""
        return f"running: {status.reason}{up}{note}"
    return f"not running ({status.reason})"


def _job_text(job: db.Job, now: dt.datetime) -> str:
    text = f"job={job.id} {job.recipe} {job.state}"
    if job.state == "RUNNING" and job.started is not None:
        text += f" for {_ago((now - job.started).total_seconds())} (run {job.tries})"
    elif job.tries:
        text += f" after {job.tries} run(s)"
    if job.error and job.state != "DONE":
        text += f": {log_name(job.error.splitlines()[0] if job.error else '')}"
    return text


def describe_sequence(seq: db.Sequence, config: Config, now: dt.datetime) -> str:
    """Why a sequence is in its state, from the database rows (never a stale event name)."""
    state = seq.state
    last = "no frame yet" if seq.updated is None else \
        f"last frame {_ago((now - seq.updated).total_seconds())} ago"
    job = seq.jobs.order_by(db.Job.id.desc()).first()
    if state == "OPEN":
        idle = config.sequences.idle_timeout
        left = idle - (now - seq.updated).total_seconds() if seq.updated else idle
        return (f"receiving frames ({last}); complete when another observation starts or "
                f"after {idle:g} s without a frame (in {_ago(left)})")
    if state == "REOPENED":
        return (f"re-opened by a frame after it was complete ({last}); reduced again when "
                "complete")
    if state == "COMPLETE":
        return f"complete ({seq.reason or 'closed'}); its calibration is being looked up"
    if state == "WAITING":
        text = seq.reason or "waiting for its calibration"
        if seq.kind in ("standard", "science") and seq.wait_started is not None:
            left = config.sequences.flat_wait - (now - seq.wait_started).total_seconds()
            text += f"; reduced for quick-look without one in {_ago(left)}"
        return text
    if state == "REDUCING":
        stale = "; a late frame arrived: reduced again afterwards" if seq.stale else ""
        return (_job_text(job, now) if job is not None else "reduction submitted") + stale
    if state == "DONE":
        products = sum(j.products.count() for j in seq.jobs)
        return f"reduced ({products} product(s))" + ("; stale" if seq.stale else "")
    if state == "QUICKLOOK":
        return ("reduced for quick-look without a flat; reduced again when a flat is "
                "registered")
    if state == "FAILED":
        if seq.reason and seq.reason.startswith("error on "):  # the engine's, not a job's
            return "failed: " + log_name(seq.reason)
        return "failed: " + (_job_text(job, now) if job is not None else seq.reason or "?")
    return seq.reason or state


def _print_sequences(config: Config, now: dt.datetime) -> None:
    owners = {r.owner for r in db.Sequence.select(db.Sequence.owner).distinct()}
    several = len(owners) > 1  # several engines on the database: a heading for each
    if not several:
        print("Sequences")
    for s in db.Sequence.select().order_by(db.Sequence.owner, db.Sequence.opened):
        if several and s.owner in owners:
            owners.discard(s.owner)
            print(f"Sequences of {describe_owner(s.owner)}")
        exposure = "-" if s.exposure_time is None else f"{s.exposure_time:g}s"
        print(f"  {s.state:9s} {s.observation_id} {s.kind} {log_name(s.object)} "
              f"{(s.filter_name or '').split('_')[0]} {exposure} "
              f"{s.frames.count():3d} frames  {describe_sequence(s, config, now)}"
              + ("  [quick-look, no flat]" if s.quicklook else ""))


def run_status(args: argparse.Namespace) -> int:
    """Print the daemon, the sequences and why they are where they are, jobs and products."""
    config = _open(args, "status")
    if config is None:
        return 2
    try:
        now = db._now()
        running = running_daemons(now=now)
        if len(running) > 1:
            print("Daemons")
            for d in running:
                print(f"  {describe_owner(d.owner)}: {describe_daemon(d, now)}")
        else:
            print(f"Daemon: {describe_daemon(daemon_status(now=now), now)}")
        _print_sequences(config, now)
        print("Jobs")
        for j in db.Job.select().where(db.Job.state != "DONE").order_by(db.Job.id):
            print(f"  {_job_text(j, now)}")
        done = db.Job.select().where(db.Job.state == "DONE").count()
        print(f"  ({done} done)")
        print("Latest products")
        for p in db.Product.select().order_by(db.Product.created.desc()).limit(12):
            print(f"  {p.created:%Y-%m-%d %H:%M:%S} {p.kind:15s} {log_name(p.filename)}")
        quarantined = db.Frame.select().where(db.Frame.state == "quarantined")
        if quarantined.count():
            print("Quarantined frames")
            for f in quarantined:
                print(f"  {log_name(f.path)}: {log_name(f.error)}")
    finally:
        db.close_database()
    return 0


def run_close(args: argparse.Namespace) -> int:
    """Ask the running daemon to close a sequence (or all open ones).

    Returns 1 without recording anything when no daemon is running on the database.
    """
    if not args.all and not args.sequence:
        print("gsaoi-watch close: give a sequence (observation id or key) or --all",
              file=sys.stderr)
        return 2
    config = _open(args, "close")
    if config is None:
        return 2
    try:
        now = db._now()
        asked = [d for d in running_daemons(now=now) if d.owner != REPROCESS]
        if not asked:
            status = daemon_status(now=now)
            where = db.describe_target(config.database.url)
            print(f"gsaoi-watch close: no daemon is running on {where} "
                  f"({status.reason}); nothing was requested", file=sys.stderr)
            return 1
        with db.writing():  # one request per daemon: each closes its own sequences
            for d in asked:
                db.Command.create(verb="close", owner=d.owner or "",
                                  argument="--all" if args.all else args.sequence)
    finally:
        db.close_database()
    if len(asked) == 1:
        print(f"close requested; the daemon (pid {asked[0].pid} on {asked[0].host}) acts on "
              "it within a tick")
    else:
        print(f"close requested of {len(asked)} daemons; each acts on its own sequences "
              "within a tick: " + "; ".join(f"pid {d.pid} on {d.host} for "
                                            f"{describe_owner(d.owner)}" for d in asked))
    return 0
