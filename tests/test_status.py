"""Operator verbs on a real SQLite file and a PostgreSQL server: which daemon runs, why each
sequence is where it is."""

import datetime as dt
import re
import signal
import subprocess
import sys
import textwrap
import time

import peewee as pw
import pytest

from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import (
    DaemonRunningError,
    daemon_status,
    heartbeat,
    register_daemon,
    unregister_daemon,
)
from gsaoi_watch.cli.status import describe_sequence
from gsaoi_watch.config import Config

STAND_IN = textwrap.dedent("""
    import sys, time
    from gsaoi_watch.calibration import db
    from gsaoi_watch.calibration.daemons import heartbeat, register_daemon
    db.open_database(sys.argv[1])
    me = register_daemon(0.2)
    print("registered", flush=True)
    while True:
        heartbeat(me, note="3 sequences, 0 jobs")
        time.sleep(0.2)
""")


@pytest.fixture
def database(database_url):
    db.open_database(database_url, create=True)
    yield database_url
    db.close_database()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_liveness_needs_a_recent_heartbeat_and_a_live_process(database):
    assert not daemon_status().running
    assert "no daemon has registered" in daemon_status().reason
    me = register_daemon(10.0)
    status = daemon_status()
    assert status.running and "last heartbeat 0 s ago" in status.reason
    with pytest.raises(DaemonRunningError, match="another gsaoi-watch daemon is running"):
        register_daemon(10.0, pid=_dead_pid())
    later = db._now() + dt.timedelta(seconds=31)
    assert not daemon_status(now=later).running
    assert "3 heartbeats (10 s) missed" in daemon_status(now=later).reason
    assert heartbeat(me, note="ok")
    unregister_daemon(me)
    assert not heartbeat(me)
    dead = register_daemon(10.0, pid=_dead_pid())
    status = daemon_status()
    assert not status.running and "is no longer running" in status.reason
    # a daemon on another host is judged by its heartbeat alone
    with db.writing():
        db.Daemon.update(host="elsewhere").where(db.Daemon.id == dead).execute()
    assert daemon_status().running
    # registering replaces the rows of daemons that are gone
    with db.writing():
        db.Daemon.update(heartbeat=db._now() - dt.timedelta(hours=1)).execute()
    register_daemon(5.0)
    assert db.Daemon.select().count() == 1


def test_status_and_close_with_a_live_then_killed_daemon(database, tmp_path):
    db.close_database()
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(database)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "registered"
        run = [sys.executable, "-m", "gsaoi_watch"]
        out = subprocess.run([*run, "status", "-d", str(database)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0
        assert f"Daemon: running: pid {proc.pid} on " in out.stdout
        assert "3 sequences, 0 jobs" in out.stdout
        close = subprocess.run([*run, "close", "--all", "-d", str(database)],
                               capture_output=True, text=True, timeout=120)
        assert close.returncode == 0 and f"pid {proc.pid}" in close.stdout
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run([*run, "status", "-d", str(database)], capture_output=True,
                                 text=True, timeout=120)
            if "not running" in out.stdout:
                break
        assert f"Daemon: not running (pid {proc.pid} on " in out.stdout
        close = subprocess.run([*run, "close", "--all", "-d", str(database)],
                               capture_output=True, text=True, timeout=120)
        assert close.returncode == 1
        assert "no daemon is running on" in close.stderr and "nothing was requested" in \
            close.stderr
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    db.close_database()
    db.open_database(database)  # what the other processes committed
    assert [(c.verb, c.argument) for c in db.Command.select()] == [("close", "--all")]


def _sequence(key, state, **kw):
    now = db._now()
    fields = dict(key=key, kind="science", observation_id="GS-2017A-Q-29-13",
                  object="NGC5128", filter_name="Kshort_G1105&Clear", exposure_time=60.0,
                  state=state, opened=now, updated=now - dt.timedelta(seconds=30))
    fields.update(kw)
    seq = db.Sequence.create(**fields)
    for k in range(3):
        db.Frame.create(path=f"/raw/{key}_{k}.fits", sequence=seq)
    return seq


def test_every_state_has_its_real_reason(database):
    config = Config()
    now = db._now()
    open_ = _sequence("a", "OPEN", reason="late frame")
    waiting = _sequence("b", "WAITING", reason="waiting for a flat",
                        wait_started=now - dt.timedelta(seconds=600))
    flat_wait = _sequence("c", "WAITING", kind="flat_on",
                          reason="waiting for the lamp-off frames")
    reducing = _sequence("d", "REDUCING")
    db.Job.create(sequence=reducing, recipe="images", state="RUNNING", tries=1,
                  started=now - dt.timedelta(seconds=42))
    failed = _sequence("e", "FAILED", reason="job failed")
    db.Job.create(sequence=failed, recipe="images", state="FAILED", tries=3,
                  error="S20170505S0095.fits: EXPTIME missing or negative\nmore")
    done = _sequence("f", "DONE", reason="reduced")
    quick = _sequence("g", "QUICKLOOK", reason="quick-look reduced", quicklook=True)
    reopened = _sequence("h", "REOPENED", reason="late frame")
    text = {s.key: describe_sequence(db.Sequence.get_by_id(s.id), config, now)
            for s in (open_, waiting, flat_wait, reducing, failed, done, quick, reopened)}
    assert text["a"].startswith("receiving frames (last frame 30 s ago); complete when "
                                "another observation starts or after 900 s")
    assert "late frame" not in text["a"] and re.search(r"\(in 1[45] min\)$", text["a"])
    assert text["b"] == ("waiting for a flat; reduced for quick-look without one in "
                         "20 min")
    assert text["c"] == "waiting for the lamp-off frames"
    assert text["d"].startswith("job=") and "images RUNNING for 42 s (run 1)" in text["d"]
    assert text["e"].startswith("failed: job=") and "EXPTIME missing or negative" in text["e"]
    assert "\n" not in text["e"]
    assert text["f"] == "reduced (0 product(s))"
    assert text["g"].startswith("reduced for quick-look without a flat")
    assert text["h"].startswith("re-opened by a frame after it was complete")


def test_a_sequence_failed_by_the_engine_gives_that_error(database):
    seq = _sequence("x", "FAILED", reason="error on idle_timeout: header unreadable")
    db.Job.create(sequence=seq, recipe="images", state="DONE", tries=1)  # an earlier run
    text = describe_sequence(db.Sequence.get_by_id(seq.id), Config(), db._now())
    assert text == "failed: error on idle_timeout: header unreadable"


def test_a_schema_2_database_is_upgraded(tmp_path, database_url):
    path = database_url
    db.open_database(path, create=True)
    try:
        con = db.database.obj
        con.drop_tables([db.Daemon])
        db.SchemaInfo.delete().execute()
        db.SchemaInfo.create(version=2)
        when = dt.datetime(2017, 5, 5, 23)
        product = db.Product.create(path=str(tmp_path / "S1_flat.fits"), filename="S1_flat.fits",
                                    kind="processed_flat", is_calibration=True, is_bad=True,
                                    ut_datetime=when)
        served = db.Product.create(
            path=str(tmp_path / "calibrations" / "processed_flat" / "S1_flat.fits"),
            filename="S1_flat.fits", kind="processed_flat", is_calibration=True,
            ut_datetime=when)
        sky = db.Product.create(path=str(tmp_path / "S2_skyCorrected.fits"),
                                filename="S2_skyCorrected.fits", kind="sky_corrected")
        db.ProductCalibration.create(product=sky, calibration=product,
                                     caltype="processed_flat")
    finally:
        db.close_database()
    db.open_database(path)
    try:
        assert "daemon" in db.database.obj.get_tables()
        assert db.SchemaInfo.select(pw.fn.MAX(db.SchemaInfo.version)).scalar() == \
            db.SCHEMA_VERSION == 5
        flats = list(db.Product.select().where(db.Product.kind == "processed_flat"))
        assert [(f.id, f.is_bad) for f in flats] == [(served.id, True)]
        assert [u.calibration.id for u in db.Product.get_by_id(sky.id).calibrations_used] \
            == [served.id]
        assert not daemon_status().running
    finally:
        db.close_database()
