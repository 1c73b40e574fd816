"""Sequences of frames and their state machine: one explicit transition table, pure advance().

A sequence is the frames of one observation with the same kind, filter, exposure time,
read mode and ROI (membership from headers, never arrival order).  Its life:

``OPEN`` (frames arriving) -> ``COMPLETE`` (another observation started, idle too long, or an
operator closed it) -> ``WAITING`` (for its calibration) or straight to ``REDUCING`` ->
``DONE`` / ``QUICKLOOK`` (reduced without a flat, redone when the flat arrives) / ``FAILED``.
A frame arriving after completion re-opens the sequence (``REOPENED``) and it is reduced again.

:data:`TRANSITIONS` is the whole machine: every change of a sequence, and everything done
because of one (a job submitted, a stack after a science reduction, the partner flat taken
along, dependents released, superseded products retired and what used them re-reduced), is a
row ``(state, event) -> (next state, actions)``.  :func:`advance` is pure; the engine performs
the named actions with the executors of :mod:`gsaoi_watch.daemon.actions`.  An unknown pair
is a logged error.  The states and actions are string enums whose values are what the
database and the log have always held.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gsaoi_watch.daemon.events import Event
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.logs import log_name

if TYPE_CHECKING:
    from gsaoi_watch.calibration.db import Sequence

__all__ = ["ACTIONS", "EVENTS", "FRAME_REASONS", "REASONS", "STATES", "TRANSITIONS", "Action",
           "Event", "SequenceKey", "State", "Transition", "advance", "frame_kind", "label",
           "reason", "sequence_key"]

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    """Where a sequence is (the ``sequence.state`` column)."""

    OPEN = "OPEN"
    REOPENED = "REOPENED"
    COMPLETE = "COMPLETE"
    WAITING = "WAITING"
    REDUCING = "REDUCING"
    DONE = "DONE"
    QUICKLOOK = "QUICKLOOK"
    FAILED = "FAILED"


class Action(enum.StrEnum):
    """What a transition does besides changing the state (one executor each)."""

    ADD_FRAME = "add_frame"              # record the new member; its per-frame steps start
    CHECK_CALIBRATION = "check_calibration"  # emits calibration_ready / calibration_missing
    START_WAIT = "start_wait"            # the flat_wait clock starts
    CANCEL_WAIT = "cancel_wait"
    SUBMIT = "submit"                    # the reduction job (a flat takes its partner along)
    SUBMIT_QUICKLOOK = "submit_quicklook"  # without a flat, flagged quick-look
    RESUBMIT = "resubmit"                # run the failed job again (bounded tries)
    RETIRE_SUPERSEDED = "retire_superseded"  # earlier products not remade go; users redone
    RELEASE_DEPENDENTS = "release_dependents"  # sequences waiting for this calibration
    SUBMIT_STACK = "submit_stack"        # science: distortion-correct, align and stack
    MARK_STALE = "mark_stale"            # a frame arrived while reducing: reduce again after
    REOPEN = "reopen"                    # clear the stale mark and re-open the sequence
    RECORD_FAILURE = "record_failure"


STATES = tuple(State)
EVENTS = tuple(Event)
ACTIONS = tuple(Action)


@dataclass(frozen=True)
class Transition:
    """What happens on an event in a state."""

    next_state: State
    actions: tuple[Action, ...]


def _t(state: State, *actions: Action) -> Transition:
    return Transition(state, tuple(actions))


S, E, A = State, Event, Action
_CLOSING = (E.NEW_OBSERVATION, E.IDLE_TIMEOUT, E.OPERATOR_CLOSE)

#: The whole state machine: (state, event) -> Transition.
TRANSITIONS: dict[tuple[str, str], Transition] = {
    (S.OPEN, E.FIRST_FRAME): _t(S.OPEN, A.ADD_FRAME),
    (S.OPEN, E.FRAME): _t(S.OPEN, A.ADD_FRAME),
    **{(S.OPEN, e): _t(S.COMPLETE, A.CHECK_CALIBRATION) for e in _CLOSING},
    (S.REOPENED, E.FRAME): _t(S.REOPENED, A.ADD_FRAME),
    **{(S.REOPENED, e): _t(S.COMPLETE, A.CHECK_CALIBRATION) for e in _CLOSING},
    (S.COMPLETE, E.CALIBRATION_READY): _t(S.REDUCING, A.SUBMIT),
    (S.COMPLETE, E.CALIBRATION_MISSING): _t(S.WAITING, A.START_WAIT),
    (S.COMPLETE, E.PARTNER_SUBMITTED): _t(S.REDUCING),
    (S.COMPLETE, E.FRAME): _t(S.REOPENED, A.ADD_FRAME),
    (S.COMPLETE, E.INTERRUPTED): _t(S.COMPLETE, A.CHECK_CALIBRATION),
    (S.WAITING, E.CALIBRATION_READY): _t(S.REDUCING, A.CANCEL_WAIT, A.SUBMIT),
    (S.WAITING, E.PARTNER_SUBMITTED): _t(S.REDUCING, A.CANCEL_WAIT),
    (S.WAITING, E.WAIT_EXPIRED): _t(S.REDUCING, A.SUBMIT_QUICKLOOK),
    (S.WAITING, E.FRAME): _t(S.REOPENED, A.ADD_FRAME, A.CANCEL_WAIT),
    (S.WAITING, E.OPERATOR_CLOSE): _t(S.WAITING),
    (S.REDUCING, E.FRAME): _t(S.REDUCING, A.ADD_FRAME, A.MARK_STALE),
    (S.REDUCING, E.INTERRUPTED): _t(S.REDUCING, A.SUBMIT),
    (S.REDUCING, E.JOB_DONE): _t(S.DONE, A.RETIRE_SUPERSEDED, A.RELEASE_DEPENDENTS,
                                 A.SUBMIT_STACK),
    (S.REDUCING, E.JOB_DONE_STALE): _t(S.DONE, A.RETIRE_SUPERSEDED, A.RELEASE_DEPENDENTS,
                                       A.REOPEN),
    (S.REDUCING, E.JOB_DONE_QUICKLOOK): _t(S.QUICKLOOK, A.RETIRE_SUPERSEDED, A.SUBMIT_STACK),
    (S.REDUCING, E.JOB_DONE_QUICKLOOK_STALE): _t(S.QUICKLOOK, A.RETIRE_SUPERSEDED, A.REOPEN),
    (S.REDUCING, E.JOB_FAILED): _t(S.REDUCING, A.RESUBMIT),
    (S.REDUCING, E.JOB_GAVE_UP): _t(S.FAILED, A.RECORD_FAILURE),
    (S.DONE, E.FRAME): _t(S.REOPENED, A.ADD_FRAME),
    (S.DONE, E.REOPEN): _t(S.REOPENED),
    (S.DONE, E.OPERATOR_CLOSE): _t(S.DONE),
    (S.DONE, E.RECALIBRATE): _t(S.REDUCING, A.SUBMIT),
    (S.DONE, E.PARTNER_SUBMITTED): _t(S.REDUCING),
    (S.QUICKLOOK, E.CALIBRATION_READY): _t(S.REDUCING, A.SUBMIT),
    (S.QUICKLOOK, E.FRAME): _t(S.REOPENED, A.ADD_FRAME),
    (S.QUICKLOOK, E.REOPEN): _t(S.REOPENED),
    (S.QUICKLOOK, E.OPERATOR_CLOSE): _t(S.QUICKLOOK),
    (S.QUICKLOOK, E.RECALIBRATE): _t(S.REDUCING, A.SUBMIT),
    (S.FAILED, E.FRAME): _t(S.REOPENED, A.ADD_FRAME),
    (S.FAILED, E.OPERATOR_CLOSE): _t(S.COMPLETE, A.CHECK_CALIBRATION),
}

#: The reason recorded (``sequence.reason``) and logged for a transition on each event;
#: None leaves the column empty (a new sequence).  A frame's reason depends on the state it
#: arrives in: see :data:`FRAME_REASONS`.
REASONS: dict[Event, str | None] = {
    E.FIRST_FRAME: None, E.FRAME: "frame arrived", E.REOPEN: "frames arrived while reducing",
    E.NEW_OBSERVATION: "new observation", E.IDLE_TIMEOUT: "idle",
    E.OPERATOR_CLOSE: "closed by operator", E.CALIBRATION_READY: "calibration ready",
    E.PARTNER_SUBMITTED: "calibration ready", E.CALIBRATION_MISSING: "waiting for a flat",
    E.WAIT_EXPIRED: "flat wait expired", E.JOB_DONE: "reduced", E.JOB_DONE_STALE: "reduced",
    E.JOB_DONE_QUICKLOOK: "quick-look reduced", E.JOB_DONE_QUICKLOOK_STALE: "quick-look reduced",
    E.JOB_FAILED: "job failed, retrying", E.JOB_GAVE_UP: "job failed",
    E.RECALIBRATE: "recalibrate", E.INTERRUPTED: "interrupted by a restart",
}

#: The reason of a frame arriving, by the state it arrives in (else :data:`REASONS`).
FRAME_REASONS: dict[State, str] = {
    S.OPEN: "frame arrived", S.REOPENED: "late frame arrived",
    S.COMPLETE: "late frame after completion", S.WAITING: "late frame while waiting",
    S.REDUCING: "frame arrived while reducing", S.DONE: "late frame after reduction",
    S.QUICKLOOK: "late frame after quick-look", S.FAILED: "frame arrived after failure",
}


def reason(kind: str, event: Event, state: str | None = None) -> str | None:
    """The reason of a transition on ``event`` in ``state`` for a sequence of ``kind``."""
    if event == E.CALIBRATION_MISSING and kind in ("flat_on", "flat_off"):
        return "waiting for the lamp-{} frames".format("off" if kind == "flat_on" else "on")
    if event == E.FRAME and state in FRAME_REASONS:
        return FRAME_REASONS[State(state)]
    if event == E.PARTNER_SUBMITTED and state == S.DONE:
        return "re-made with the partner flat's new frames"
    return REASONS.get(event, str(event))


def advance(state: str, event: str) -> Transition | None:
    """Return the transition for ``event`` in ``state``, or None (logged) if there is none.

    Pure apart from the log line for an unknown pair; the caller keeps the state.
    """
    transition = TRANSITIONS.get((state, event))
    if transition is None:
        log.error("no transition for event %r in state %r", str(event), str(state))
    return transition


@dataclass(frozen=True)
class SequenceKey:
    """Header attributes that make frames members of the same sequence."""

    observation_id: str
    kind: str
    filter_name: str
    exposure_time: float
    read_mode: str
    roi: bool

    def __str__(self) -> str:
        roi = " ROI" if self.roi else ""
        return (f"{self.observation_id} {self.kind} {self.filter_name} "
                f"{self.exposure_time:g}s {self.read_mode}{roi}")

    def as_text(self) -> str:
        """A stable, unique text form (the database key)."""
        return "|".join(str(v) for v in (self.observation_id, self.kind, self.filter_name,
                                         self.exposure_time, self.read_mode, int(self.roi)))


def frame_kind(info: FrameInfo) -> str:
    """What a frame is for: flat_on, flat_off, flat, standard, science, bpm, or ignored kinds.

    Acquisitions, darks and anything else return 'ignored' (recorded, not reduced).
    """
    tags = info.tags
    if "BPM" in tags:
        return "bpm"
    if "PROCESSED" in tags or "PREPARED" in tags:
        return "product"
    if "ACQUISITION" in tags or "DARK" in tags:
        return "ignored"
    if "FLAT" in tags:
        if "LAMPON" in tags:
            return "flat_on"
        if "LAMPOFF" in tags:
            return "flat_off"
        return "flat"
    cls = info.observation_class()
    if cls == "partnerCal":
        return "standard"
    if cls == "science":
        return "science"
    return "ignored"


def sequence_key(info: FrameInfo) -> SequenceKey:
    """The sequence a raw frame belongs to, from its headers alone."""
    return SequenceKey(
        observation_id=str(info.observation_id()),
        kind=frame_kind(info),
        filter_name=str(info.filter_name()),
        exposure_time=round(float(info.exposure_time() or 0.0), 3),
        read_mode=f"{info.read_mode()}/{info.lnrs()}",
        roi=bool(info.is_roi()),
    )


def label(seq: Sequence) -> str:
    """How the log names a sequence: ``GS-2017A-Q-29-13 science NGC5128 Kshort 60s``."""
    return log_name(f"{seq.observation_id} {seq.kind} {seq.object} "
                    f"{(seq.filter_name or '').split('_')[0]} {seq.exposure_time:g}s")
