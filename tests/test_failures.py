"""Job failures by kind: a worker's death, a deterministic error, a transient cause, others.

A real engine and database with the fake executor of :mod:`engine_harness`; the job's
future ends with the exception a worker would have raised.
"""

import errno
import logging
import os

import pytest
from engine_harness import SCI, FakeExecutor, Night, science_reducing

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon.engine import Engine
from gsaoi_watch.daemon.failures import (
    FIRST_DELAY,
    MAX_DELAY,
    Failure,
    RetrySchedule,
    classify,
)
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.pool import WorkerCrashed
from gsaoi_watch.daemon.prepared import prepare_ahead
from gsaoi_watch.errors import FrameError, ReductionError
from gsaoi_watch.sim import simulate_night


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("failures_night")
    simulate_night(out, seed=21, size=64, workers=1, only=["flats", "science"])
    return out


@pytest.fixture
def db_url(database_url):
    """The engine's database: a SQLite file in the test's directory, or a PostgreSQL one."""
    return database_url if "://" in database_url else None


@pytest.mark.parametrize("exc,kind", [
    (WorkerCrashed("signal 9", 42), Failure.CRASH),
    (ReductionError("S1.fits: no EXPTIME"), Failure.DETERMINISTIC),
    (FrameError("S1.fits", "truncated FITS"), Failure.DETERMINISTIC),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x.fits"), Failure.TRANSIENT),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), Failure.TRANSIENT),
    (OSError(errno.EIO, "Input/output error"), Failure.TRANSIENT),
    (OSError(errno.EMFILE, "Too many open files"), Failure.TRANSIENT),
    (MemoryError(), Failure.TRANSIENT),
    (OSError(errno.ENOENT, "No such file or directory"), Failure.OTHER),
    (ValueError("operands could not be broadcast"), Failure.OTHER),
])
def test_classify(exc, kind):
    assert classify(exc) is kind


def test_retry_delays_double_to_the_cap():
    import datetime as dt
    t0 = dt.datetime(2017, 5, 6)
    s = RetrySchedule()
    delays = [s.schedule(7, t0)[0] for _ in range(9)]
    assert delays == [10, 20, 40, 80, 160, 320, 600, 600, 600] and FIRST_DELAY == 10 \
        and MAX_DELAY == 600
    assert s.due(t0 + dt.timedelta(seconds=599)) == []
    assert s.due(t0 + dt.timedelta(seconds=600)) == [7]
    assert s.due(t0 + dt.timedelta(seconds=601)) == []  # taken off the schedule
    s.forget(7)
    assert s.schedule(7, t0)[0] == 10  # a new failure after the job ended starts over


def images_calls(n):
    return [c for c in n.fake.calls if c.fn is run_job and c.spec["recipe"] == "images"]


def fail_running(n, exc):
    call = next(c for c in images_calls(n) if not c.future.done())
    call.future.set_exception(exc)
    n.drain()


def job():
    return db.Job.get(db.Job.recipe == "images")


def test_a_full_disk_is_retried_later_until_space_is_freed(stage, tmp_path, db_url, caplog):
    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    no_space = OSError(errno.ENOSPC, "No space left on device",
                       str(n.out / "S20170505S0095_skyCorrected.fits"))
    delays = [10, 20, 40, 80]  # more failures than max_tries (2): no try is used up
    with caplog.at_level(logging.INFO):
        for delay in delays:
            submitted = len(images_calls(n))
            fail_running(n, no_space)
            assert (job().state, job().tries) == ("RETRY", 1)
            assert n.seq("science").state == "REDUCING"
            warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                      and "No space left on device" in r.getMessage()]
            assert warned and "next try at" in warned[-1] and f"in {delay} s" in warned[-1]
            n.tick(delay - 1)
            assert len(images_calls(n)) == submitted, "retried before its time"
            n.tick(1)
            assert len(images_calls(n)) == submitted + 1, "not retried at its time"
            assert job().state == "RUNNING"
    n.finish("images")
    assert (job().state, job().tries, job().crashes) == ("DONE", 1, 0)
    assert n.seq("science").state == "DONE"
    assert not n.engine.retries.due_at and not n.engine.retries.failures


def test_a_job_waiting_for_its_retry_is_taken_up_after_a_restart(stage, tmp_path, db_url):
    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    fail_running(n, OSError(errno.EIO, "Input/output error"))
    assert job().state == "RETRY"
    fresh = FakeExecutor()
    n.engine = Engine(n.engine.config, executor=fresh, now=n.clock)  # the daemon restarted
    n.fake = fresh
    n.tick()
    assert [c.spec["recipe"] for c in fresh.calls if c.fn is run_job] == ["images"]
    assert (job().state, job().tries) == ("RUNNING", 1)


def test_a_deterministic_error_fails_at_once_and_is_reported_once(stage, tmp_path, db_url, caplog):
    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    submitted = len(images_calls(n))
    with caplog.at_level(logging.INFO):
        fail_running(n, ReductionError("S20170505S0097.fits: no EXPTIME keyword"))
        n.tick(3600)
    assert len(images_calls(n)) == submitted, "a deterministic failure was retried"
    assert (job().state, job().tries) == ("FAILED", 1)
    assert "EXPTIME" in job().error
    assert n.seq("science").state == "FAILED"
    said = [r for r in caplog.records if "EXPTIME" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "not retried" in said[0].getMessage()


def test_a_dead_worker_does_not_use_up_tries_and_gives_up_after_max_crashes(
        stage, tmp_path, db_url):
    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    assert n.engine.config.jobs.max_crashes == 3
    for crashes in (1, 2):
        submitted = len(images_calls(n))
        fail_running(n, WorkerCrashed("signal 9", 4321))
        assert len(images_calls(n)) == submitted + 1, "not run again after its worker died"
        assert (job().state, job().tries, job().crashes) == ("RUNNING", 1, crashes)
        assert n.seq("science").state == "REDUCING"
    fail_running(n, WorkerCrashed("signal 9", 4322))
    assert (job().state, job().tries, job().crashes) == ("FAILED", 1, 3)
    assert job().error == "worker died (signal 9) 3 times"
    assert n.seq("science").state == "FAILED"


def test_a_job_whose_worker_died_once_then_completes(stage, tmp_path, db_url):
    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    fail_running(n, WorkerCrashed("signal 9", 99))
    n.finish("images")
    assert (job().state, job().tries, job().crashes) == ("DONE", 1, 1)
    assert n.seq("science").state == "DONE"


def test_what_a_worker_killed_mid_write_left_is_removed_while_the_daemon_runs(
        stage, tmp_path, db_url):
    """A worker killed while writing leaves its hidden .NAME.PID.X.tmp file: removed when
    its death is known (and at each rescan); those of live writers stay; at a start, all."""
    import subprocess
    import sys

    from gsaoi_watch.data.fitsio import atomic_output

    n = Night(tmp_path, stage, url=db_url)
    science_reducing(n)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = n.engine.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    flats = n.out / "calibrations" / "processed_flat"
    flats.mkdir(parents=True, exist_ok=True)
    orphans = [cache / f".S1_prepared.fits.{dead.pid}.k3j2h1g0.tmp",
               n.out / f".S1_skyCorrected.fits.{dead.pid}.a1b2c3d4.tmp",
               flats / f".S1_flat.fits.{dead.pid}.zz9y8x7w.tmp"]
    live = [n.out / f".S2_skyCorrected.fits.{os.getpid()}.q1w2e3r4.tmp",
            n.out / ".S3_skyCorrected.fits.tmp"]  # a writer the name does not tell
    for p in orphans + live:
        p.write_bytes(b"half")
    with atomic_output(n.out / "S4.fits") as fh:  # the writer names itself in the file
        writing = [p.name for p in n.out.glob(".S4.fits.*.tmp")]
        fh.write(b"x")
    assert len(writing) == 1 and f".{os.getpid()}." in writing[0]
    fail_running(n, WorkerCrashed("signal 9", dead.pid))
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in live)
    n.engine.remove_temporaries(orphans_only=False)  # as at a start: no writer runs
    assert not any(p.exists() for p in live)


def test_a_prepared_frame_whose_worker_died_is_dropped_harmlessly(stage, tmp_path, db_url, caplog):
    n = Night(tmp_path, stage, url=db_url)
    n.arrive(SCI[0])
    call = next(c for c in n.fake.calls if c.fn is prepare_ahead)
    assert n.engine.preparing
    with caplog.at_level(logging.WARNING):
        call.future.set_exception(WorkerCrashed("signal 9", 77))
        n.drain()
    assert not n.engine.preparing
    assert any("left to the sequence job" in r.getMessage() for r in caplog.records)
    assert n.seq("science").state == "OPEN"


def test_a_prepared_frame_that_cannot_be_reduced_is_left_to_the_job_quietly(
        stage, tmp_path, db_url, caplog):
    n = Night(tmp_path, stage, url=db_url)
    n.arrive(SCI[0])
    call = next(c for c in n.fake.calls if c.fn is prepare_ahead)
    with caplog.at_level(logging.INFO):
        call.future.set_exception(ReductionError(f"{SCI[0]}: EXPTIME missing or negative"))
        n.drain()
    said = [r for r in caplog.records if "EXPTIME" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]  # the sequence job reports it
    assert not n.engine.preparing
