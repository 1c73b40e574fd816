"""End-to-end: the daemon as a real process, real files, real threads, a real database."""

import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsaoi_watch.sim import reference_catalogue, simulate_night, write_reference_catalogue

pytestmark = pytest.mark.slow

CONFIG = """
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


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage")
    simulate_night(out, seed=12, size=64, workers=2)
    return out


@pytest.fixture(scope="module")
def refcat(tmp_path_factory):
    """A Gaia-like catalogue of the stage's science field, beyond Gaia's depth (G < 30):
    64-pixel arrays detect few stars, and those are not all brighter than G = 21."""
    path = tmp_path_factory.mktemp("refcat") / "field_gaia.csv"
    write_reference_catalogue(path, reference_catalogue(12, 64, g_limit=30.0))
    return path


class Daemon:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.raw = tmp_path / "raw"
        self.out = tmp_path / "reduced"
        self.db = tmp_path / "gw.db"
        self.log = tmp_path / "gw.log"
        self.raw.mkdir(exist_ok=True)
        self.cfg = tmp_path / "gw.toml"
        self.cfg.write_text(CONFIG.format(raw=self.raw, out=self.out, log=self.log, db=self.db))
        self.sock_path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.proc = None
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()

    def _listen(self):  # drain the socket as systemd does
        while self._listening:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, OSError):
                pass

    def start(self):
        env = dict(os.environ, NOTIFY_SOCKET=self.sock_path)
        if getattr(self, "stderr", None):
            self.stderr.close()
        self.stderr = open(self.dir / "stderr.txt", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c",
                                      str(self.cfg)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        assert self.wait_message("READY=1", 30)

    def wait_message(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m == text for m in list(self.messages)):
                return True
            time.sleep(0.05)
        return False

    def query(self, sql, *args):
        with sqlite3.connect(self.db, timeout=10) as con:
            return con.execute(sql, args).fetchall()

    def wait_for(self, predicate, timeout=120, what=""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(0.2)
        log = self.log.read_text() if self.log.exists() else ""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # thread dump into stderr.txt
            time.sleep(1)
        err = (self.dir / "stderr.txt").read_text()[-6000:]
        pytest.fail(f"timed out waiting for {what}\n{log[-3000:]}\n--- stderr\n{err}")

    def settled(self, n_sequences):
        states = self.query("select state from sequence")
        running = self.query("select count(*) from job where state in "
                             "('RUNNING','SUBMITTED','RETRY')")[0][0]
        return len(states) == n_sequences and all(s == "DONE" for (s,) in states) \
            and running == 0

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(
                sig)
            return self.proc.wait(timeout=30)
        return self.proc.returncode if self.proc else None

    def close(self):
        self.stop(signal.SIGKILL)
        self._listening = False
        self._listener.join(timeout=2)
        self.sock.close()
        if getattr(self, "stderr", None):
            self.stderr.close()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.close()


def drop(src, dst_dir, *, name=None, slow=False):
    dst = Path(dst_dir) / (name or src.name)
    data = src.read_bytes()
    if slow:  # written in place in chunks, as a slow copy would
        with open(dst, "wb") as fh:
            for k in range(3):
                fh.write(data[k * len(data) // 3:(k + 1) * len(data) // 3])
                fh.flush()
                time.sleep(0.15)
    else:  # the atomic-writer pattern: temporary name, then rename
        tmp = Path(dst_dir) / f".{dst.name}.tmp"
        tmp.write_bytes(data)
        tmp.rename(dst)
    return dst


EXPECTED = (["S20170505S0030_flat.fits"]
            + [f"S20170504S{n:04d}_skyCorrected.fits" for n in range(114, 118)]
            + [f"S20170505S{n:04d}_skyCorrected.fits" for n in range(95, 111, 2)]
            + ["S20170505S0110_skyCorrected.fits"]
            + [f"S20170505S{n:04d}_flatCorrected.fits" for n in range(96, 110, 2)]
            + ["S20170505S0095_stack.fits"])


def test_a_shuffled_night_with_bad_files(stage, refcat, daemon):
    with open(daemon.cfg, "a") as fh:
        fh.write(f'[stack]\nreference_catalog = "{refcat}"\n')
    daemon.start()
    files = sorted(stage.glob("*.fits"))
    random.Random(3).shuffle(files)
    for k, f in enumerate(files):
        drop(f, daemon.raw, slow=k % 7 == 0)
        time.sleep(0.02)
    drop(files[5], daemon.raw, name="copy_of_" + files[5].name)          # copied twice
    (daemon.raw / "S20170505S0200.fits").write_text("garbage\n" * 500)   # corrupt
    niri = daemon.raw / "N20170505S0001.fits"
    with fits.open(files[0]) as hdul:
        hdul[0].header["INSTRUME"] = "NIRI"
        hdul.writeto(niri)                                              # another instrument
    (daemon.raw / "S20170505S0201.fits").write_bytes(files[1].read_bytes()[:20000])  # cut
    daemon.wait_for(lambda: daemon.settled(4) and all((daemon.out / n).exists()
                                                      for n in EXPECTED),
                    what="the night to be reduced")
    daemon.wait_for(lambda: daemon.query(
        "select count(*) from frame where path like '%S0201.fits' and state='quarantined'"
    )[0][0] == 1, what="the truncated file to be given up")
    assert daemon.stop() == 0
    assert daemon.wait_message("STOPPING=1", 5)
    products = sorted(p.name for p in daemon.out.glob("*.fits"))
    assert products == sorted(EXPECTED)
    assert (daemon.out / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits").exists()
    rows = dict(daemon.query("select path, state from frame"))
    errors = dict(daemon.query("select path, error from frame where state='quarantined'"))
    for f in files:
        assert rows[str((daemon.raw / f.name).resolve())] == "used", f.name
    bad = {p: e for p, e in errors.items()}
    assert any("duplicate of" in e for p, e in bad.items() if "copy_of_" in p)
    assert any("not a FITS file" in e for p, e in bad.items() if p.endswith("S0200.fits"))
    assert any("not a GSAOI frame" in e for p, e in bad.items() if "N20170505" in p)
    assert any("truncated" in e for p, e in bad.items() if p.endswith("S0201.fits"))
    assert len(rows) == len(files) + 4
    names = [n for (n,) in daemon.query("select filename from product")]
    assert len(names) == len(set(names))  # every product once
    used = daemon.query(
        "select c.filename from product_calibration pc join product p on pc.product_id=p.id "
        "join product c on pc.calibration_id=c.id where p.filename=?",
        "S20170505S0095_skyCorrected.fits")
    assert ("S20170505S0030_flat.fits",) in used
    # quick-look: QA in the database and headers, pictures, the night summary page
    qa = dict(daemon.query("select filename, qa from product where kind='sky_corrected'"))
    assert len(qa) == 13 and all(v is not None for v in qa.values())
    assert "SKYLEVEL" in fits.getheader(daemon.out / "S20170505S0097_skyCorrected.fits")
    assert daemon.query("select kind from product where filename='S20170505S0095_stack.fits'"
                        ) == [("stack",)]
    # the stack on the reference catalogue: header, database, log
    phu = fits.getheader(daemon.out / "S20170505S0095_stack.fits", 0)
    assert phu["ASTROMET"] == "ABSOLUTE" and phu["ASTREFCT"] == "field_gaia.csv"
    (stack_qa,) = daemon.query("select qa from product where filename='S20170505S0095_stack.fits'")
    astrometry = json.loads(stack_qa[0])["astrometry"]
    assert astrometry["kind"] == "absolute" and astrometry["n_stars"] == phu["ASTNSTAR"] >= 10
    assert astrometry["rms"] == pytest.approx(phu["ASTRMS"], abs=1e-5)
    assert "absolute astrometry on field_gaia.csv" in daemon.log.read_text()
    assert daemon.query("select data_label, filter_name from product where "
                        "filename='S20170505S0095_stack.fits'") == [
        (phu["DATALAB"], "Kshort_G1105&Clear")]
    for name in ("S20170505S0030_flat.png", "S20170505S0095_skyCorrected.png",
                 "S20170505S0095_stack.png"):
        assert (daemon.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (daemon.out / "index.html").read_text()
    assert "S20170505S0095_stack.png" in page and "GS-2017A-Q-29-9 standard 9132" in page


def test_science_waits_for_flats_and_survives_kill_9(tmp_path_factory, daemon):
    stage = tmp_path_factory.mktemp("stage256")
    simulate_night(stage, seed=13, size=256, workers=2,
                   only=["flats", "science", "bpm", "standard"])
    daemon.start()
    science = sorted(stage.glob("S20170505S01*.fits")) + sorted(stage.glob("S20170505S009*"))
    for f in science + [stage / "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"]:
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.query(
        "select state from sequence where kind='science'") == [("WAITING",)],
        what="science to wait for its flat")
    for f in sorted(stage.glob("S20170505S00[3-7]*.fits")):
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.query(
        "select count(*) from job where recipe='images' and state='RUNNING'")[0][0] == 1,
        what="the science job to start")
    time.sleep(0.5)
    daemon.stop(signal.SIGKILL)  # the whole process group, as a crash would
    daemon.messages.clear()
    for f in sorted(stage.glob("S20170504S*.fits")):  # the standard lands while it is down
        drop(f, daemon.raw)
    daemon.start()
    daemon.wait_for(lambda: daemon.settled(4) and len(list(
        daemon.out.glob("*_skyCorrected.fits"))) == 9 + 4, what="the night after a restart")
    assert daemon.stop() == 0
    jobs = daemon.query("select s.kind, j.state, j.tries from job j join sequence s on "
                        "j.sequence_id = s.id where j.recipe='images' order by j.id")
    assert jobs == [("science", "DONE", 2), ("standard", "DONE", 1)]
    names = [n for (n,) in daemon.query("select filename from product")]
    assert len(names) == len(set(names)) == 1 + 9 + 4 + 7 + 1 + 1  # flat, products, BPM, stack
    frames = daemon.query("select count(*), count(distinct path) from frame")[0]
    assert frames[0] == frames[1] == 16 + 30 + 1 + 4
    log = daemon.log.read_text()
    assert log.index("science NGC5128 Kshort 60s: COMPLETE→WAITING") < log.index(
        "science NGC5128 Kshort 60s: WAITING→REDUCING")
    assert "interrupted by a restart" in log


def test_sigterm_exits_zero_promptly(daemon):
    daemon.start()
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 30
    assert daemon.wait_message("STOPPING=1", 5)
    assert any(m.startswith("STATUS=") for m in daemon.messages)


def test_config_errors_name_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[jobs]\nworkers = 2\nspeed = 3\n")
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown key(s) speed" in proc.stderr


def test_close_command_reaches_the_daemon(stage, daemon):
    daemon.cfg.write_text(daemon.cfg.read_text().replace("idle_timeout = 3",
                                                         "idle_timeout = 3000"))
    daemon.start()
    for f in sorted(stage.glob("S20170504S*.fits")):
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.query("select count(*) from frame")[0][0] == 4,
                    what="the standard frames")
    assert daemon.query("select state from sequence") == [("OPEN",)]
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "close", "--all", "-c",
                           str(daemon.cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    daemon.wait_for(lambda: daemon.query("select state from sequence") == [("WAITING",)],
                    what="the operator close")
    status = subprocess.run([sys.executable, "-m", "gsaoi_watch", "status", "-c",
                             str(daemon.cfg)], capture_output=True, text=True, timeout=60)
    assert "WAITING" in status.stdout and "9132" in status.stdout
    assert np.isfinite(1.0)
    shutil.rmtree(daemon.out, ignore_errors=True)


def test_quicklook_without_flat_then_redone_and_a_late_frame_reopens(stage, daemon):
    daemon.cfg.write_text(daemon.cfg.read_text().replace("flat_wait = 600", "flat_wait = 2"))
    daemon.start()
    science = sorted(stage.glob("S20170505S01*.fits")) + sorted(stage.glob("S20170505S009*"))
    late = stage / "S20170505S0109.fits"  # an on-target frame held back
    bpm = stage / "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"
    for f in [s for s in science if s != late] + [bpm]:
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.query("select state, quicklook from sequence") == [
        ("QUICKLOOK", 1)], what="a quick-look reduction without a flat")
    first = daemon.out / "S20170505S0095_skyCorrected.fits"
    assert fits.getval(first, "QUICKLK") == "no flat"
    assert len(list(daemon.out.glob("*_skyCorrected.fits"))) == 8
    for f in sorted(stage.glob("S20170505S00[3-7]*.fits")):
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.settled(3), what="the science to be redone with the flat")
    assert "QUICKLK" not in fits.getheader(first)
    assert fits.getval(first, "FLATIM") == "S20170505S0030_flat.fits"
    assert daemon.query("select quicklook from sequence where kind='science'") == [(0,)]
    drop(late, daemon.raw)
    daemon.wait_for(lambda: len(list(daemon.out.glob("*_skyCorrected.fits"))) == 9
                    and daemon.settled(3), what="the late frame to be reduced")
    assert daemon.stop() == 0
    names = [n for (n,) in daemon.query("select filename from product")]
    assert len(names) == len(set(names)) == 1 + 9 + 7 + 1 + 1
    log = daemon.log.read_text()
    assert "science NGC5128 Kshort 60s: WAITING→REDUCING (flat wait expired)" in log
    assert "(quick-look, no flat)" in log
    assert "science NGC5128 Kshort 60s: DONE→REOPENED (late frame after reduction)" in log


def test_demo_reduces_the_night_live(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "demo", "--workdir", str(work),
                           "--size", "64", "--cadence", "0.05", "--timeout", "300"],
                          capture_output=True, text=True, timeout=400)
    said = f"{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, said
    products = sorted(p.name for p in (work / "reduced").glob("*.fits"))
    assert products == sorted(EXPECTED), said
    assert "science NGC5128 Kshort 60s: REDUCING→DONE" in proc.stderr, said
    assert re.search(r"processed_flat +1 +S20170505S0030_flat.fits", proc.stdout), said
    assert re.search(r"sky_corrected +13 ", proc.stdout), said
    assert "quarantined" not in proc.stdout, said
    logged = (work / "gsaoi-watch.log").read_text()  # the log file the README tails
    assert "science NGC5128 Kshort 60s: REDUCING→DONE" in logged
    assert "gsaoi_watch starting" in logged
    # a second run replaces the earlier demo; a foreign directory is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "demo", "--workdir",
                           str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a gsaoi-watch demo directory" in proc.stderr
    assert (tmp_path / "other" / "keep.txt").exists()
