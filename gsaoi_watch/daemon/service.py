"""The daemon's lifecycle: logging, database, observer, scheduler, signals, sd_notify."""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from gsaoi_watch.calibration import daemons, db
from gsaoi_watch.config import Config
from gsaoi_watch.daemon.boundary import MAX_BACKOFF, first_line
from gsaoi_watch.daemon.engine import BUSY_WAIT, Engine
from gsaoi_watch.daemon.events import EngineEvent, Heartbeat, Rescan, Stop, Tick
from gsaoi_watch.daemon.watcher import make_observer
from gsaoi_watch.logs import log_name
from gsaoi_watch.web.server import LivePage, start_live_page

__all__ = ['run_service', 'sd_notify']

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send a datagram to systemd's NOTIFY_SOCKET (READY=1, STATUS=..., WATCHDOG=1, ...).

    Returns False (and does nothing) when not run under systemd.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # never block the engine: a listener that stops reading fills its queue, and a
            # blocking send would then hang the daemon (a lost WATCHDOG=1 is harmless)
            sock.setblocking(False)
            sock.sendto(message.encode(), addr)
        return True
    except BlockingIOError:
        log.debug("sd_notify: %s not delivered (notify socket queue full)", message)
        return False
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False


def run_service(config: Config, *, stop_event: threading.Event | None = None,
                idle_exit: float | None = None, install_signals: bool = True) -> int:
    """Run the daemon until SIGTERM/SIGINT (or ``stop_event``); return the exit status.

    Start-up: open the database, register as the daemon of its raw directory (another daemon
    alive on the same directory and database: a
    :class:`~gsaoi_watch.calibration.daemons.DaemonRunningError`), re-run interrupted jobs,
    scan the raw directory, start the observer and the scheduler, then READY=1.  Each
    heartbeat: WATCHDOG=1, the status line (STATUS=, and the daemon's row), also while the
    database is busy.  Shutdown: stop watching, abandon the
    running job (re-run after a restart), STOPPING=1, exit 0.  If the observer thread dies
    the service exits with status 1 so that systemd restarts it.
    """
    raw = Path(config.paths.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    Path(config.paths.output_dir).mkdir(parents=True, exist_ok=True)
    db.open_database(config.database.url, create=True, lock_timeout=BUSY_WAIT)
    try:
        me = _register(config, stop_event)
    except BaseException:
        db.close_database()
        raise
    engine = Engine(config)
    observer, polling = make_observer(raw, engine.events, polling=config.watch.polling,
                                      poll_interval=config.watch.poll_interval)
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 30})
    status = {"code": 0}
    beat = _Beat(me)
    page: LivePage | None = None

    scheduler.add_job(lambda: engine.events.put(Tick()), "interval",
                      seconds=config.sequences.tick_seconds, id="tick")
    scheduler.add_job(lambda: engine.events.put(Rescan()), "interval",
                      seconds=config.watch.rescan_seconds, id="rescan")
    scheduler.add_job(lambda: engine.events.put(Heartbeat()), "interval",
                      seconds=config.service.heartbeat_seconds, id="heartbeat")

    def stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        engine.events.put(Stop())

    previous = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: tracebacks
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
    try:
        log.info("gsaoi_watch starting: raw=%s output=%s database=%s (%s)", log_name(raw),
                 log_name(config.paths.output_dir),
                 log_name(db.describe_target(config.database.url)),
                 "polling" if polling else "inotify")
        page = start_live_page(config)  # a port in use: one ERROR line, no page
        beat.page_url = page.url if page is not None else None
        engine.recover()
        observer.start()
        scheduler.start()
        sd_notify("READY=1")
        sd_notify(f"STATUS={engine.summary()}")
        log.info("ready: %s", engine.summary())
        while not engine.stopping:
            if stop_event is not None and stop_event.is_set():
                break
            event: EngineEvent | None = None
            try:
                event = engine.events.get(timeout=0.2)
            except Exception:  # noqa: BLE001 -- queue.Empty
                event = None
            if isinstance(event, Heartbeat):
                if not observer.is_alive():
                    log.error("the file observer died: exiting so that systemd restarts us")
                    status["code"] = 1
                    break
                sd_notify("WATCHDOG=1")
                beat.send(engine)
                continue
            if event is not None:
                engine.handle(event)
            engine.poll()
            if idle_exit is not None and not (engine.futures or engine.preparing
                                              or engine.streaming or engine.gate.pending
                                              or engine.retries.due_at
                                              or engine.boundary.waiting):
                idle_exit -= 0.2
                if idle_exit <= 0:
                    break
    finally:
        sd_notify("STOPPING=1")
        if engine.boundary.waiting:
            log.warning("stopping with %d event(s) still waiting for the database: frames "
                        "and jobs they concern are taken up again at the next start",
                        len(engine.boundary.pending))
        log.info("stopping: %s", engine.summary())
        if page is not None:
            page.stop()
        scheduler.shutdown(wait=False)
        observer.stop()
        observer.join(timeout=5)
        engine.shutdown()
        try:
            daemons.unregister_daemon(beat.daemon_id)
        except Exception as exc:  # noqa: BLE001 -- a busy database must not stop the stop
            log.warning("daemon row not removed: %s", first_line(exc))
        db.close_database()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status["code"]



def _register(config: Config, stop_event: threading.Event | None) -> int:
    """Register as the database's daemon; a busy database is waited for, with backoff.

    Raises
    ------
    DaemonRunningError
        Another daemon is alive on this database.
    """
    backoff = 1.0
    while True:
        try:
            return daemons.register_daemon(config.service.heartbeat_seconds,
                                           owner=daemons.owner_of(config.paths.raw_dir))
        except Exception as exc:
            if not db.unavailable(exc) or (stop_event is not None and stop_event.is_set()):
                raise
            log.warning("cannot register as the database's daemon (%s): next try in %.0f s",
                        first_line(exc), backoff)
            time.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)


class _Beat:
    """The heartbeat's status line: STATUS= for systemd and the daemon's database row.

    A database that cannot be written is reported (once per problem) and never stops the
    heartbeat; while the engine waits for the database, the row is tried at most every
    :data:`BUSY_BEAT` seconds (each try may wait the busy timeout).
    """

    BUSY_BEAT = 10.0

    def __init__(self, daemon_id: int) -> None:
        self.daemon_id = daemon_id
        self.last_try = 0.0
        self.problem: str | None = None
        self.page_url: str | None = None  # the live page, named in the row's note

    def send(self, engine: Engine) -> None:
        note = engine.summary()
        sd_notify(f"STATUS={note}")
        if self.page_url:
            note = f"{note}; live page at {self.page_url}"
        if engine.boundary.waiting and time.monotonic() - self.last_try < self.BUSY_BEAT:
            return
        self.last_try = time.monotonic()
        try:
            if not daemons.heartbeat(self.daemon_id, note=note):
                log.warning("heartbeat: this daemon's row is gone; registering again")
                self.daemon_id = daemons.register_daemon(
                    engine.config.service.heartbeat_seconds, owner=engine.owner)
        except Exception as exc:  # noqa: BLE001 -- the heartbeat goes on whatever happens
            text = first_line(exc)
            if text != self.problem:
                log.warning("heartbeat not recorded in the database: %s", text)
            self.problem = text
            return
        self.problem = None
