"""Why a job failed, and what follows: give up now, retry later, or count a try.

:func:`classify` sorts the exception a job ended with into four kinds:

- ``crash``: the worker process died (:class:`~gsaoi_watch.daemon.pool.WorkerCrashed`). Not
  the job's fault: counted in the job's ``crashes``, not its tries, and the job runs again
  until ``[jobs] max_crashes`` crashes ("worker died (signal 9) 3 times").
- ``deterministic``: a :class:`~gsaoi_watch.errors.GsaoiWatchError` (a frame without
  EXPTIME, no skies, no usable frame): the same input fails the same way, so the job is
  FAILED at once, reported once, never retried.
- ``transient``: the machine, not the data: an :class:`OSError` whose errno is one of
  :data:`TRANSIENT_ERRNOS` (disk full, quota, I/O error, out of memory or file handles, a
  read-only file system) or a :class:`MemoryError`.  Retried after a delay that doubles from
  :data:`FIRST_DELAY` to :data:`MAX_DELAY`, for as long as it takes, without using up the
  job's tries: a full disk resumes by itself once space is freed.
- ``other``: anything else, retried while the job has tries left (``[jobs] max_tries``).

The retries are not sleeps: :class:`RetrySchedule` keeps when each waiting job is due, and
the engine's tick starts the due ones.
"""

from __future__ import annotations

import datetime as dt
import enum
import errno
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from gsaoi_watch.daemon.pool import WorkerCrashed
from gsaoi_watch.errors import GsaoiWatchError

__all__ = ["FIRST_DELAY", "MAX_DELAY", "TRANSIENT_ERRNOS", "Failure", "RetrySchedule",
           "classify"]

#: errno values of a cause outside the data, that goes away (space freed, a disk back).
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN,
                              errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EROFS})

#: The first retry after a transient failure waits this long (seconds) ...
FIRST_DELAY = 10.0
#: ... and each next one twice as long, up to this.
MAX_DELAY = 600.0


class Failure(enum.Enum):
    """The kinds of job failure (see the module docstring)."""

    CRASH = "crash"
    DETERMINISTIC = "deterministic"
    TRANSIENT = "transient"
    OTHER = "other"


def classify(exc: BaseException) -> Failure:
    """The kind of a job's exception.

    Parameters
    ----------
    exc : BaseException
        What the job's future raised.

    Returns
    -------
    Failure
    """
    if isinstance(exc, WorkerCrashed | BrokenProcessPool):
        return Failure.CRASH
    if isinstance(exc, GsaoiWatchError):
        return Failure.DETERMINISTIC
    if isinstance(exc, MemoryError):
        return Failure.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return Failure.TRANSIENT
    return Failure.OTHER


@dataclass
class RetrySchedule:
    """When each job waiting after a transient failure runs again.

    The delay doubles with each consecutive transient failure of the same job, from
    ``first`` to ``cap`` seconds; :meth:`forget` (the job ended) starts it over.
    """

    first: float = FIRST_DELAY
    cap: float = MAX_DELAY
    due_at: dict[int, dt.datetime] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    adopted: bool = False  # jobs left waiting by an earlier run taken up (first tick)

    def schedule(self, job_id: int, now: dt.datetime) -> tuple[float, dt.datetime]:
        """Put a job on the schedule after one more transient failure; (delay, when)."""
        n = self.failures.get(job_id, 0)
        self.failures[job_id] = n + 1
        delay = min(self.first * 2 ** min(n, 32), self.cap)
        when = now + dt.timedelta(seconds=delay)
        self.due_at[job_id] = when
        return delay, when

    def due(self, now: dt.datetime) -> list[int]:
        """The jobs whose time has come, taken off the schedule (their count is kept)."""
        ready = sorted(j for j, when in self.due_at.items() if when <= now)
        for job_id in ready:
            del self.due_at[job_id]
        return ready

    def waiting(self, job_id: int) -> bool:
        """True if the job is on the schedule."""
        return job_id in self.due_at

    def forget(self, job_id: int) -> None:
        """The job ended (done, failed, given up): off the schedule, its count cleared."""
        self.due_at.pop(job_id, None)
        self.failures.pop(job_id, None)
