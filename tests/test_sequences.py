"""The sequence state machine: every row of the transition table, keys from real headers."""

import logging

import pytest
from conftest import write_fits_from_dump

from gsaoi_watch.daemon.sequences import (
    ACTIONS,
    EVENTS,
    STATES,
    TRANSITIONS,
    Event,
    State,
    advance,
    frame_kind,
    reason,
    sequence_key,
)
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.sim import simulate_night


@pytest.mark.parametrize("state, event", sorted(TRANSITIONS))
def test_every_row_is_consistent(state, event):
    t = advance(state, event)
    assert t is TRANSITIONS[(state, event)]
    assert state in STATES and event in EVENTS
    assert t.next_state in STATES
    assert set(t.actions) <= set(ACTIONS)


def test_unknown_pair_is_a_logged_error(caplog):
    with caplog.at_level(logging.ERROR):
        assert advance("DONE", "wait_expired") is None
    assert "no transition" in caplog.text


def test_states_and_events_keep_the_strings_of_existing_databases_and_logs():
    assert [s.value for s in State] == ["OPEN", "REOPENED", "COMPLETE", "WAITING", "REDUCING",
                                        "DONE", "QUICKLOOK", "FAILED"]
    assert str(State.DONE) == "DONE" and f"{State.DONE}" == "DONE"
    logged = {"new_observation": "new observation", "idle_timeout": "idle",
              "operator_close": "closed by operator", "calibration_ready": "calibration ready",
              "calibration_missing": "waiting for a flat", "wait_expired": "flat wait expired",
              "job_done": "reduced", "job_done_quicklook": "quick-look reduced",
              "job_failed": "job failed, retrying", "job_gave_up": "job failed",
              "recalibrate": "recalibrate"}
    for event, text in logged.items():
        assert reason("science", Event(event)) == text
    assert reason("flat_on", Event.CALIBRATION_MISSING) == "waiting for the lamp-off frames"
    assert reason("flat_off", Event.CALIBRATION_MISSING) == "waiting for the lamp-on frames"
    # a job that ends while frames arrived: reduced, then re-opened for those frames
    assert reason("science", Event.JOB_DONE_STALE) == "reduced"
    assert reason("science", Event.REOPEN) == "frames arrived while reducing"


def test_a_frame_has_the_reason_of_the_state_it_arrives_in():
    said = {state: reason("science", Event.FRAME, state) for state in State}
    assert said[State.OPEN] == "frame arrived"
    assert said[State.DONE] == "late frame after reduction"
    assert said[State.WAITING] == "late frame while waiting"
    assert said[State.REDUCING] == "frame arrived while reducing"
    assert len(set(said.values())) == len(State)  # every state its own words


def test_every_state_is_reachable_and_can_end():
    reachable, todo = {"OPEN"}, ["OPEN"]
    while todo:
        s = todo.pop()
        for (a, _), t in TRANSITIONS.items():
            if a == s and t.next_state not in reachable:
                reachable.add(t.next_state)
                todo.append(t.next_state)
    assert reachable == set(STATES)
    for s in STATES:  # every state accepts a late frame or moves on
        assert any(a == s for a, _ in TRANSITIONS)


def walk(state, events):
    actions = []
    for e in events:
        t = advance(state, e)
        state = t.next_state
        actions += t.actions
    return state, actions


def test_a_science_night_without_then_with_a_flat():
    state, actions = walk("OPEN", ["frame"] * 16 + ["new_observation", "calibration_missing",
                                                    "wait_expired", "job_done_quicklook",
                                                    "calibration_ready", "job_done"])
    assert state == "DONE"
    assert actions.count("add_frame") == 16
    assert actions.index("submit_quicklook") < actions.index("submit")


def test_late_frame_reopens_and_rereduces():
    state, actions = walk("DONE", ["frame", "idle_timeout", "calibration_ready", "job_failed",
                                   "job_done"])
    assert state == "DONE" and "resubmit" in actions and actions.count("submit") == 1


def test_gave_up_is_failed_and_operator_can_retry():
    state, _ = walk("REDUCING", ["job_gave_up"])
    assert state == "FAILED"
    assert advance("FAILED", "operator_close").next_state == "COMPLETE"


def test_keys_and_kinds_of_a_night(tmp_path):
    simulate_night(tmp_path, seed=2, size=64, workers=1)
    keys = {}
    for p in sorted(tmp_path.glob("*.fits")):
        info = read_frame_info(p)
        if frame_kind(info) in ("bpm",):
            continue
        keys.setdefault(sequence_key(info).as_text(), []).append(p.name)
    kinds = sorted(k.split("|")[1] for k in keys)
    assert kinds == ["flat_off", "flat_on", "science", "standard"]
    sizes = sorted(len(v) for v in keys.values())
    assert sizes == [4, 15, 15, 16]  # on-target and offset skies are one sequence
    std_key = next(k for k in keys if "|standard|" in k)
    assert std_key.endswith("|1")  # ROI


def test_kinds_of_real_frames(real_header_dir, tmp_path):
    expected = {"S20130126S0134": "science", "S20130201S0246": "flat",
                "S20140109S0210": "flat_on", "S20140113S0002": "ignored",
                "S20140122S0227": "ignored", "S20181023S0087": "standard"}
    for name, kind in expected.items():
        path = write_fits_from_dump(real_header_dir / f"{name}.fits.header",
                                    tmp_path / f"{name}.fits")
        assert frame_kind(read_frame_info(path)) == kind
