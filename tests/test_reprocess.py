"""Archive re-reduction: simulated nights of several dates on a two-worker Dask LocalCluster."""

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsaoi_watch.archive.cluster import DaskExecutor, open_client
from gsaoi_watch.archive.plan import plan_archive
from gsaoi_watch.archive.run import reprocess
from gsaoi_watch.calibration import db
from gsaoi_watch.config import load_config
from gsaoi_watch.sim import simulate_night

ROOT = Path(__file__).resolve().parents[1]
#: night -> (seed, science UT date, groups simulated)
NIGHTS = {"A": (12, dt.date(2017, 5, 5), ["flats", "science", "bpm"]),
          "B": (21, dt.date(2017, 5, 20), ["flats", "science", "bpm"]),   # flats deleted
          "C": (31, dt.date(2017, 6, 10), ["flats", "standard", "science", "bpm"])}
SETTINGS = """
[quicklook]
pictures = false
summary = false
[jobs]
max_tries = 3
"""
DAEMON = """
[paths]
raw_dir = "{raw}"
output_dir = "{out}"
log_file = "{log}"
[database]
url = "{db}"
[watch]
settle_seconds = 0.5
give_up_seconds = 4
rescan_seconds = 2
[sequences]
idle_timeout = 3
min_quiet = 1
flat_wait = 600
tick_seconds = 0.3
[jobs]
workers = 1
max_tries = 3
[service]
heartbeat_seconds = 1
"""


def science(day):
    """The products of a simulated night's science sequence (and its stack)."""
    d = f"{day:%Y%m%d}"
    return ([f"S{d}S{n:04d}_skyCorrected.fits" for n in [*range(95, 111, 2), 110]]
            + [f"S{d}S{n:04d}_flatCorrected.fits" for n in range(96, 110, 2)]
            + [f"S{d}S0095_stack.fits"])


def expected_products():
    a, b, c = (NIGHTS[k][1] for k in "ABC")
    return sorted(["S20170505S0030_flat.fits", "S20170610S0030_flat.fits"]
                  + science(a) + science(b) + science(c)
                  + [f"S20170609S{n:04d}_skyCorrected.fits" for n in range(114, 118)])


def query(path, sql, *args):
    with sqlite3.connect(path, timeout=10) as con:
        return con.execute(sql, args).fetchall()


def product_files(out):
    """Product file names in the output directory (not the served copies, logs, cache)."""
    return sorted(p.name for p in Path(out).glob("*.fits"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    raw = tmp_path_factory.mktemp("archive")
    for seed, day, only in NIGHTS.values():
        simulate_night(raw / f"{day:%Y%m%d}", seed=seed, size=64, workers=2, date=day,
                       only=only)
    night_b = raw / f"{NIGHTS['B'][1]:%Y%m%d}"
    for flat in night_b.glob("S20170520S00[3-7]?.fits"):  # the lamp-on and lamp-off flats
        flat.unlink()
    junk = raw / "junk"
    junk.mkdir()
    (junk / "S20170505S0200.fits").write_text("garbage\n" * 500)
    first = sorted((raw / "20170610").glob("S*.fits"))[0]
    (junk / "S20170610S0201.fits").write_bytes(first.read_bytes()[:20000])
    return raw


def settings(tmp_path, out, database):
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    return load_config(path).replace("paths", output_dir=str(out), raw_dir=str(tmp_path)) \
        .replace("database", url=str(database))


def kill_a_busy_worker(client, stop, killed):
    """SIGKILL the worker process of the first reduction job seen running for ~1 s."""
    seen = {}
    while not stop.is_set():
        for address, keys in client.processing().items():
            for key in keys:
                if str(key).startswith("run_job") and seen.get(key, 0) >= 3:
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed.append((key, pid))
                    return
                seen[key] = seen.get(key, 0) + 1
        stop.wait(0.3)


@pytest.fixture(scope="module")
def reprocessed(archive, tmp_path_factory):
    """Three nights reprocessed in-process on two workers; one worker killed mid-job."""
    tmp = tmp_path_factory.mktemp("reprocessed")
    out, database = tmp / "out", tmp / "gw.db"
    config = settings(tmp, out, database)
    plan = plan_archive([archive], exclude=[out])
    client, cluster = open_client(workers=2, max_tries=3)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_busy_worker, args=(client, stop, killed))
    db.open_database(str(database), create=True)
    try:
        killer.start()
        t0 = time.perf_counter()
        summary = reprocess(config, plan, DaskExecutor(client, retries=2))
        seconds = time.perf_counter() - t0
    finally:
        stop.set()
        killer.join()
        db.close_database()
        client.close()
        cluster.close()
    return {"out": out, "db": database, "summary": summary, "killed": killed,
            "seconds": seconds}


@pytest.mark.slow
def test_three_nights_with_a_worker_killed_mid_job(reprocessed, archive):
    summary, out, database = reprocessed["summary"], reprocessed["out"], reprocessed["db"]
    assert reprocessed["killed"], "no worker was seen running a job"
    assert summary.sequences == {"DONE": 8} and summary.failed == []
    assert product_files(out) == expected_products()
    assert sorted(p.name for p in (out / "calibrations" / "processed_flat").iterdir()) == [
        "S20170505S0030_flat.fits", "S20170610S0030_flat.fits"]
    paths = [p for (p,) in query(database, "select path from product")]
    assert len(paths) == len(set(paths))
    assert all(state == "DONE" for (state,) in query(database, "select state from job"))
    # each night's science with the nearest flat within 30 days: B (no flats of its own)
    # 15 days from A's, 21 from C's
    flats = dict(query(database, "select p.filename, c.filename from product_calibration pc "
                                 "join product p on pc.product_id = p.id join product c on "
                                 "pc.calibration_id = c.id where pc.caltype='processed_flat'"))
    for name, flat in (("S20170505S0095_skyCorrected.fits", "S20170505S0030_flat.fits"),
                       ("S20170520S0095_skyCorrected.fits", "S20170505S0030_flat.fits"),
                       ("S20170610S0095_skyCorrected.fits", "S20170610S0030_flat.fits"),
                       ("S20170609S0114_skyCorrected.fits", "S20170610S0030_flat.fits")):
        assert flats[name] == flat, name
        assert fits.getheader(out / name, 0)["FLATIM"] == flat
    # bad files: quarantined with one-line reasons
    errors = dict(query(database, "select path, error from frame where state='quarantined'"))
    by_name = {Path(p).name: e for p, e in errors.items()}
    assert "not a FITS file" in by_name["S20170505S0200.fits"]
    assert "truncated" in by_name["S20170610S0201.fits"]
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())


def test_since_and_until_select_frames_by_ut_date(archive):
    plan = plan_archive([archive], since=dt.date(2017, 5, 19), until=dt.date(2017, 5, 31))
    names = sorted(Path(p).name for phase in plan.phases for p, _ in phase)
    # night B's science and the static BPMs (undated) of the three nights
    assert names == sorted(["bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"] * 3
                           + [f"S20170520S{n:04d}.fits" for n in range(95, 111)])
    assert plan.outside == 30 + 16 + 30 + 4 + 16
    assert sorted(Path(p).name for p, _ in plan.rejected) == ["S20170505S0200.fits",
                                                              "S20170610S0201.fits"]


@pytest.mark.slow
def test_same_products_and_rows_as_the_daemon(reprocessed, archive, tmp_path):
    raw, out, database = tmp_path / "raw", tmp_path / "reduced", tmp_path / "gw.db"
    shutil.copytree(archive / "20170610", raw)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(DAEMON.format(raw=raw, out=out, log=tmp_path / "gw.log", db=database)
                   + SETTINGS.replace("[jobs]\nmax_tries = 3\n", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                states = query(database, "select state from sequence")
                jobs = query(database, "select recipe, state from job")
            except sqlite3.OperationalError:
                states, jobs = [], []
            if len(states) == 4 and all(s == "DONE" for (s,) in states) \
                    and ("stack", "DONE") in jobs \
                    and all(s in ("DONE", "FAILED") for _, s in jobs):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the daemon did not reduce the night in time")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    mine = reprocessed["out"]
    night = [n for n in product_files(mine) if n.startswith(("S20170610", "S20170609"))]
    assert product_files(out) == night
    for name in night + ["calibrations/processed_flat/S20170610S0030_flat.fits"]:
        with fits.open(out / name) as theirs, fits.open(mine / name) as ours:
            assert len(theirs) == len(ours), name
            for a, b in zip(theirs, ours):
                assert a.name == b.name, name
                if a.data is not None and a.is_image:
                    np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-6,
                                               err_msg=f"{name}[{a.name}]")

    def rows(path):
        products = query(path, "select filename, kind, is_calibration, data_label, "
                               "filter_name, read_mode, qa is not null from product "
                               "where filename like 'S2017061%' or filename like 'S2017060%'")
        links = query(path, "select p.filename, c.filename, pc.caltype from "
                            "product_calibration pc join product p on pc.product_id = p.id "
                            "join product c on pc.calibration_id = c.id where p.filename "
                            "like 'S2017061%' or p.filename like 'S2017060%'")
        seqs = query(path, "select key, kind, state, quicklook from sequence where key like "
                           "'%CAL20170610%' or key like 'GS-2017A-Q-29-36%'")
        jobs = query(path, "select s.key, j.recipe, j.state from job j join sequence s on "
                           "j.sequence_id = s.id where s.key like '%CAL20170610%' or "
                           "s.key like 'GS-2017A-Q-29-36%'")
        return sorted(products), sorted(links), sorted(seqs), sorted(set(jobs))

    theirs, ours = rows(database), rows(reprocessed["db"])
    assert len(theirs[0]) == len(night) and len(theirs[2]) == 4
    assert ours == theirs


@pytest.mark.slow
def test_client_killed_then_rerun_resumes(tmp_path):
    day = dt.date(2017, 7, 1)
    raw, out, database = tmp_path / "raw", tmp_path / "out", tmp_path / "gw.db"
    simulate_night(raw, seed=41, size=64, workers=2, date=day,
                   only=["flats", "science", "bpm"])
    (tmp_path / "settings.toml").write_text(SETTINGS)
    cmd = [sys.executable, "-m", "gsaoi_watch", "reprocess", str(raw), "--output-dir",
           str(out), "-d", str(database), "-c", str(tmp_path / "settings.toml")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "first.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                running = query(database, "select count(*) from job where recipe='images' "
                                          "and state='RUNNING'")[0][0]
            except sqlite3.OperationalError:
                running = 0
            if running:
                break
            assert proc.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the science job never started")
        time.sleep(1.0)  # mid-job
        os.kill(proc.pid, signal.SIGKILL)  # the client alone
        proc.wait(timeout=10)
        for _ in range(100):  # its cluster's workers end with it
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("workers outlived the killed client")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = dict(query(database, "select recipe, state from job"))
    assert before == {"flat": "DONE", "images": "RUNNING"}
    flat = out / "S20170701S0030_flat.fits"
    made = flat.stat().st_mtime_ns
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr + (tmp_path / "first.txt").read_text()
    assert "sequences: 3 DONE" in rerun.stdout
    assert flat.stat().st_mtime_ns == made  # the finished flat was not made again
    jobs = query(database, "select recipe, state, tries from job order by id")
    assert jobs == [("flat", "DONE", 1), ("images", "DONE", 2), ("stack", "DONE", 1)]
    assert product_files(out) == sorted(["S20170701S0030_flat.fits"] + science(day))
    paths = [p for (p,) in query(database, "select path from product")]
    assert len(paths) == len(set(paths))
    # one row per product; the flat's is its served copy; and the static BPM's
    assert sorted(Path(p).name for p in paths) == sorted(
        product_files(out) + ["bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"])
    assert str(out / "calibrations" / "processed_flat" / flat.name) in paths
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # a product gone from the disk: made again by its job, nothing else redone
    stack = out / "S20170701S0095_stack.fits"
    stack.unlink()
    reduced = {p.name: p.stat().st_mtime_ns for p in out.glob("*_skyCorrected.fits")}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stack.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_skyCorrected.fits")} == reduced
    assert query(database, "select recipe, state, tries from job order by id") == [
        ("flat", "DONE", 1), ("images", "DONE", 2), ("stack", "DONE", 2)]
    assert query(database, "select checksum from product where path = ?", str(stack)) == [
        (db.checksum(stack),)]


def test_refused_while_a_daemon_watches_a_directory_it_re_reduces(tmp_path, capsys):
    """A daemon on another raw directory of the same database is no obstacle (each engine
    acts on its own rows); one watching a directory the reprocess would re-reduce is: it
    stops at once in one line."""
    from gsaoi_watch.calibration import daemons, db
    from gsaoi_watch.cli.main import main

    raw, elsewhere = tmp_path / "archive" / "20170505", tmp_path / "tonight"
    raw.mkdir(parents=True)
    elsewhere.mkdir()
    url = str(tmp_path / "shared.db")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        db.open_database(url, create=True)
        try:  # alive, on this host, watching another directory
            daemons.register_daemon(30.0, pid=other.pid, owner=daemons.owner_of(elsewhere))
        finally:
            db.close_database()
        assert main(["reprocess", str(raw), "--output-dir", str(tmp_path / "out"),
                     "-d", url]) == 0
        capsys.readouterr()
        db.open_database(url)
        try:  # now it watches a night inside the archive
            db.Daemon.update(owner=daemons.owner_of(raw)).execute()
        finally:
            db.close_database()
        code = main(["reprocess", str(raw.parent), "--output-dir", str(tmp_path / "out"),
                     "-d", url])
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("gsaoi-watch reprocess: another gsaoi-watch daemon is running "
                             f"on this database for raw directory {raw.resolve()}"), err


def test_a_flat_that_cannot_be_made_fails_alone_and_is_tried_again_by_the_next_run(
        tmp_path, capsys):
    """A deterministic failure (lamp-on frames without light: on - off is not positive)
    fails its job after one run, not max_tries; the night's science is reduced quick-look,
    the summary names the failure and the exit status is 1.  A rerun tries the failed flat
    again (the cause may have been fixed) and redoes nothing that was finished."""
    from gsaoi_watch.cli.main import main

    raw = tmp_path / "night"
    simulate_night(raw, seed=12, size=64, workers=2, only=["flats", "science", "bpm"])
    for n in range(30, 45):  # the lamp-on frames: the lamp never lit
        path = raw / f"S20170505S{n:04d}.fits"
        with fits.open(path, mode="update") as hdul:
            for hdu in hdul[1:]:
                hdu.data[...] = 0
    out, url = tmp_path / "out", str(tmp_path / "gw.db")
    args = ["reprocess", str(raw), "--output-dir", str(out), "-d", url, "--workers", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "flat" in err, err[-2000:]
    jobs = query(url, "select recipe, state, tries from job order by id")
    flat_jobs = [j for j in jobs if j[0] == "flat"]
    assert flat_jobs == [("flat", "FAILED", 1)], jobs
    states = dict(query(url, "select kind, state from sequence where kind like 'flat%'"))
    assert states == {"flat_on": "FAILED", "flat_off": "FAILED"}  # the job's two lamps
    science = query(url, "select state, quicklook from sequence where kind = 'science'")
    assert science == [("QUICKLOOK", 1)]
    sky = sorted(out.glob("*_skyCorrected.fits"))
    assert len(sky) == 9 and all(fits.getheader(p)["QUICKLK"] for p in sky)
    before = {p.name: p.stat().st_mtime_ns for p in sky}
    assert main(args) == 1  # the rerun: the flat, both lamps, fails again, once
    assert "failed in an earlier run" in capsys.readouterr().err
    jobs_again = query(url, "select recipe, state, tries from job order by id")
    assert [j for j in jobs_again if j[0] == "flat"] == [("flat", "FAILED", 1)] * 2
    flat_paths = [len(json.loads(p)["paths"]) for (p,) in query(
        url, "select parameters from job where recipe = 'flat' order by id")]
    assert flat_paths == [30, 30]  # never a K-band flat of the lamp-on frames alone
    assert [j for j in jobs_again if j[0] != "flat"] == [j for j in jobs if j[0] != "flat"]
    assert {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("*_skyCorrected.fits"))} \
        == before
    assert query(url, "select count(*) from frame")[0][0] == len(list(raw.glob("*.fits")))
