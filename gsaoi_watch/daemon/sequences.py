"""Sequences of frames and their state machine: one explicit transition table, pure advance().

A sequence is the frames of one observation with the same kind, filter, exposure time,
read mode and ROI (membership from headers, never arrival order).  Its life:

``OPEN`` (frames arriving) -> ``COMPLETE`` (another observation started, idle too long, or an
operator closed it) -> ``WAITING`` (for its calibration) or straight to ``REDUCING`` ->
``DONE`` / ``QUICKLOOK`` (reduced without a flat, redone when the flat arrives) / ``FAILED``.
A frame arriving after completion re-opens the sequence (``REOPENED``) and it is reduced again.

:func:`advance` is pure: (state, event) -> (new state, actions).  The engine performs the
actions (database update, log line, job submission); an unknown pair is a logged error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["ACTIONS", "EVENTS", "STATES", "TRANSITIONS", "SequenceKey", "Transition",
           "advance", "frame_kind", "sequence_key"]

log = logging.getLogger(__name__)

STATES = ("OPEN", "REOPENED", "COMPLETE", "WAITING", "REDUCING", "DONE", "QUICKLOOK", "FAILED")

EVENTS = (
    "frame",            # a new member frame arrived
    "new_observation",  # a frame of another observation arrived
    "idle_timeout",     # nothing new for idle_timeout seconds
    "operator_close",   # gsaoi-watch close SEQ / close --all
    "calibration_ready",    # what the reduction needs exists (flat; for flats: the partner)
    "calibration_missing",  # it does not exist yet
    "wait_expired",     # flat_wait seconds passed without a flat: reduce for quick-look
    "job_done",
    "job_done_quicklook",
    "job_failed",       # tries left: run again
    "job_gave_up",      # no tries left
    "recalibrate",      # the calibration it was reduced with was re-made: reduce again
)

ACTIONS = (
    "add_frame",        # record membership; run the per-frame steps
    "check_calibration",  # look for the calibration; emits calibration_ready/_missing
    "start_wait",       # schedule wait_expired after flat_wait
    "cancel_wait",
    "submit",           # submit the reduction job
    "submit_quicklook",  # submit without a flat, flagged quick-look
    "resubmit",         # run the job again (bounded tries)
    "register_products",
    "release_dependents",  # sequences WAITING for this product's calibration
    "record_failure",
    "mark_stale",       # a late frame arrived while reducing: reduce again afterwards
)


@dataclass(frozen=True)
class Transition:
    """What happens on ``event`` in ``state``."""

    next_state: str
    actions: tuple


def _t(state, *actions):
    return Transition(state, tuple(actions))


_CLOSING = ("new_observation", "idle_timeout", "operator_close")

#: The whole state machine: (state, event) -> Transition.
TRANSITIONS = {
    ("OPEN", "frame"): _t("OPEN", "add_frame"),
    **{("OPEN", e): _t("COMPLETE", "check_calibration") for e in _CLOSING},
    ("REOPENED", "frame"): _t("REOPENED", "add_frame"),
    **{("REOPENED", e): _t("COMPLETE", "check_calibration") for e in _CLOSING},
    ("COMPLETE", "calibration_ready"): _t("REDUCING", "submit"),
    ("COMPLETE", "calibration_missing"): _t("WAITING", "start_wait"),
    ("COMPLETE", "frame"): _t("REOPENED", "add_frame"),
    ("WAITING", "calibration_ready"): _t("REDUCING", "cancel_wait", "submit"),
    ("WAITING", "wait_expired"): _t("REDUCING", "submit_quicklook"),
    ("WAITING", "frame"): _t("REOPENED", "add_frame", "cancel_wait"),
    ("WAITING", "operator_close"): _t("WAITING"),
    ("REDUCING", "frame"): _t("REDUCING", "add_frame", "mark_stale"),
    ("REDUCING", "job_done"): _t("DONE", "register_products", "release_dependents"),
    ("REDUCING", "job_done_quicklook"): _t("QUICKLOOK", "register_products"),
    ("REDUCING", "job_failed"): _t("REDUCING", "resubmit"),
    ("REDUCING", "job_gave_up"): _t("FAILED", "record_failure"),
    ("DONE", "frame"): _t("REOPENED", "add_frame"),
    ("DONE", "operator_close"): _t("DONE"),
    ("DONE", "recalibrate"): _t("REDUCING", "submit"),
    ("QUICKLOOK", "calibration_ready"): _t("REDUCING", "submit"),
    ("QUICKLOOK", "frame"): _t("REOPENED", "add_frame"),
    ("QUICKLOOK", "operator_close"): _t("QUICKLOOK"),
    ("QUICKLOOK", "recalibrate"): _t("REDUCING", "submit"),
    ("FAILED", "frame"): _t("REOPENED", "add_frame"),
    ("FAILED", "operator_close"): _t("COMPLETE", "check_calibration"),
}


def advance(state: str, event: str) -> Transition | None:
    """Return the transition for ``event`` in ``state``, or None (logged) if there is none.

    Pure apart from the log line for an unknown pair; the caller keeps the state.
    """
    transition = TRANSITIONS.get((state, event))
    if transition is None:
        log.error("no transition for event %r in state %r", event, state)
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

    def __str__(self):
        roi = " ROI" if self.roi else ""
        return (f"{self.observation_id} {self.kind} {self.filter_name} "
                f"{self.exposure_time:g}s {self.read_mode}{roi}")

    def as_text(self) -> str:
        """A stable, unique text form (the database key)."""
        return "|".join(str(v) for v in (self.observation_id, self.kind, self.filter_name,
                                         self.exposure_time, self.read_mode, int(self.roi)))


def frame_kind(info) -> str:
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


def sequence_key(info) -> SequenceKey:
    """The sequence a raw frame belongs to, from its headers alone."""
    return SequenceKey(
        observation_id=str(info.observation_id()),
        kind=frame_kind(info),
        filter_name=str(info.filter_name()),
        exposure_time=round(float(info.exposure_time() or 0.0), 3),
        read_mode=f"{info.read_mode()}/{info.lnrs()}",
        roi=bool(info.is_roi()),
    )
