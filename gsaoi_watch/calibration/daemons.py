"""Which daemons run on a database: their rows (owner, pid, host, start, heartbeat), liveness.

A daemon calls :func:`register_daemon` once the database is open, :func:`heartbeat` at
every heartbeat and :func:`unregister_daemon` when it stops cleanly.  ``gsaoi-watch status``
and ``close`` call :func:`running_daemons` / :func:`daemon_status`: a daemon is running if
its last heartbeat is recent (less than :data:`MISSED_HEARTBEATS` heartbeat intervals ago)
and, when it runs on this host, its process is alive.  A daemon killed with ``kill -9``
leaves its row behind; it is reported as not running (and its row replaced when a daemon
of the same owner registers again).

Several engines share one database, each with its own **owner** (:func:`owner_of`: the
host and the raw directory a daemon watches; :data:`REPROCESS` for an archive
re-reduction): the sequences, jobs and operator commands it writes carry that name, and it
acts on those alone, while calibrations are shared by all.  One engine per owner: a second
daemon on the same raw directory is refused, one on another directory is not.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gsaoi_watch.calibration.db import Daemon, _now, claim, writing
from gsaoi_watch.errors import GsaoiWatchError

__all__ = ["MISSED_HEARTBEATS", "REPROCESS", "DaemonRunningError", "DaemonStatus",
           "daemon_status", "describe_owner", "heartbeat", "owner_of", "owner_path", "pid_alive",
           "register_daemon", "running_daemons", "unregister_daemon"]

#: A daemon that missed this many heartbeats in a row is not running.
MISSED_HEARTBEATS = 3

#: The owner of an archive re-reduction (``gsaoi-watch reprocess``): one at a time per
#: database, resumed by the next one.
REPROCESS = "reprocess"


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
    pid, host, started, heartbeat, heartbeat_seconds, note, owner
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
    owner: str | None = None


def _host() -> str:
    return socket.gethostname()


def owner_of(raw_dir: str | os.PathLike[str]) -> str:
    """The owner name of a daemon watching ``raw_dir`` on this host: ``host:/real/path``."""
    return f"{_host()}:{Path(raw_dir).resolve()}"


def owner_path(owner: str) -> tuple[str, Path] | None:
    """The host and raw directory of a daemon's owner name; None for any other owner."""
    host, sep, path = owner.partition(":")
    if not sep or not path.startswith("/"):
        return None
    return host, Path(path)


def describe_owner(owner: str | None) -> str:
    """An owner for an operator: ``raw directory /x on host h``, ``a reprocess``, ..."""
    if not owner:
        return "the whole database"
    if owner == REPROCESS:
        return "an archive re-reduction (reprocess)"
    where = owner_path(owner)
    return f"raw directory {where[1]} on {where[0]}" if where else owner


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one of another account counts)."""
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
                        note=row.note, age=age, owner=row.owner)
    if age >= limit:
        return replace(seen, reason=f"pid {row.pid} on {row.host}: last heartbeat {age:.0f} s "
                                    f"ago, {MISSED_HEARTBEATS} heartbeats "
                                    f"({row.heartbeat_seconds:g} s) missed")
    if row.host == _host() and not pid_alive(row.pid):
        return replace(seen, reason=f"pid {row.pid} on {row.host} is no longer running "
                                    f"(last heartbeat {age:.0f} s ago)")
    return replace(seen, running=True,
                   reason=f"pid {row.pid} on {row.host}, last heartbeat {age:.0f} s ago")


def running_daemons(*, now: dt.datetime | None = None) -> list[DaemonStatus]:
    """Every daemon (and reprocess) running on the open database, oldest first."""
    now = now or _now()
    judged = [_judge(row, now) for row in Daemon.select().order_by(Daemon.started, Daemon.id)]
    return [status for status in judged if status.running]


def daemon_status(*, owner: str | None = None, now: dt.datetime | None = None) -> DaemonStatus:
    """Whether a daemon is running on the open database (of ``owner``, if given), and which.

    Parameters
    ----------
    owner : str, optional
        Only the daemon of this owner (:func:`owner_of`); default any.
    now : datetime, optional
        Naive UTC "now" (tests); default the clock.

    Returns
    -------
    DaemonStatus
        The running daemon if there is one, else the one seen last (``running`` False),
        else ``running`` False with the reason that none has registered.
    """
    now = now or _now()
    rows = Daemon.select().order_by(Daemon.heartbeat.desc())
    if owner is not None:
        rows = rows.where(Daemon.owner == owner)
    judged = [_judge(row, now) for row in rows]
    for status in judged:
        if status.running:
            return status
    if judged:
        return judged[0]
    whose = "" if owner is None else f" for {describe_owner(owner)}"
    return DaemonStatus(False, f"no daemon has registered on this database{whose}")


def register_daemon(heartbeat_seconds: float, *, owner: str = "", pid: int | None = None,
                    host: str | None = None,
                    refuse: Callable[[str], bool] | None = None) -> int:
    """Record this process as a daemon of the open database; return its row id.

    Parameters
    ----------
    heartbeat_seconds : float
        The interval of its heartbeats (:func:`heartbeat`).
    owner : str
        What it reduces (:func:`owner_of`, :data:`REPROCESS`); ``""`` (an engine of an
        older schema) claims the whole database.
    pid, host : optional
        Default this process on this host.
    refuse : callable, optional
        ``refuse(other_owner)``: whether a running engine of another owner is in the way
        too (a reprocess refuses daemons that watch a directory it re-reduces).

    Raises
    ------
    DaemonRunningError
        If a daemon of the same owner (or one ``refuse`` names) is running: two engines on
        the same raw directory would reduce every frame twice.  Rows of daemons of this
        owner that are not running (killed, crashed) are removed.
    """
    pid = os.getpid() if pid is None else pid
    host = host or _host()
    now = _now()
    with writing():
        claim("daemon")  # two daemons starting at once: the second sees the first
        for row in Daemon.select():
            status = _judge(row, now)
            if (row.pid, row.host) == (pid, host) or (not status.running
                                                      and row.owner in (owner, "")):
                row.delete_instance()
            elif status.running and (row.owner == owner or not row.owner or not owner
                                     or (refuse is not None and refuse(row.owner))):
                what = "reprocess" if row.owner == REPROCESS else "daemon"
                raise DaemonRunningError(f"another gsaoi-watch {what} is running on this "
                                         f"database for {describe_owner(row.owner)} "
                                         f"({status.reason})")
        row = Daemon.create(pid=pid, host=host, started=now, heartbeat=now,
                            heartbeat_seconds=float(heartbeat_seconds), owner=owner)
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
