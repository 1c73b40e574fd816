"""Every row of the transition table, driven through the real Engine.

Each case builds its precondition through the engine (simulated frames landing in a raw
directory, ticks of an injected clock, operator commands in the database, jobs finishing),
then fires the row's event the way the daemon does, and checks the sequence's state in a
real SQLite file, the jobs submitted (recipe and frames) and the transition's log line.
The executor is a fake: it records what is submitted and lets the test finish each job with
a result (products are copies of raw frames) or an exception.  Rows that nothing in the
daemon can reach from outside (a sequence left COMPLETE, ``close`` of a WAITING, DONE or
QUICKLOOK sequence, which ``close`` skips) get their event dispatched directly.
"""

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_harness import (
    FLAT,
    FLAT_WAIT,
    IDLE,
    OFF,
    ON,
    QUIET,
    SCI,
    STD,
    Night,
    flats_done,
    science_done,
    science_failed,
    science_quicklook,
    science_quicklook_reducing,
    science_reducing,
    science_reopened,
    science_waiting,
    sky,
    standard_reopened,
)

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon import engine as engine_module
from gsaoi_watch.daemon.actions import EXECUTORS
from gsaoi_watch.daemon.events import Event, Tick
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.sequences import TRANSITIONS, State, advance
from gsaoi_watch.sim import simulate_night

S, E = State, Event


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("table_night")
    simulate_night(out, seed=21, size=64, workers=1, only=["flats", "standard", "science"])
    return out


# --- one case per row -------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    run: object          # run(night) builds the precondition, calls night.start(), fires
    kind: str            # the sequence the row is about
    final: str           # its state afterwards (later rows may follow the row's own)
    jobs: tuple = ()     # (recipe, frame names) submitted from night.start() on
    prepared: int = 0    # frames given to the per-frame steps (add_frame)
    check: object = None  # further assertions: check(night)


CASES = {}


def case(state, event, *, kind="science", final=None, jobs=(), prepared=0, check=None):
    def register(run):
        CASES[(state, event)] = Case(run, kind, final or TRANSITIONS[(state, event)].next_state,
                                     tuple(jobs), prepared, check)
        return run
    return register


@case(S.OPEN, E.FIRST_FRAME, prepared=1)
def _(n):
    n.start()
    n.arrive(SCI[0])


@case(S.OPEN, E.FRAME, prepared=1)
def _(n):
    n.arrive(SCI[0])
    n.start()
    n.arrive(SCI[1])


@case(S.OPEN, E.NEW_OBSERVATION, kind="standard", final=S.WAITING, prepared=1)
def _(n):
    n.arrive(*STD[:2])
    n.start()
    n.clock.t += dt.timedelta(seconds=QUIET)
    n.arrive(SCI[0])  # a later observation: the standard is complete


@case(S.OPEN, E.IDLE_TIMEOUT, final=S.WAITING)
def _(n):
    n.arrive(*SCI[:3])
    n.start()
    n.tick(IDLE)


@case(S.OPEN, E.OPERATOR_CLOSE, final=S.WAITING)
def _(n):
    n.arrive(*SCI[:3])
    n.start()
    n.close()


@case(S.REOPENED, E.FRAME, prepared=1)
def _(n):
    science_reopened(n)
    n.start()
    n.arrive(SCI[-1])


@case(S.REOPENED, E.NEW_OBSERVATION, kind="standard", final=S.REDUCING,
      jobs=[("images", STD[:3])])
def _(n):
    standard_reopened(n)
    n.start()
    n.tick(QUIET)  # the flats came later


@case(S.REOPENED, E.IDLE_TIMEOUT, final=S.REDUCING, jobs=[("images", SCI[:-1])])
def _(n):
    science_reopened(n)
    n.start()
    n.tick(IDLE)


@case(S.REOPENED, E.OPERATOR_CLOSE, final=S.REDUCING, jobs=[("images", SCI[:-1])])
def _(n):
    science_reopened(n)
    n.start()
    n.close("GS-2017A-Q-29-13")


@case(S.COMPLETE, E.CALIBRATION_READY, jobs=[("images", SCI[:3])])
def _(n):
    flats_done(n)
    n.arrive(*SCI[:3])
    n.force("science", "COMPLETE")
    n.start()
    n.dispatch("science", E.CALIBRATION_READY)


@case(S.COMPLETE, E.CALIBRATION_MISSING,
      check=lambda n: n.seq("science").wait_started == n.clock.t)
def _(n):
    n.arrive(*SCI[:3])
    n.force("science", "COMPLETE")
    n.start()
    n.dispatch("science", E.CALIBRATION_MISSING)


@case(S.COMPLETE, E.PARTNER_SUBMITTED, kind="flat_on", jobs=[("flat", OFF + ON)])
def _(n):
    n.arrive(*ON)
    n.force("flat_on", "COMPLETE")
    n.start()
    n.arrive(*OFF)
    n.tick(IDLE)  # lamp-off complete: its flat job takes the lamp-on frames along


@case(S.COMPLETE, E.FRAME, prepared=1)
def _(n):
    n.arrive(*SCI[:3])
    n.force("science", "COMPLETE")
    n.start()
    n.arrive(SCI[3])


def _flat_used(n):
    call = next(c for c in n.fake.calls[n.mark:] if c.fn is run_job
                and c.spec["recipe"] == "images")
    assert Path(call.spec["flat"]).name == FLAT
    assert not n.seq("science").quicklook


@case(S.WAITING, E.CALIBRATION_READY, final=S.REDUCING,
      jobs=[("flat", OFF + ON), ("images", SCI[:3])], check=_flat_used)
def _(n):
    science_waiting(n)
    n.start()
    n.arrive(*ON, *OFF)
    n.tick(IDLE)
    n.finish("flat")  # registered: the waiting science is released


@case(S.WAITING, E.PARTNER_SUBMITTED, kind="flat_on", jobs=[("flat", OFF + ON)],
      check=lambda n: n.seq("flat_on").wait_started is None)
def _(n):
    n.arrive(*ON)
    n.tick(IDLE)
    assert n.seq("flat_on").reason == "waiting for the lamp-off frames"
    n.start()
    n.arrive(*OFF)
    n.tick(IDLE)


def _quicklook_job(n):
    assert n.fake.calls[-1].spec["flat"] is None and n.seq("science").quicklook


@case(S.WAITING, E.WAIT_EXPIRED, jobs=[("images", SCI[:3])], check=_quicklook_job)
def _(n):
    science_waiting(n)
    n.start()
    n.tick(FLAT_WAIT)


@case(S.WAITING, E.FRAME, prepared=1, check=lambda n: n.seq("science").wait_started is None)
def _(n):
    science_waiting(n)
    n.start()
    n.arrive(SCI[3])


@case(S.WAITING, E.OPERATOR_CLOSE)
def _(n):
    science_waiting(n)
    n.start()
    n.dispatch("science", E.OPERATOR_CLOSE)


@case(S.REDUCING, E.FRAME, prepared=1, check=lambda n: n.seq("science").stale)
def _(n):
    science_reducing(n)
    n.start()
    n.arrive(SCI[-1])


def _products_registered(n):
    names = {p.filename for p in db.Product.select()}
    assert set(sky(SCI[:-1])) | {FLAT} <= names
    states = {Path(f.path).name: f.state for f in db.Frame.select()}
    assert all(states[s] == "used" for s in SCI[:-1])
    used = {pc.calibration.filename for pc in db.ProductCalibration.select()}
    assert used == {FLAT}


@case(S.REDUCING, E.JOB_DONE, jobs=[("stack", sky(SCI[:-1]))], check=_products_registered)
def _(n):
    science_reducing(n)
    n.start()
    n.finish("images")


def _stale_cleared(n):
    assert not n.seq("science").stale


def science_done_while_frame_arrived(n):
    science_reducing(n)
    n.arrive(SCI[-1])
    n.start()
    n.finish("images")


CASES_STALE = dict(kind="science", final=S.REOPENED, check=_stale_cleared)
case(S.REDUCING, E.JOB_DONE_STALE, **CASES_STALE)(science_done_while_frame_arrived)
case(S.DONE, E.REOPEN, **CASES_STALE)(science_done_while_frame_arrived)


@case(S.REDUCING, E.JOB_DONE_QUICKLOOK, jobs=[("stack", sky(SCI[:-1]))])
def _(n):
    science_quicklook_reducing(n)
    n.start()
    n.finish("images")


def science_quicklook_done_while_frame_arrived(n):
    science_quicklook_reducing(n)
    n.arrive(SCI[-1])
    n.start()
    n.finish("images")


case(S.REDUCING, E.JOB_DONE_QUICKLOOK_STALE, **CASES_STALE)(
    science_quicklook_done_while_frame_arrived)
case(S.QUICKLOOK, E.REOPEN, **CASES_STALE)(science_quicklook_done_while_frame_arrived)


def _job_retried(n):
    job = db.Job.get(db.Job.recipe == "images")
    assert (job.state, job.tries) == ("RUNNING", 2)


@case(S.REDUCING, E.JOB_FAILED, jobs=[("images", SCI[:-1])], check=_job_retried)
def _(n):
    science_reducing(n)
    n.start()
    n.finish("images", fail=True)


def _job_failed(n):
    job = db.Job.get(db.Job.recipe == "images")
    assert (job.state, job.tries, job.error) == ("FAILED", 2, "no skies")


@case(S.REDUCING, E.JOB_GAVE_UP, check=_job_failed)
def _(n):
    science_reducing(n)
    n.finish("images", fail=True)
    n.start()
    n.finish("images", fail=True)


@case(S.DONE, E.FRAME, prepared=1)
def _(n):
    science_done(n)
    n.start()
    n.arrive(SCI[-1])


@case(S.DONE, E.OPERATOR_CLOSE)
def _(n):
    science_done(n)
    n.start()
    n.dispatch("science", E.OPERATOR_CLOSE)


REMADE = "S20170505S0031_flat.fits"


def _recalibrated(n):
    names = {p.filename for p in db.Product.select()}
    assert FLAT not in names and REMADE in names
    assert not (n.out / "calibrations" / "processed_flat" / FLAT).exists()
    images = [c for c in n.fake.calls[n.mark:] if c.fn is run_job
              and c.spec["recipe"] == "images"]
    assert Path(images[0].spec["flat"]).name == REMADE


@case(S.DONE, E.RECALIBRATE, final=S.REDUCING, jobs=[("flat", ON + OFF), ("images", SCI[:-1])],
      check=_recalibrated)
def _(n):
    # the master flat is re-made under another name: what used the old one is redone
    flats_done(n, on=ON[:-1])
    n.arrive(*SCI[:-1])
    n.tick(IDLE)
    n.finish("images")
    n.start()
    n.arrive(ON[-1])       # a late lamp-on frame re-opens the lamp-on sequence
    n.tick(IDLE)           # complete; its lamp-off partner is done: both remade together
    n.finish("flat", name=REMADE)


@case(S.DONE, E.PARTNER_SUBMITTED, kind="flat_off", final=S.REDUCING,
      jobs=[("flat", ON + OFF)])
def _(n):
    flats_done(n, on=ON[:-1])
    n.start()
    n.arrive(ON[-1])       # a late lamp-on frame: the lamp-off frames are taken along
    n.tick(IDLE)


def _stranded(n):
    assert n.seq("science").reason == "interrupted by a restart"


@case(S.REDUCING, E.INTERRUPTED, jobs=[("images", SCI[:-1])], check=_stranded)
def _(n):
    # a sequence REDUCING with no job (a crash between two rows of an older version)
    flats_done(n)
    n.arrive(*SCI[:-1])
    n.force("science", "REDUCING")
    n.start()
    n.engine.recover()


@case(S.COMPLETE, E.INTERRUPTED, final=S.REDUCING, jobs=[("images", SCI[:-1])])
def _(n):
    flats_done(n)
    n.arrive(*SCI[:-1])
    n.force("science", "COMPLETE")
    n.start()
    n.engine.recover()


@case(S.QUICKLOOK, E.CALIBRATION_READY, jobs=[("flat", OFF + ON), ("images", SCI[:-1])],
      final=S.REDUCING, check=_flat_used)
def _(n):
    science_quicklook(n)
    n.start()
    n.arrive(*ON, *OFF)
    n.tick(IDLE)
    n.finish("flat")


@case(S.QUICKLOOK, E.FRAME, prepared=1)
def _(n):
    science_quicklook(n)
    n.start()
    n.arrive(SCI[-1])


@case(S.QUICKLOOK, E.OPERATOR_CLOSE)
def _(n):
    science_quicklook(n)
    n.start()
    n.dispatch("science", E.OPERATOR_CLOSE)


@case(S.QUICKLOOK, E.RECALIBRATE, jobs=[("images", SCI[:-1])])
def _(n):
    science_quicklook(n)
    n.start()
    n.dispatch("science", E.RECALIBRATE)


@case(S.FAILED, E.FRAME, prepared=1)
def _(n):
    science_failed(n)
    n.start()
    n.arrive(SCI[-1])


@case(S.FAILED, E.OPERATOR_CLOSE, final=S.REDUCING, jobs=[("images", SCI[:-1])])
def _(n):
    science_failed(n)
    n.start()
    n.close("GS-2017A-Q-29-13")


# --- the tests --------------------------------------------------------------------------------
def test_every_row_has_a_case():
    assert set(CASES) == set(TRANSITIONS)


def test_every_action_has_an_executor():
    used = {a for t in TRANSITIONS.values() for a in t.actions}
    assert set(EXECUTORS) == used


@pytest.mark.parametrize("row", sorted(CASES), ids=lambda r: f"{r[0]}-{r[1]}")
def test_row(row, stage, tmp_path, monkeypatch, caplog):
    state, event = row
    c = CASES[row]
    night = Night(tmp_path, stage)

    def recording_advance(s, e):
        t = advance(s, e)
        if t is not None:
            night.taken.append((s, e))
        return t

    monkeypatch.setattr(engine_module, "advance", recording_advance)
    try:
        with caplog.at_level(logging.INFO):
            c.run(night)
        assert row in night.taken[night.taken_mark:], night.taken[night.taken_mark:]
        assert night.seq(c.kind).state == c.final
        assert night.jobs() == [(r, list(f)) for r, f in c.jobs]
        assert len(night.prepared()) == c.prepared
        nxt = TRANSITIONS[row].next_state
        if nxt != state:
            assert any(f": {state}→{nxt} (" in r.getMessage() for r in caplog.records
                       if r.getMessage().startswith("seq=")), f"no log line {state}→{nxt}"
        if event in (E.FIRST_FRAME, E.FRAME):  # add_frame: the member is recorded
            seq = night.seq(c.kind)
            last = max(f.ut_datetime for f in seq.frames)
            assert (seq.updated, seq.last_frame_ut) == (night.clock.t, last)
        if c.check is not None:
            c.check(night)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR
                    and "reduction FAILED" not in r.getMessage()
                    and "failed (try" not in r.getMessage()]
    finally:
        db.close_database()


def test_an_unknown_event_is_a_logged_error(stage, tmp_path, caplog):
    night = Night(tmp_path, stage)
    try:
        night.engine.events.put(("tick",))  # an old-style tuple: not an event
        night.engine.events.put(Tick())
        with caplog.at_level(logging.ERROR):
            night.drain()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == ["unknown event ('tick',): not handled"]
        night.arrive(SCI[0])
        with caplog.at_level(logging.ERROR):
            night.dispatch("science", E.JOB_DONE)  # no such row for an OPEN sequence
        assert "no transition for event 'job_done' in state 'OPEN'" in caplog.text
        assert night.seq("science").state == "OPEN"
    finally:
        db.close_database()
