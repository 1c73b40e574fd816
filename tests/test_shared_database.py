"""Several engines on one calibration database, at once: two daemons on two raw directories
and a reprocess of a third.  Each reduces its own frames and only those (its sequences and
jobs carry its owner); calibrations are shared: a night without flats is reduced with the
other daemon's flat.  On SQLite and on PostgreSQL."""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from astropy.io import fits
from test_daemon import CONFIG

from gsaoi_watch.calibration import db
from gsaoi_watch.sim import simulate_night

pytestmark = pytest.mark.slow

#: (seed, science date, groups): A has its flats, B has none (A's, 15 days before, is the
#: nearest within 30 days), C (reprocessed) is more than 30 days from both.
NIGHTS = {"A": (12, dt.date(2017, 5, 5), None),
          "B": (13, dt.date(2017, 5, 20), ["standard", "science", "bpm"]),
          "C": (14, dt.date(2017, 7, 1), ["flats", "science", "bpm"])}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared_stages")
    for name, (seed, day, only) in NIGHTS.items():
        simulate_night(root / name, seed=seed, size=64, workers=2, date=day, only=only)
    return root


def _gsaoi(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "gsaoi_watch", *args], **kw)


def _query(url, fn):
    db.open_database(url)
    try:
        return fn()
    finally:
        db.close_database()


def _daemon_config(tmp_path, name, url):
    raw, out = tmp_path / f"raw_{name}", tmp_path / f"out_{name}"
    raw.mkdir()
    cfg = tmp_path / f"{name}.toml"
    # sequences end only when the operator closes them (the close reaches both daemons)
    cfg.write_text(CONFIG.format(raw=raw, out=out, log=tmp_path / f"{name}.log", db=url)
                   .replace("idle_timeout = 3", "idle_timeout = 3600"))
    return raw, out, cfg


def _drop(src, raw):
    shutil.copy(src, raw / f".{src.name}.tmp")
    os.replace(raw / f".{src.name}.tmp", raw / src.name)


def test_two_daemons_and_a_reprocess_share_one_database(stages, database_url, tmp_path):
    url = database_url
    db.open_database(url, create=True)
    db.close_database()
    raw_a, out_a, cfg_a = _daemon_config(tmp_path, "A", url)
    raw_b, out_b, cfg_b = _daemon_config(tmp_path, "B", url)
    procs = {}
    errs = {n: open(tmp_path / f"{n}.stderr", "wb") for n in ("A", "B", "C")}
    try:
        for n, cfg in (("A", cfg_a), ("B", cfg_b)):
            procs[n] = _gsaoi("run", "-c", str(cfg), stdout=subprocess.DEVNULL,
                              stderr=errs[n], start_new_session=True)
        deadline = time.monotonic() + 60
        while _query(url, lambda: db.Daemon.select().count()) < 2:
            assert time.monotonic() < deadline, (tmp_path / "A.stderr").read_text()
            assert all(p.poll() is None for p in procs.values())
            time.sleep(0.2)
        # a second daemon on A's raw directory is refused in one line; one per directory
        _, out_a2, cfg_a2 = _daemon_config(tmp_path, "A2", url)
        cfg_a2.write_text(cfg_a2.read_text().replace(str(tmp_path / "raw_A2"), str(raw_a)))
        second = subprocess.run([sys.executable, "-m", "gsaoi_watch", "run", "-c",
                                 str(cfg_a2)], capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"running on this database for raw directory {raw_a.resolve()} on " \
               f"{socket.gethostname()}" in second.stderr, second.stderr
        # the reprocess of a third directory runs beside them
        out_c = tmp_path / "out_C"
        procs["C"] = _gsaoi("reprocess", str(stages / "C"), "--output-dir", str(out_c),
                            "-d", url, "--workers", "1", stdout=subprocess.DEVNULL,
                            stderr=errs["C"], start_new_session=True)
        files_a = sorted((stages / "A").glob("*.fits"))
        files_b = sorted((stages / "B").glob("*.fits"))
        for k in range(max(len(files_a), len(files_b))):  # both nights land at once
            for files, raw in ((files_a, raw_a), (files_b, raw_b)):
                if k < len(files):
                    _drop(files[k], raw)
            time.sleep(0.05)
        n_ab = len(files_a) + len(files_b)
        raws = (str(raw_a.resolve()), str(raw_b.resolve()))

        def landed():
            return db.Frame.select().where(db.Frame.path.startswith(raws[0])
                                           | db.Frame.path.startswith(raws[1])).count()

        deadline = time.monotonic() + 120
        while _query(url, landed) < n_ab:
            assert time.monotonic() < deadline, "frames not ingested"
            assert procs["A"].poll() is None and procs["B"].poll() is None
            time.sleep(0.5)
        close = subprocess.run([sys.executable, "-m", "gsaoi_watch", "close", "--all", "-d",
                                url], capture_output=True, text=True, timeout=60)
        assert close.returncode == 0, close.stderr
        assert "close requested of 2 daemons" in close.stdout, close.stdout

        def finished():
            states = [s.state for s in db.Sequence.select()]
            live = db.Job.select().where(db.Job.state.in_(
                ("RUNNING", "SUBMITTED", "RETRY", "WAITING"))).count()
            stacks = db.Job.select().where((db.Job.recipe == "stack")
                                           & (db.Job.state == "DONE")).count()
            return len(states) == 4 + 2 + 3 and set(states) == {"DONE"} and live == 0 \
                and stacks == 3

        deadline = time.monotonic() + 420
        while not (_query(url, finished) and procs["C"].poll() is not None):
            assert time.monotonic() < deadline, (
                "not reduced in time\n" + (tmp_path / "B.log").read_text()[-3000:])
            assert procs["A"].poll() is None and procs["B"].poll() is None
            time.sleep(0.5)
        assert procs["C"].returncode == 0, (tmp_path / "C.stderr").read_text()[-3000:]
        status = subprocess.run([sys.executable, "-m", "gsaoi_watch", "status", "-d", url],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "Daemons" in status.stdout and str(raw_a.resolve()) in status.stdout \
            and str(raw_b.resolve()) in status.stdout, status.stdout
        for whose in (f"raw directory {raw_a.resolve()} on {socket.gethostname()}",
                      f"raw directory {raw_b.resolve()} on {socket.gethostname()}",
                      "an archive re-reduction (reprocess)"):
            assert f"Sequences of {whose}" in status.stdout, status.stdout
        for n in ("A", "B"):
            procs[n].send_signal(signal.SIGTERM)
            assert procs[n].wait(timeout=60) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in errs.values():
            f.close()

    db.open_database(url)
    try:
        owner_a = f"{socket.gethostname()}:{raw_a.resolve()}"
        owner_b = f"{socket.gethostname()}:{raw_b.resolve()}"
        frames = list(db.Frame.select())
        expected = sorted([str(p.resolve()) for p in raw_a.glob("*.fits")]
                          + [str(p.resolve()) for p in raw_b.glob("*.fits")]
                          + [str(p.resolve()) for p in (stages / "C").glob("*.fits")])
        assert sorted(f.path for f in frames) == expected  # every raw file once
        assert {f.state for f in frames} <= {"ingested", "used"}, Counter(
            f.state for f in frames)
        # each engine's sequences are its own, formed from its own directory's frames
        owners = Counter(s.owner for s in db.Sequence.select())
        assert owners == {owner_a: 4, owner_b: 2, "reprocess": 3}, owners
        for seq in db.Sequence.select():
            root = {owner_a: raws[0], owner_b: raws[1]}.get(seq.owner,
                                                             str((stages / "C").resolve()))
            assert all(f.path.startswith(root) for f in seq.frames), seq.key
            assert {j.owner for j in seq.jobs} <= {seq.owner}  # a flat's job is on one lamp
        reduced = set()
        for job in db.Job.select().where(db.Job.state == "DONE"):
            reduced |= {job.sequence_id, *json.loads(job.parameters).get("sequences", [])}
        assert reduced >= {s.id for s in db.Sequence.select()}  # every sequence reduced
        assert db.Job.select().where(db.Job.state == "FAILED").count() == 0
        # nothing duplicated: one row per product file, and no file made twice
        products = Counter(p.filename for p in db.Product.select())
        assert max(products.values()) == 1, products.most_common(3)
        assert products["S20170505S0030_flat.fits"] == 1
        assert products["S20170701S0030_flat.fits"] == 1
        assert not any(n.startswith("S20170520") and n.endswith("_flat.fits")
                       for n in products)
        # night B, without flats, was reduced with daemon A's flat (the nearest in 30 days)
        flat_a = db.Product.get(db.Product.filename == "S20170505S0030_flat.fits")
        b_frames = [p for p in db.Product.select().join(db.Job).where(
            (db.Job.owner == owner_b) & (db.Product.kind == "sky_corrected"))]
        assert len(b_frames) == 4 + 9  # the standard's dithers and the science objects
        for p in b_frames:
            assert [c.calibration.id for c in p.calibrations_used
                    if c.caltype == "processed_flat"] == [flat_a.id], p.filename
            assert fits.getheader(p.path)["FLATIM"] == "S20170505S0030_flat.fits"
            assert Path(p.path).parent == out_b
        # the close reached each daemon: one request each, both done
        commands = list(db.Command.select())
        assert sorted(c.owner for c in commands) == sorted([owner_a, owner_b])
        assert all(c.done is not None for c in commands)
        assert db.Daemon.select().count() == 0  # A and B unregistered, the reprocess too
    finally:
        db.close_database()
    log_a, log_b = (tmp_path / "A.log").read_text(), (tmp_path / "B.log").read_text()
    assert "S20170520S" not in log_a and "S20170701S" not in log_a  # A saw only its own
    assert "S20170505S0" not in log_b.replace("S20170505S0030_flat", "")
