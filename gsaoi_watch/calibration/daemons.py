"""Which daemon runs on a database: its row (pid, host, start, heartbeat) and its liveness.

The daemon calls :func:`register_daemon` once the database is open, :func:`heartbeat` at
every heartbeat and :func:`unregister_daemon` when it stops cleanly.  ``gsaoi-watch status``
and ``close`` call :func:`daemon_status`: a daemon is running if its last heartbeat is
recent (less than :data:`MISSED_HEARTBEATS` heartbeat intervals ago) and, when it runs on
this host, its process is alive.  A daemon killed with ``kill -9`` leaves its row behind;
it is reported as not running (and its row replaced when a daemon registers again).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, replace

from gsaoi_watch.calibration.db import Daemon, _now, claim, writing
from gsaoi_watch.errors import GsaoiWatchError

__all__ = ["MISSED_HEARTBEATS", "DaemonRunningError", "DaemonStatus", "daemon_status",
           "heartbeat", "register_daemon", "unregister_daemon"]

#: A daemon that missed this many heartbeats in a row is not running.
MISSED_HEARTBEATS = 3


class DaemonRunningError(GsaoiWatchError):
    """Another daemon is already running on this database."""


@dataclass(frozen=True)
class DaemonStatus:
    """What :func:`daemon_status` found.

    Attributes
    ----------
    running : bool
        A daemon is alive on this database.
    reason : str
        Why it counts as running or not, for an operator.
    pid, host, started, heartbeat, heartbeat_seconds, note
        The daemon's row (the running one, else the last one seen), or None without a row.
    age : float or None
        Seconds since its last heartbeat.
    """

    running: bool
    reason: str
    pid: int | None = None
    host: str | None = None
    started: dt.datetime | None = None
    heartbeat: dt.datetime | None = None
    heartbeat_seconds: float | None = None
    note: str | None = None
    age: float | None = None


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another account
        return True
    except OSError:
        return False
    return True


def _judge(row: Daemon, now: dt.datetime) -> DaemonStatus:
    age = max(0.0, (now - row.heartbeat).total_seconds())
    limit = MISSED_HEARTBEATS * row.heartbeat_seconds
    seen = DaemonStatus(False, "", pid=row.pid, host=row.host, started=row.started,
                        heartbeat=row.heartbeat, heartbeat_seconds=row.heartbeat_seconds,
                        note=row.note, age=age)
    if age >= limit:
        return replace(seen, reason=f"pid {row.pid} on {row.host}: last heartbeat {age:.0f} s "
                                    f"ago, {MISSED_HEARTBEATS} heartbeats "
                                    f"({row.heartbeat_seconds:g} s) missed")
    if row.host == _host() and not _pid_alive(row.pid):
        return replace(seen, reason=f"pid {row.pid} on {row.host} is no longer running "
                                    f"(last heartbeat {age:.0f} s ago)")
    return replace(seen, running=True,
                   reason=f"pid {row.pid} on {row.host}, last heartbeat {age:.0f} s ago")


def daemon_status(*, now: dt.datetime | None = None) -> DaemonStatus:
    """Whether a daemon is running on the open database, and which.

    Parameters
    ----------
    now : datetime, optional
        Naive UTC "now" (tests); default the clock.

    Returns
    -------
    DaemonStatus
        The running daemon if there is one, else the one seen last (``running`` False),
        else ``running`` False with the reason that none has registered.
    """
    now = now or _now()
    judged = [_judge(row, now) for row in Daemon.select().order_by(Daemon.heartbeat.desc())]
    for status in judged:
        if status.running:
            return status
    if judged:
        return judged[0]
    return DaemonStatus(False, "no daemon has registered on this database")


def register_daemon(heartbeat_seconds: float, *, pid: int | None = None,
                    host: str | None = None) -> int:
    """Record this process as the daemon of the open database; return its row id.

    Rows of daemons that are not running (killed, crashed) are removed.

    Raises
    ------
    DaemonRunningError
        If another daemon is running on this database (two daemons would reduce every
        frame twice).
    """
    pid = os.getpid() if pid is None else pid
    host = host or _host()
    now = _now()
    with writing():
        claim("daemon")  # two daemons starting at once: the second sees the first
        for row in Daemon.select():
            status = _judge(row, now)
            if status.running and (row.pid, row.host) != (pid, host):
                raise DaemonRunningError(f"another gsaoi-watch daemon is running on this "
                                         f"database ({status.reason})")
            row.delete_instance()
        row = Daemon.create(pid=pid, host=host, started=now, heartbeat=now,
                            heartbeat_seconds=float(heartbeat_seconds))
    return int(row.id)


def heartbeat(daemon_id: int, *, note: str | None = None) -> bool:
    """Record that the daemon ``daemon_id`` is alive (and its status line); False if unknown.

    A row removed meanwhile (another daemon took over after missed heartbeats) is not
    re-created: the caller learns it is no longer the registered daemon.
    """
    values: dict[str, object] = {"heartbeat": _now()}
    if note is not None:
        values["note"] = note[:250]
    with writing():
        return bool(Daemon.update(**values).where(Daemon.id == daemon_id).execute())


def unregister_daemon(daemon_id: int) -> None:
    """Remove the daemon's row at a clean stop."""
    with writing():
        Daemon.delete().where(Daemon.id == daemon_id).execute()
