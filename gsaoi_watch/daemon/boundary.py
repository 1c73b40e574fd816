"""The engine's error boundary: one transaction per event, effects after commit, backoff.

:class:`Boundary` is what :meth:`gsaoi_watch.daemon.engine.Engine.handle` goes through for an
event that is not raised while handling another:

- the event is handled inside one database transaction (:func:`gsaoi_watch.calibration.db.
  writing`: ``BEGIN IMMEDIATE`` on SQLite, so the lock is taken at the start and waited for
  at most the busy timeout); events it raises are handled inside it (savepoints);
- side effects that cannot be rolled back (a job submitted, a file deleted, the log line of
  a state change) are collected with :meth:`Boundary.after_commit` and run once the
  transaction has committed; if it rolls back they are dropped;
- a database that cannot be used (locked past the busy wait, the file gone, an I/O error)
  rolls the event back and keeps it: it and every event after it wait in :attr:`pending`,
  in order, and are tried again after a backoff (1 s, doubling up to :data:`MAX_BACKOFF`).
  Nothing is lost: frames noticed meanwhile wait in the queue too; ticks and rescans,
  idempotent, are kept once;
- any other exception is the event's own: the engine's ``failed`` callback records its
  reason (the sequence FAILED, the frame quarantined) and the loop goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gsaoi_watch.calibration import db
from gsaoi_watch.logs import log_name

__all__ = ["MAX_BACKOFF", "Boundary", "first_line"]

log = logging.getLogger(__name__)

#: The longest wait between two tries of a database that cannot be used (seconds).
MAX_BACKOFF = 30.0
#: The first wait (seconds); it doubles at each failed try.
FIRST_BACKOFF = 1.0


def first_line(exc: BaseException) -> str:
    """An exception as one line: its first line of text, else its type's name."""
    text = str(exc).strip()
    return log_name(text.splitlines()[0]) if text else type(exc).__name__


class Boundary:
    """Run events in transactions; keep them while the database cannot be used.

    Parameters
    ----------
    dispatch : callable
        ``dispatch(event)``: handle one event (inside the transaction).
    failed : callable
        ``failed(event, exc)``: record that handling ``event`` raised ``exc`` (a database
        problem excepted); called in a transaction of its own.
    now : callable
        Naive UTC wall clock (for "database busy since ...").
    coalesce : tuple of types
        Event types kept at most once while waiting (idempotent ones).
    """

    def __init__(self, dispatch: Callable[[Any], None],
                 failed: Callable[[Any, BaseException], None],
                 now: Callable[[], dt.datetime], coalesce: tuple[type, ...] = ()) -> None:
        self._dispatch = dispatch
        self._failed = failed
        self._now = now
        self._coalesce = coalesce
        self._effects: list[list[Callable[[], None]]] = []
        self.pending: deque[Any] = deque()
        self.retry_at = 0.0
        self.backoff = 0.0
        self.busy_since: dt.datetime | None = None
        self.problem: str | None = None
        self.tries = 0

    # --- inside a transaction ----------------------------------------------------------------
    @property
    def inside(self) -> bool:
        """Whether an event is being handled (a transaction is open)."""
        return bool(self._effects)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current event's transaction commits (now if none is open)."""
        if self._effects:
            self._effects[-1].append(fn)
        else:
            _run(fn)

    def savepoint(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a savepoint: if it raises, its writes and effects are undone."""
        self._effects.append([])
        try:
            with db.writing():
                fn()
        except BaseException:
            self._effects.pop()
            raise
        done = self._effects.pop()
        self._effects[-1].extend(done)

    # --- the door ------------------------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """Whether events wait for the database (it was unavailable at the last try)."""
        return bool(self.pending)

    def submit(self, event: Any) -> None:
        """Handle ``event`` now, or keep it behind those already waiting for the database."""
        if self.pending:
            self._keep(event)
            return
        self._try(event)

    def retry(self, limit: int = 200) -> None:
        """Try the waiting events again once the backoff has passed (at most ``limit``)."""
        for _ in range(limit):
            if not self.pending or time.monotonic() < self.retry_at:
                return
            if not self._try(self.pending.popleft(), again=True):
                return

    def next_try_in(self) -> float | None:
        """Seconds until waiting events are tried again (None: nothing waits)."""
        return max(0.0, self.retry_at - time.monotonic()) if self.pending else None

    def status(self) -> str | None:
        """``database busy since 2017-05-05 23:40:02 UTC (3 events waiting, ...): ...``.

        "busy" for a lock another process holds, "unavailable" for any other problem; None
        while the database is usable.
        """
        if self.busy_since is None:
            return None
        what = "busy" if "locked by another" in (self.problem or "") else "unavailable"
        return (f"database {what} since {self.busy_since:%Y-%m-%d %H:%M:%S} UTC "
                f"({len(self.pending)} events waiting, {self.tries} tries): {self.problem}")

    def _keep(self, event: Any) -> None:
        if isinstance(event, self._coalesce) and any(type(e) is type(event)
                                                      for e in self.pending):
            return
        self.pending.append(event)

    def _try(self, event: Any, *, again: bool = False) -> bool:
        """Handle one event in one transaction; False if the database could not be used."""
        self._effects = [[]]
        try:
            with db.writing():
                self._dispatch(event)
        except BaseException as exc:  # the boundary: nothing but an interrupt escapes it
            self._effects = []
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: rolled back
                raise
            if db.unavailable(exc):
                self._unavailable(event, exc)
                return False
            self._record_failure(event, exc)
            return True
        effects, self._effects = self._effects[0], []
        self._available()
        for fn in effects:
            _run(fn)
        return True

    def _record_failure(self, event: Any, exc: BaseException) -> None:
        self._effects = [[]]
        try:
            with db.writing():
                self._failed(event, exc)
        except BaseException as exc2:  # recording the failure failed too
            self._effects = []
            if not isinstance(exc2, Exception):
                raise
            if db.unavailable(exc2):
                self._unavailable(event, exc2)
                return
            log.error("%r failed (%s); its failure could not be recorded: %s", event,
                      first_line(exc), first_line(exc2))
            return
        effects, self._effects = self._effects[0], []
        for fn in effects:
            _run(fn)

    def _unavailable(self, event: Any, exc: BaseException) -> None:
        self.pending.appendleft(event)
        self.tries += 1
        self.problem = first_line(exc)
        if self.busy_since is None:
            self.busy_since = self._now()
            self.backoff = FIRST_BACKOFF
        else:
            self.backoff = min(MAX_BACKOFF, self.backoff * 2)
        self.retry_at = time.monotonic() + self.backoff
        log.warning("database %s (%s): %d event(s) kept, next try in %.0f s",
                    "busy" if "locked by another" in self.problem else "unavailable",
                    self.problem, len(self.pending), self.backoff)
        _reconnect_if_needed(exc)

    def _available(self) -> None:
        if self.busy_since is None:
            return
        lasted = (self._now() - self.busy_since).total_seconds()
        log.info("database available again after %.0f s (%d tries); %d kept event(s) "
                 "follow", lasted, self.tries, len(self.pending))
        self.busy_since, self.problem, self.tries, self.backoff = None, None, 0, 0.0


def _run(fn: Callable[[], None]) -> None:
    """Run one after-commit effect; its failure is logged, never raised."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 -- committed already: log and go on
        log.error("after the commit: %s failed: %s", getattr(fn, "__qualname__", fn),
                  first_line(exc))


def _reconnect_if_needed(exc: BaseException) -> None:
    """After an error other than a lock, open the connection again at the next try."""
    if isinstance(exc, db.DatabaseUnavailable) or "locked" in str(exc):
        return  # a lock, or a file gone (a new connection would create an empty one)
    try:
        db.database.close()
    except Exception:  # noqa: BLE001 -- closing a broken connection may fail
        pass
