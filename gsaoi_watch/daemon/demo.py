"""``gsaoi-watch demo``: the tutorial night observed live, reduced by the daemon as it lands.

The night is simulated into a staging directory first; a feeder thread then copies the
frames into the watched raw directory in observing order at a compressed cadence (each
written under a temporary name and renamed, as the data-handling system does), and the
daemon -- the same :func:`gsaoi_watch.daemon.service.run_service` that systemd starts -- reduces
them.  After the last frame the feeder asks the daemon to close every open sequence (the
operator's ``gsaoi-watch close --all``), waits until nothing is left to do, and stops it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from gsaoi_watch.calibration import db
from gsaoi_watch.config import Config
from gsaoi_watch.logs import LOG_FORMAT

__all__ = ['demo_config', 'run_demo']

log = logging.getLogger(__name__)

MARKER = ".gsaoi_watch_demo"


UNFINISHED = ("OPEN", "REOPENED", "COMPLETE", "WAITING", "REDUCING")


def demo_config(workdir: str | os.PathLike[str]) -> Config:
    """The daemon configuration for a demo in ``workdir`` (short time-outs for a fast night)."""
    workdir = Path(workdir)
    config = Config()
    config = config.replace("paths", raw_dir=str(workdir / "raw"),
                            output_dir=str(workdir / "reduced"),
                            log_file=str(workdir / "gsaoi-watch.log"))
    config = config.replace("database", url=str(workdir / "cal_manager.db"))
    config = config.replace("watch", settle_seconds=0.5, give_up_seconds=10.0,
                            rescan_seconds=5.0)
    config = config.replace("sequences", idle_timeout=20.0, min_quiet=1.0, tick_seconds=0.5,
                            flat_wait=600.0)
    return config.replace("service", heartbeat_seconds=2.0)


def _observing_order(stage: Path) -> list[str]:
    truth = json.loads((Path(stage) / "truth.json").read_text())
    names = [f["filename"] for f in truth["frames"]]
    extra = sorted(p.name for p in Path(stage).glob("*.fits") if p.name not in set(names))
    return extra + names  # the static BPM first, as it sits in the raw directory all night


def _drop(src: Path, raw: Path) -> None:
    tmp = raw / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    tmp.rename(raw / src.name)


def _finished(n_files: int) -> bool:
    frames = db.Frame.select().count()
    busy = db.Job.select().where(db.Job.state.in_(("SUBMITTED", "RUNNING", "RETRY"))).count()
    open_ = db.Sequence.select().where(db.Sequence.state.in_(UNFINISHED)).count()
    return frames >= n_files and not busy and not open_


def _feed(stage: Path, raw: Path, cadence: float, stop: threading.Event,
          result: dict[str, Any], timeout: float) -> None:
    """Copy the night into ``raw``, close the sequences, wait for the reductions, stop."""
    try:
        names = _observing_order(stage)
        t0 = time.monotonic()
        for k, name in enumerate(names):
            if stop.is_set():
                return
            _drop(Path(stage) / name, raw)
            if k + 1 < len(names):
                stop.wait(cadence)
        result["last_frame"] = time.monotonic() - t0
        deadline = time.monotonic() + timeout
        while not stop.is_set() and db.Frame.select().count() < len(names):
            if time.monotonic() > deadline:
                result["error"] = "frames were not all ingested in time"
                return
            stop.wait(0.5)
        _close_all(stop)  # the operator's close --all at the end of the night
        while not stop.is_set() and not _finished(len(names)):
            if time.monotonic() > deadline:
                result["error"] = f"the night was not reduced within {timeout:.0f} s"
                return
            stop.wait(0.5)
        result["elapsed"] = time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001 -- reported by the main thread
        result["error"] = f"demo feeder failed: {exc}"
    finally:
        stop.set()


def _close_all(stop: threading.Event) -> None:
    """Queue ``close --all`` for the daemon; a database busy with its work is waited for."""
    while True:
        try:
            with db.writing():
                db.Command.create(verb="close", argument="--all")
            return
        except db.DatabaseBusy:
            if stop.wait(0.5):
                return


def demo_summary(config: Config) -> list[str]:
    """Sequences, products by kind and quarantined frames of a finished demo, as lines."""
    db.open_database(config.database.url)
    try:
        lines = ["Sequences:"]
        for s in db.Sequence.select().order_by(db.Sequence.opened):
            lines.append(f"  {s.state:9s} {s.observation_id:20s} {s.kind:9s} {s.object:12s} "
                         f"{s.frames.count():3d} frames")
        lines.append("Products:")
        by_kind: dict[str, list[str]] = {}
        for p in db.Product.select().order_by(db.Product.filename):
            by_kind.setdefault(p.kind, []).append(p.filename)
        for kind, names in sorted(by_kind.items()):
            lines.append(f"  {kind:15s} {len(names):3d}  {names[0]}"
                         + (f" ... {names[-1]}" if len(names) > 1 else ""))
        bad = db.Frame.select().where(db.Frame.state == "quarantined")
        for f in bad:
            lines.append(f"  quarantined: {Path(f.path).name}: {f.error}")
    finally:
        db.close_database()
    return lines


def run_demo(workdir: str | os.PathLike[str], *, size: int = 256, seed: int = 20170505,
             cadence: float = 0.3, timeout: float = 1800.0,
             workers: int | None = None) -> dict[str, Any]:
    """Simulate the tutorial night, feed it to the daemon live, and reduce it.

    Parameters
    ----------
    workdir : str or os.PathLike
        Demo directory: ``stage/`` (the simulated night), ``raw/`` (watched), ``reduced/``
        (products), ``cal_manager.db`` and ``gsaoi-watch.log``.  A previous demo there is
        replaced; any other non-empty directory is refused.
    size : int
        Array size of the simulated detector (2048 is full size).
    seed : int
        Simulation seed.
    cadence : float
        Seconds between frames landing in the raw directory.
    timeout : float
        Seconds allowed, after the last frame has landed, for the reductions to finish.
    workers : int, optional
        Reduction worker processes (default: the configuration default).

    Returns
    -------
    dict
        ``status`` (the daemon's exit status), ``last_frame`` and ``elapsed`` (seconds after
        the first frame landed), ``error`` if the night did not complete, ``config``.
    """
    from gsaoi_watch.daemon.service import run_service
    from gsaoi_watch.sim import simulate_night

    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise FileExistsError(f"{workdir}: exists and is not a gsaoi-watch demo directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()
    config = demo_config(workdir)
    _log_to_file(config.paths.log_file)
    if workers:
        config = config.replace("jobs", workers=int(workers))
    stage = workdir / "stage"
    log.info("demo: simulating the tutorial night (size %d) in %s", size, stage)
    simulate_night(stage, seed=seed, size=size)
    raw = Path(config.paths.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    result: dict[str, Any] = {"config": config}
    feeder = threading.Thread(target=_feed, name="demo-feeder", daemon=True,
                              args=(stage, raw, cadence, stop, result, timeout))
    # the feeder starts once the daemon's database is open (it is created by run_service)
    def start_feeder() -> None:
        _wait_for_db(config, stop)
        feeder.start()

    starter = threading.Thread(target=start_feeder, daemon=True)
    starter.start()
    result["status"] = run_service(config, stop_event=stop)
    stop.set()
    starter.join(timeout=5)
    if feeder.is_alive():
        feeder.join(timeout=5)
    return result


def _log_to_file(log_file: str) -> None:
    """Add the demo's log file (``gsaoi-watch.log`` in its directory) to the root handlers.

    Made once the work directory is ready (a previous demo's, log included, is removed
    first); an earlier demo's file handler in this process is replaced.  It records what
    the root logger's level lets through (INFO from the command line).
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gsaoi_demo", False):
            root.removeHandler(h)
            h.close()
    handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8",
                                                  errors="backslashreplace")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler._gsaoi_demo = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def _wait_for_db(config: Config, stop: threading.Event) -> None:
    path = Path(config.database.url)
    while not stop.is_set() and (db.database.obj is None or not path.exists()):
        time.sleep(0.1)

