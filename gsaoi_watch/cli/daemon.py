"""``gsaoi-watch run``, ``status``, ``close`` and ``demo``: the daemon and its operators."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon.demo import demo_summary, run_demo
from gsaoi_watch.daemon.service import run_service
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import setup_logging

__all__ = ['config_from_args', 'run_cli', 'run_close', 'run_demo_cli', 'run_status']

log = logging.getLogger("gsaoi_watch")


def config_from_args(args):
    """The configuration file (``-c``) with command-line overrides applied."""
    from gsaoi_watch.config import load_config

    config = load_config(getattr(args, "config", None))
    paths = {}
    if getattr(args, "raw_dir", None):
        paths["raw_dir"] = args.raw_dir
    if getattr(args, "output_dir", None):
        paths["output_dir"] = args.output_dir
    if getattr(args, "log", None):
        paths["log_file"] = args.log
    if paths:
        config = config.replace("paths", **paths)
    if getattr(args, "database", None):
        config = config.replace("database", url=args.database)
    return config


def run_cli(args) -> int:
    """Entry point of ``gsaoi-watch run``."""
    from gsaoi_watch.errors import GsaoiWatchError

    try:
        config = config_from_args(args)
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch run: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.service.log_level, config.paths.log_file)
    try:
        return run_service(config)
    except GsaoiWatchError as exc:
        log.error("%s", exc)
        return 2


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


def run_demo_cli(args) -> int:
    """Entry point of ``gsaoi-watch demo``."""
    from gsaoi_watch.logs import setup_logging

    workdir = Path(args.workdir)
    setup_logging("INFO", "")
    try:
        result = run_demo(workdir, size=args.size, seed=args.seed, cadence=args.cadence,
                          timeout=args.timeout, workers=args.workers)
    except (FileExistsError, ValueError) as exc:
        print(f"gsaoi-watch demo: {exc}", file=sys.stderr)
        return 2
    print()
    for line in demo_summary(result["config"]):
        print(line)
    if "error" in result:
        print(f"gsaoi-watch demo: {result['error']}", file=sys.stderr)
        return 1
    print(f"The night was reduced {result['elapsed']:.0f} s after its first frame landed "
          f"(last frame at {result['last_frame']:.0f} s).  Products and pictures: "
          f"{result['config'].paths.output_dir}; night summary: "
          f"{Path(result['config'].paths.output_dir) / 'index.html'}; "
          f"log: {result['config'].paths.log_file}")
    return int(result["status"])

