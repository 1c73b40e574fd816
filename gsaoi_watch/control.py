"""``gsaoi-watch status`` and ``gsaoi-watch close``: talk to the daemon through the database."""

from __future__ import annotations

import sys

from gsaoi_watch import db
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.service import config_from_args

__all__ = ["run_close", "run_status"]


def _open(args, verb) -> bool:
    """Open the daemon's database (``-d``, else ``-c``); False after a one-line error."""
    try:
        db.open_database(config_from_args(args).database.url)
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch {verb}: {exc}", file=sys.stderr)
        return False
    return True


def run_status(args) -> int:
    """Print open sequences, waiting/running/failed jobs and the latest products."""
    if not _open(args, "status"):
        return 2
    try:
        print("Sequences")
        for s in db.Sequence.select().order_by(db.Sequence.opened):
            print(f"  {s.state:9s} {s.observation_id} {s.kind} {s.object} "
                  f"{(s.filter_name or '').split('_')[0]} {s.exposure_time:g}s "
                  f"{s.frames.count():3d} frames  ({s.reason or 'new'})"
                  + ("  [quick-look, no flat]" if s.quicklook else ""))
        print("Jobs")
        for j in db.Job.select().where(db.Job.state != "DONE").order_by(db.Job.id):
            print(f"  job={j.id} {j.recipe} {j.state} tries={j.tries} {j.error or ''}")
        done = db.Job.select().where(db.Job.state == "DONE").count()
        print(f"  ({done} done)")
        print("Latest products")
        for p in db.Product.select().order_by(db.Product.created.desc()).limit(12):
            print(f"  {p.created:%Y-%m-%d %H:%M:%S} {p.kind:15s} {p.filename}")
        quarantined = db.Frame.select().where(db.Frame.state == "quarantined")
        if quarantined.count():
            print("Quarantined frames")
            for f in quarantined:
                print(f"  {f.path}: {f.error}")
    finally:
        db.close_database()
    return 0


def run_close(args) -> int:
    """Ask the running daemon to close a sequence (or all open ones)."""
    if not args.all and not args.sequence:
        print("gsaoi-watch close: give a sequence (observation id or key) or --all",
              file=sys.stderr)
        return 2
    if not _open(args, "close"):
        return 2
    try:
        with db.writing():
            db.Command.create(verb="close", argument="--all" if args.all else args.sequence)
    finally:
        db.close_database()
    print("close requested; the daemon acts on it within a tick")
    return 0
