"""Typed events: what the engine's queue carries, and the events of a sequence's life.

Producers (the watchdog handler, apscheduler jobs, finished-job callbacks, signal handlers)
put one of the frozen dataclasses below on :attr:`gsaoi_watch.daemon.engine.Engine.events`;
the engine thread alone consumes them.  :class:`SequenceEvent` carries one :class:`Event` of
the transition table (:mod:`gsaoi_watch.daemon.sequences`) to one sequence, with what the
table's actions need to know (the frame that arrived, the job that finished).

The values of :class:`Event` are the strings older versions used; they are what the log and
the tests name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from gsaoi_watch.data.descriptors import FrameInfo

__all__ = ["EngineEvent", "Event", "FileNoticed", "FrameArrived", "FrameRejected", "Heartbeat",
           "JobFinished", "OperatorCommand", "PreparedFinished", "Recover", "Rescan",
           "StreamFinished",
           "SequenceEvent", "Stop", "Tick"]


class Event(enum.StrEnum):
    """The events of a sequence's life: the columns of the transition table."""

    FIRST_FRAME = "first_frame"          # the frame that opened the sequence
    FRAME = "frame"                      # a further member frame arrived
    NEW_OBSERVATION = "new_observation"  # a later frame of another observation exists
    IDLE_TIMEOUT = "idle_timeout"        # nothing new for idle_timeout seconds
    OPERATOR_CLOSE = "operator_close"    # gsaoi-watch close SEQ / close --all
    CALIBRATION_READY = "calibration_ready"      # its flat exists (flats: the partner is in)
    CALIBRATION_MISSING = "calibration_missing"  # it does not exist yet
    PARTNER_SUBMITTED = "partner_submitted"  # the partner flat's job takes these frames too
    WAIT_EXPIRED = "wait_expired"        # flat_wait passed without a flat: quick-look
    JOB_DONE = "job_done"                # reduced with its calibration
    JOB_DONE_STALE = "job_done_stale"    # ... and a frame arrived while it ran
    JOB_DONE_QUICKLOOK = "job_done_quicklook"            # reduced without a flat
    JOB_DONE_QUICKLOOK_STALE = "job_done_quicklook_stale"  # ... and a frame arrived meanwhile
    JOB_FAILED = "job_failed"            # tries left: run again
    JOB_GAVE_UP = "job_gave_up"          # no tries left
    REOPEN = "reopen"                    # reduced, but frames arrived meanwhile: reduce again
    RECALIBRATE = "recalibrate"          # the calibration it was reduced with was retired
    INTERRUPTED = "interrupted"          # found after a restart with no job: reduce again


@dataclass(frozen=True)
class FileNoticed:
    """The watcher saw ``path`` change (``closed``: closed after writing, or renamed in)."""

    path: str
    closed: bool = False


@dataclass(frozen=True)
class FrameArrived:
    """The arrival gate released a complete GSAOI frame."""

    path: str
    info: FrameInfo


@dataclass(frozen=True)
class FrameRejected:
    """The arrival gate gave up on a file (not FITS, not GSAOI, truncated, ...)."""

    path: str
    problem: str


@dataclass(frozen=True)
class Tick:
    """Time passed: idle sequences close, flat waits expire, operator commands are read."""


@dataclass(frozen=True)
class Rescan:
    """Look for files in the raw directory that the watcher missed."""


@dataclass(frozen=True)
class Heartbeat:
    """The service's watchdog beat (handled by the service loop, not the engine)."""


@dataclass(frozen=True)
class Recover:
    """After a restart: re-run interrupted jobs, repair sequences left without a job."""


@dataclass(frozen=True)
class Stop:
    """Stop the loop (SIGTERM, SIGINT)."""


@dataclass(frozen=True)
class OperatorCommand:
    """A pending row of the ``command`` table (``gsaoi-watch close``)."""

    command_id: int


@dataclass(frozen=True)
class JobFinished:
    """A reduction job's future completed (result, exception or cancelled)."""

    job_id: int
    future: Future[Any]


@dataclass(frozen=True)
class PreparedFinished:
    """The per-frame steps done ahead on ``path`` completed."""

    path: str
    future: Future[Any]


@dataclass(frozen=True)
class StreamFinished:
    """The streaming step of a science sequence (pass-1 masks, provisional products) ended."""

    sequence_id: int
    future: Future[Any]


@dataclass(frozen=True)
class SequenceEvent:
    """One :class:`Event` for one sequence, applied through the transition table.

    Parameters
    ----------
    sequence_id : int
        The sequence's database id.
    event : Event
        The table column.
    frame : FrameArrived, optional
        The frame behind ``FIRST_FRAME`` / ``FRAME``.
    job_id : int, optional
        The job behind the ``JOB_*`` events.
    result : Mapping, optional
        What that job returned (``JOB_DONE*``): products, skipped frames, QA.
    """

    sequence_id: int
    event: Event
    frame: FrameArrived | None = None
    job_id: int | None = None
    result: Mapping[str, Any] | None = None


#: Everything the engine's queue may carry.
EngineEvent = (FileNoticed | FrameArrived | FrameRejected | Tick | Rescan | Heartbeat | Stop
               | OperatorCommand | JobFinished | PreparedFinished | StreamFinished | SequenceEvent
               | Recover)
