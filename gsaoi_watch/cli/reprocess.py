"""``gsaoi-watch reprocess``: re-reduce raw directories on a Dask cluster (local or remote)."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import logging.handlers
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsaoi_watch.cli.options import config_from_args
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import LOG_FORMAT

if TYPE_CHECKING:
    from gsaoi_watch.archive.plan import ArchivePlan
    from gsaoi_watch.config import Config

__all__ = ["add_reprocess", "run_reprocess"]

log = logging.getLogger(__name__)


def add_reprocess(sub: Any) -> None:
    """The ``reprocess`` verb's options."""
    p = sub.add_parser("reprocess", help="re-reduce an archive of raw directories on a Dask "
                                         "cluster (flats, standards, science, stacks)")
    p.add_argument("directories", nargs="+", metavar="DIR",
                   help="raw directories (searched recursively)")
    p.add_argument("--output-dir", required=True, metavar="OUT", help="where products go")
    p.add_argument("--scheduler", default="local", metavar="local|ADDRESS",
                   help="'local' (default): a LocalCluster on this machine; else a running "
                        "dask scheduler's address, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of the local cluster (default 2)")
    p.add_argument("--since", default=None, metavar="YYYY-MM-DD",
                   help="only frames of this UT date or later")
    p.add_argument("--until", default=None, metavar="YYYY-MM-DD",
                   help="only frames of this UT date or earlier")
    p.add_argument("--log", default=None,
                   help="log file (default <OUT>/gsaoi-watch-reprocess.log)")
    p.add_argument("-d", "--database", default=None,
                   help="database path or URL (default: the config file's)")
    p.add_argument("-c", "--config", default=None, help="configuration file (TOML)")


def _date(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise GsaoiWatchError(f"{option} {text!r}: not a UT date (YYYY-MM-DD)") from None


class _JobLines(logging.Filter):
    """On the console: warnings and errors, and one line per finished job."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        msg = str(record.msg)
        return record.name.startswith(("gsaoi_watch.archive", "gsaoi_watch.cli")) or (
            msg.startswith("job=") and " done in " in msg)


def _not_the_cluster(record: logging.LogRecord) -> bool:
    """The cluster's own messages (a worker killed, a nanny closing) only in the log file."""
    return not record.name.startswith(("distributed", "tornado", "asyncio"))


class _BarLines(logging.StreamHandler):
    """Warnings and errors on a terminal: above the progress bar, which is drawn again."""

    def __init__(self, bar: _Bar) -> None:
        super().__init__(sys.stderr)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar.shown is not None:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        self.bar.redraw()


#: The handlers :func:`_logging` installed (closed when it runs again in the same process).
_INSTALLED: list[logging.Handler] = []


def _logging(log_file: Path, *, bar: _Bar | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    while _INSTALLED:  # an earlier run's in this process: its log file closed
        _INSTALLED.pop().close()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8",
                                               errors="backslashreplace")
    console: logging.Handler
    if bar is not None:
        console = _BarLines(bar)
        console.setLevel(logging.WARNING)
    else:
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(_JobLines())
    console.addFilter(_not_the_cluster)
    for h in (full, console):
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        _INSTALLED.append(h)
        root.addHandler(h)
    for name in ("distributed", "tornado", "asyncio"):  # the cluster's own chatter
        logging.getLogger(name).setLevel(logging.WARNING)


class _Bar:
    """A one-line progress bar on standard error (a terminal)."""

    def __init__(self) -> None:
        self.shown: tuple[int, int] | None = None

    def __call__(self, done: int, known: int) -> None:
        if (done, known) == self.shown or known == 0:
            return
        self.shown = (done, known)
        self.redraw()

    def redraw(self) -> None:
        if self.shown is None:
            return
        done, known = self.shown
        width = 30
        fill = int(width * done / known)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{known} jobs")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown is not None:
            sys.stderr.write("\n")


def run_reprocess(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch reprocess``."""
    from gsaoi_watch.archive.plan import plan_archive
    from gsaoi_watch.calibration import daemons, db

    try:
        since, until = _date(args.since, "--since"), _date(args.until, "--until")
        missing = [d for d in args.directories if not Path(d).is_dir()]
        if missing:
            raise GsaoiWatchError(f"{missing[0]}: not a directory")
        if args.workers < 1:
            raise GsaoiWatchError(f"--workers {args.workers}: must be at least 1")
        config = config_from_args(args)
        config = config.replace("paths", raw_dir=str(Path(args.directories[0]).resolve()))
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch reprocess: {exc}", file=sys.stderr)
        return 2
    out = Path(config.paths.output_dir)
    bar = _Bar() if sys.stderr.isatty() else None
    _logging(Path(args.log) if args.log else out / "gsaoi-watch-reprocess.log", bar=bar)
    try:
        db.open_database(config.database.url, create=True)
        # the engine acts on the reprocess's own rows (owner "reprocess": one at a time
        # per database, the next one resumes them); daemons on other raw directories go
        # on beside it, one watching a directory it re-reduces is in the way
        daemon_id = daemons.register_daemon(
            config.service.heartbeat_seconds, owner=daemons.REPROCESS,
            refuse=functools.partial(_watches, [Path(d) for d in args.directories]))
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch reprocess: {exc}", file=sys.stderr)
        db.close_database()
        return 2
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(daemon_id, stop,
                                                     config.service.heartbeat_seconds),
                            name="reprocess-heartbeat", daemon=True)
    beat.start()
    try:
        plan = plan_archive(args.directories, since=since, until=until, exclude=[out])
        log.info("archive: %d frames to reduce, %d refused, %d outside the dates",
                 plan.n_frames, len(plan.rejected), plan.outside)
        return _run(config, plan, args, bar)
    finally:
        stop.set()
        beat.join(timeout=5)
        try:
            daemons.unregister_daemon(daemon_id)
        except GsaoiWatchError as exc:  # the row goes stale and is cleared by the next one
            log.warning("archive: could not unregister: %s", exc)
        db.close_database()


def _watches(directories: list[Path], owner: str) -> bool:
    """Whether the daemon of ``owner`` watches one of ``directories`` (or in, or above one)."""
    from gsaoi_watch.calibration import daemons

    where = daemons.owner_path(owner)
    if where is None:
        return False
    host, raw = where
    if host != socket.gethostname():
        return False
    for d in directories:
        d = d.resolve()
        if raw == d or raw.is_relative_to(d) or d.is_relative_to(raw):
            return True
    return False


def _heartbeat(daemon_id: int, stop: threading.Event, seconds: float) -> None:
    """Keep the engine slot's heartbeat fresh until ``stop`` (a database hiccup is skipped)."""
    from gsaoi_watch.calibration import daemons

    while not stop.wait(seconds):
        try:
            daemons.heartbeat(daemon_id, note="reprocess")
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            log.debug("archive: heartbeat skipped: %s", exc)


def _run(config: Config, plan: ArchivePlan, args: argparse.Namespace,
         bar: _Bar | None) -> int:
    from gsaoi_watch.archive.cluster import DaskExecutor, open_client
    from gsaoi_watch.archive.run import describe, reprocess

    try:
        client, cluster = open_client(args.scheduler, workers=args.workers,
                                      max_tries=config.jobs.max_tries)
    except OSError as exc:
        print(f"gsaoi-watch reprocess: cannot reach the scheduler {args.scheduler}: {exc}",
              file=sys.stderr)
        return 2
    try:
        summary = reprocess(config, plan, DaskExecutor(client,
                                                       retries=config.jobs.max_tries - 1),
                            progress=bar)
    finally:
        if bar is not None:
            bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    for line in describe(summary):
        print(line)
    return 1 if summary.failed else 0
