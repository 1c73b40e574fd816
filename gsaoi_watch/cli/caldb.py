"""``gsaoi-watch caldb``: DRAGONS' caldb verbs on the gsaoi_watch calibration database."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.caldb import add_calibration, calibration_files
from gsaoi_watch.calibration.queries import find_calibrations
from gsaoi_watch.config import resolve_database
from gsaoi_watch.errors import ConfigError, FrameError, GsaoiWatchError

__all__ = ['run_caldb']

def run_caldb(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch caldb VERB``."""
    try:
        target = resolve_database(args.database, args.config)
    except ConfigError as exc:
        print(f"caldb: {exc}", file=sys.stderr)
        return 2
    verb = args.caldb_verb
    if verb == "config":
        print(f"database: {db.describe_target(target)}")
        print(f"  from: {'-d/--database' if args.database else args.config or 'default'}")
        print(f"  exists: {'yes' if '://' in target or Path(target).exists() else 'no'}")
        return 0
    try:
        if verb == "init":
            return _init(target, args.wipe)
        db.open_database(target)
        if verb == "add":
            return _add(args.files, args.walk)
        if verb == "list":
            return _list()
        if verb == "remove":
            return _remove(args.files)
        if verb in ("bad", "good"):
            return _mark(args.files, verb == "bad")
    except db.DatabaseError as exc:
        print(f"caldb: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close_database()
    return 2


def _init(target, wipe):
    if "://" not in target and Path(target).exists() and not wipe:
        print(f"caldb: {target} already exists; use --wipe to start afresh",
              file=sys.stderr)
        return 2
    if wipe:
        db.wipe_database(target)
    db.open_database(target, create=True)
    print(f"initialised calibration database {db.describe_target(target)}")
    return 0


def _add(paths, walk):
    status = 0
    for path in calibration_files(paths, walk):
        try:
            product = add_calibration(path)
        except (FrameError, GsaoiWatchError) as exc:
            print(f"caldb add: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"added {product.kind} {product.filename}")
    return status


def _list():
    rows = db.Product.select().where(db.Product.is_calibration == True)  # noqa: E712
    for p in rows.order_by(db.Product.kind, db.Product.ut_datetime):
        flag = "  BAD" if p.is_bad else ""
        print(f"{p.filename:40s} {p.kind:15s} {p.filter_name or '-':22s} "
              f"{p.ut_datetime:%Y-%m-%d %H:%M:%S}  {os.path.dirname(p.path)}{flag}")
    return 0


def _remove(names):
    status = 0
    for name in names:
        rows = find_calibrations(name)
        if not rows:
            print(f"caldb remove: {name}: not in the database", file=sys.stderr)
            status = 1
            continue
        with db.writing():
            for row in rows:
                row.delete_instance(recursive=True)
        for row in rows:
            print(f"removed {row.filename} ({row.path}) from the database "
                  "(the file stays on disk)")
    return status


def _mark(names, bad):
    status = 0
    for name in names:
        rows = find_calibrations(name)
        if not rows:
            print(f"caldb {'bad' if bad else 'good'}: {name}: not in the database",
                  file=sys.stderr)
            status = 1
            continue
        with db.writing():
            db.Product.update(is_bad=bad).where(
                db.Product.id.in_([r.id for r in rows])).execute()
        for row in rows:
            print(f"{row.filename} ({row.path}) marked "
                  f"{'bad: it will not be served' if bad else 'good'}")
    return status
