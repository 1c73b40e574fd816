"""The engine's error boundary and flat re-making, through the real Engine on a real SQLite file.

A second connection holding ``BEGIN EXCLUSIVE`` past the engine's busy wait while frames
land: the events are kept, nothing is lost once the lock goes.  A handler that raises marks
only its sequence FAILED (or quarantines only its frame), and what its transaction did is
undone, the job it submitted included.  A late lamp-on frame re-makes the on - off flat from
the frames of both lamp sequences and re-reduces what used the old flat.
"""

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from engine_harness import FLAT, IDLE, OFF, ON, SCI, STD, Night, flats_done

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon import actions, ingest
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.outcomes import member_of
from gsaoi_watch.daemon.sequences import Action
from gsaoi_watch.sim import simulate_night

#: The engine's busy wait in these tests (seconds): short, the lock is held far longer.
BUSY = 0.3


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("core_night")
    simulate_night(out, seed=22, size=64, workers=1, only=["flats", "standard", "science"])
    return out


@pytest.fixture
def night(stage, tmp_path, database_url):
    """The engine on SQLite and on PostgreSQL."""
    n = Night(tmp_path, stage, url=database_url if "://" in database_url else None)
    yield n
    db.close_database()


#: Tests of SQLite's own lock and file.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _until(predicate, step, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        step()


# --- the database locked by another process ---------------------------------------------------
@sqlite_only
def test_frames_landing_while_the_database_is_locked_are_kept_then_ingested(night, caplog):
    db.close_database()
    db.open_database(night.dir / "gw.db", lock_timeout=BUSY)
    night.arrive(*SCI[:2])
    holder = sqlite3.connect(night.dir / "gw.db", isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    locked = time.monotonic()
    try:
        with caplog.at_level(logging.INFO):
            night.arrive(*SCI[2:6])
            night.tick(IDLE / 10)
            _until(lambda: time.monotonic() > locked + 3 * BUSY + 2.5,
                   lambda: night.engine.step(timeout=0.05))
        assert db.Frame.select().count() == 2  # nothing written while locked
        assert night.engine.boundary.waiting
        summary = night.engine.summary()
        assert summary.startswith("database busy since ") and "events waiting" in summary
        waits = [r.getMessage() for r in caplog.records if "database busy" in r.getMessage()]
        assert waits, caplog.text
        # the real wait is said, not the old fixed "10 s"
        said = [float(w.split("waited ")[1].split(" s")[0]) for w in waits if "waited" in w]
        assert said and all(BUSY * 0.9 <= s < BUSY + 2.0 for s in said), waits
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with caplog.at_level(logging.INFO):
        _until(lambda: not night.engine.boundary.waiting, lambda: night.engine.step(0.05),
               timeout=60)
        night.drain()
    assert "database available again" in caplog.text
    seq = night.seq("science")
    assert seq.state == "OPEN" and seq.frames.count() == 6
    assert sorted(Path(f.path).name for f in db.Frame.select()) == sorted(SCI[:6])
    assert not night.engine.summary().startswith("database")


@sqlite_only
def test_backoff_doubles_and_is_capped(night):
    from gsaoi_watch.daemon import boundary

    b = night.engine.boundary
    busy = db.DatabaseBusy("locked", 0.1)
    for _ in range(8):
        b._unavailable(object(), busy)
    assert b.backoff == boundary.MAX_BACKOFF and len(b.pending) == 8
    assert db.unavailable(busy) and db.unavailable(sqlite3.OperationalError("disk I/O error"))
    assert not db.unavailable(RuntimeError("locked"))


# --- an exception marks only its own sequence or frame ----------------------------------------
def test_a_handler_that_raises_marks_only_its_sequence(night, monkeypatch, caplog):
    original = actions.EXECUTORS[Action.CHECK_CALIBRATION]

    def check(engine, seq, event):
        if seq.kind == "science":
            raise RuntimeError("header of S20170505S0095.fits unreadable\nsecond line")
        original(engine, seq, event)

    monkeypatch.setitem(actions.EXECUTORS, Action.CHECK_CALIBRATION, check)
    night.arrive(*STD, *SCI[:3])
    with caplog.at_level(logging.INFO):
        night.tick(IDLE)
    science, standard = night.seq("science"), night.seq("standard")
    assert science.state == "FAILED"
    assert science.reason == "error on idle_timeout: header of S20170505S0095.fits unreadable"
    assert standard.state == "WAITING"  # the other sequence went on
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "science" in errors[0] and "unreadable" in errors[0]
    assert "\n" not in errors[0]
    # the loop goes on: a frame for the failed sequence re-opens it
    night.arrive(SCI[3])
    assert night.seq("science").state == "REOPENED"


def test_a_failure_after_a_submit_undoes_the_job(night, monkeypatch):
    flats_done(night)
    night.arrive(*SCI[:3])
    night.start()
    original = night.engine.start_job

    def start_then_fail(job):
        original(job)
        raise OSError("disk gone while submitting")

    monkeypatch.setattr(night.engine, "start_job", start_then_fail)
    night.tick(IDLE)
    assert night.seq("science").state == "FAILED"
    assert night.jobs() == []  # the submission was never made
    assert not db.Job.select().where(db.Job.recipe == "images").exists()  # rolled back


def test_a_frame_that_cannot_be_ingested_is_quarantined_alone(night, monkeypatch):
    join = ingest._join

    def failing_join(engine, path, info, digest):
        if path.endswith(SCI[1]):
            raise ValueError("EXPTIME is not a number")
        join(engine, path, info, digest)

    monkeypatch.setattr(ingest, "_join", failing_join)
    night.arrive(*SCI[:3])
    rows = {Path(f.path).name: (f.state, f.error) for f in db.Frame.select()}
    assert rows[SCI[1]] == ("quarantined", "could not be ingested: EXPTIME is not a number")
    assert rows[SCI[0]][0] == rows[SCI[2]][0] == "ingested"
    assert night.seq("science").frames.count() == 2


# --- skipped frames are matched by their path ---------------------------------------------------
def test_skipped_frames_reported_by_name_are_marked_unusable(night, tmp_path, monkeypatch):
    flats_done(night)
    night.arrive(*SCI[:-1])
    night.tick(IDLE)
    monkeypatch.chdir(tmp_path)  # a bare name must not be resolved against the CWD
    call = next(c for c in night.fake.calls if c.fn is run_job
                and c.spec["recipe"] == "images")
    result = night._result(call.spec, None)
    result["skipped"] = [(SCI[3], "no sky frames could be associated"),
                         (str(night.raw / SCI[5]), "every pixel is flagged bad")]
    call.future.set_result(result)
    night.drain()
    states = {Path(f.path).name: f.state for f in night.seq("science").frames}
    assert states[SCI[3]] == states[SCI[5]] == "unusable"
    assert sum(s == "used" for s in states.values()) == len(SCI) - 3


def test_member_of_matches_paths_then_names():
    paths = ["/raw/a/S1.fits", "/raw/a/S2.fits"]
    assert member_of("/raw/a/S2.fits", paths) == "/raw/a/S2.fits"
    assert member_of("S1.fits", paths) == "/raw/a/S1.fits"
    assert member_of("S1_skyCorrected.fits", paths) == "/raw/a/S1.fits"
    assert member_of("S9.fits", paths) is None


# --- a late lamp-on frame -----------------------------------------------------------------------
def test_a_late_lamp_on_frame_remakes_the_flat_from_both_lamps_and_rereduces(night):
    flats_done(night, on=ON[:-1])
    night.arrive(*STD)
    night.tick(IDLE)
    night.finish("images")
    night.arrive(*SCI[:-1])
    night.tick(IDLE)
    night.finish("images")
    assert night.seq("standard").state == night.seq("science").state == "DONE"
    night.start()
    night.arrive(ON[-1])
    night.tick(IDLE)
    assert night.seq("flat_on").state == night.seq("flat_off").state == "REDUCING"
    assert night.jobs() == [("flat", ON + OFF)]  # both lamp sets, not lamp-on alone
    flat = night.finish("flat")
    assert Path(flat.spec["paths"][0]).name == ON[0]
    assert night.seq("flat_on").state == night.seq("flat_off").state == "DONE"
    frames = db.Frame.select().where(db.Frame.path.in_([str(night.raw / n) for n in ON + OFF]))
    assert {f.state for f in frames} == {"used"} and frames.count() == len(ON + OFF)
    # the same flat name, new content: what was reduced with the old one is redone with it
    assert night.jobs() == [("flat", ON + OFF), ("images", STD), ("images", SCI[:-1])]
    redone = [c for c in night.fake.calls[night.mark:] if c.fn is run_job
              and c.spec["recipe"] == "images"]
    assert all(Path(c.spec["flat"]).name == FLAT for c in redone)
    assert night.seq("standard").state == night.seq("science").state == "REDUCING"
    assert db.Product.select().where(db.Product.kind == "processed_flat").count() == 1


def test_a_failing_disk_is_retried_with_backoff_and_nothing_is_lost(night, monkeypatch,
                                                                      caplog):
    import peewee as pw

    record = ingest._record_frame
    failures = {"left": 2}

    def flaky(engine, path, info, digest, state, seq):
        if failures["left"]:
            failures["left"] -= 1
            raise pw.OperationalError("disk I/O error")
        record(engine, path, info, digest, state, seq)

    monkeypatch.setattr(ingest, "_record_frame", flaky)
    with caplog.at_level(logging.INFO):
        night.arrive(*SCI[:3])
        assert db.Frame.select().count() == 0 and night.engine.boundary.waiting
        assert night.engine.summary().startswith("database unavailable since ")
        assert "disk I/O error" in night.engine.summary()
        _until(lambda: not night.engine.boundary.waiting, lambda: night.engine.step(0.05))
        night.drain()
    assert failures["left"] == 0
    assert sorted(Path(f.path).name for f in db.Frame.select()) == sorted(SCI[:3])
    assert night.seq("science").frames.count() == 3 and night.seq("science").state == "OPEN"
    assert "database available again" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@sqlite_only
def test_a_removed_database_file_keeps_the_events_until_it_is_back(night, caplog):
    path = night.dir / "gw.db"
    night.arrive(SCI[0])
    backup = night.dir / "backup.db"
    src = sqlite3.connect(path)
    dst = sqlite3.connect(backup)
    src.backup(dst)
    src.close()
    dst.close()
    path.unlink()
    with caplog.at_level(logging.INFO):
        night.arrive(*SCI[1:3])
        assert night.engine.boundary.waiting and not path.exists()  # no empty file made
        assert "database file removed" in night.engine.summary()
        backup.rename(path)  # the operator puts it back
        _until(lambda: not night.engine.boundary.waiting, lambda: night.engine.step(0.05))
        night.drain()
    assert "was replaced: using the file now at its path" in caplog.text
    assert sorted(Path(f.path).name for f in db.Frame.select()) == sorted(SCI[:3])
    assert night.seq("science").frames.count() == 3


def test_an_outcome_that_cannot_be_recorded_fails_its_job_and_sequence_only(night, caplog):
    flats_done(night)
    night.arrive(*STD)
    night.tick(IDLE)
    night.arrive(*SCI[:-1])
    night.tick(IDLE)
    call = next(c for c in night.fake.calls if c.fn is run_job
                and c.spec["recipe"] == "images" and Path(c.spec["paths"][0]).name == SCI[0])
    result = night._result(call.spec, None)
    result["products"].append((str(night.out / "gone_skyCorrected.fits"), "sky_corrected"))
    with caplog.at_level(logging.INFO):
        call.future.set_result(result)
        night.drain()
    job = db.Job.get(db.Job.id == max(j.id for j in night.seq("science").jobs))
    assert job.state == "FAILED" and job.error.startswith("outcome not recorded: ")
    assert night.seq("science").state == "FAILED"
    assert not db.Product.select().where(db.Product.kind == "sky_corrected").exists()
    assert night.seq("standard").state == "REDUCING"  # untouched: its job is still running
    night.finish("images")  # and it ends as usual
    assert night.seq("standard").state == "DONE"


def test_a_kill_between_state_change_and_job_row_leaves_neither(night, monkeypatch):
    flats_done(night)
    night.arrive(*SCI[:3])

    def killed(job):  # the process dies after the state change, before the job is submitted
        raise KeyboardInterrupt

    monkeypatch.setattr(night.engine, "start_job", killed)
    with pytest.raises(KeyboardInterrupt):
        night.tick(IDLE)
    assert night.seq("science").state == "OPEN"  # the whole event rolled back
    assert not db.Job.select().where(db.Job.recipe == "images").exists()
    monkeypatch.undo()
    night.start()
    night.tick()  # the restarted daemon: the same tick closes it again, job and all
    assert night.seq("science").state == "REDUCING"
    assert night.jobs() == [("images", SCI[:3])]


def test_recover_reruns_each_interrupted_job_on_its_own(night):
    flats_done(night)
    night.arrive(*STD)
    night.tick(IDLE)
    night.arrive(*SCI[:-1])
    night.tick(IDLE)
    std_job = db.Job.get(db.Job.sequence == night.seq("standard").id)
    with db.writing():  # a row an older version left unreadable
        db.Job.update(parameters="{").where(db.Job.id == std_job.id).execute()
    night.start()
    night.engine.recover()  # as after a restart: both jobs were RUNNING
    assert night.jobs() == [("images", SCI[:-1])]
    assert db.Job.get_by_id(std_job.id).state == "FAILED"
    assert db.Job.get_by_id(std_job.id).error.startswith("not re-run: ")
    assert night.seq("standard").state == "FAILED"
    sci_job = db.Job.get(db.Job.sequence == night.seq("science").id)
    assert (sci_job.state, sci_job.tries) == ("RUNNING", 2)


def test_a_submit_that_fails_ends_the_job_through_its_failure(night, monkeypatch):
    flats_done(night)
    night.arrive(*SCI[:3])
    night.start()
    submit = night.fake.submit
    broken = {"left": 1}

    def once_broken(fn, *args, **kwargs):
        if fn is run_job and broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("the process pool is not usable anymore")
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(night.fake, "submit", once_broken)
    night.tick(IDLE)
    night.drain()  # the failed submit comes back as the job's failure: tried again
    assert night.jobs() == [("images", SCI[:3])]
    job = db.Job.get(db.Job.recipe == "images")
    assert (job.state, job.tries) == ("RUNNING", 2)
    assert night.seq("science").state == "REDUCING"
