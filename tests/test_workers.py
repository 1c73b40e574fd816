"""The real daemon: workers die with it, a worker killed mid-job costs no try, a full disk
is waited out.

``python -m gsaoi_watch run -c CFG`` on a simulated night, its SQLite file read with the
``sqlite3`` module and its processes seen in ``/proc``.
"""

import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import alive, descendants, proc_stat, tmpfs

from gsaoi_watch.sim import simulate_night

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
[paths]
raw_dir = "{dir}/raw"
output_dir = "{out}"
log_file = "{dir}/gw.log"
[database]
url = "{dir}/gw.db"
[watch]
settle_seconds = 0.5
rescan_seconds = 2
[sequences]
idle_timeout = 3
min_quiet = 1
tick_seconds = 0.3
[jobs]
workers = 1
max_tries = 1
prepare_ahead = false
[service]
heartbeat_seconds = 1
"""


@pytest.fixture(scope="module")
def flats(tmp_path_factory):
    out = tmp_path_factory.mktemp("worker_flats")
    simulate_night(out, seed=5, size=512, workers=1, only=["flats", "bpm"])
    return out


class Daemon:
    def __init__(self, tmp_path, out=None):
        self.dir = tmp_path
        self.out = out or tmp_path / "reduced"
        (tmp_path / "raw").mkdir()
        self.cfg = tmp_path / "gw.toml"
        self.cfg.write_text(CONFIG.format(dir=tmp_path, out=self.out))
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.dir / "stderr.txt", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c",
                                          str(self.cfg)], env=env, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        self.wait_for(lambda: " ready: " in self.log(), 120, "the daemon to be ready")

    def log(self):
        path = self.dir / "gw.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def query(self, sql):
        con = sqlite3.connect(f"file:{self.dir / 'gw.db'}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (sqlite3.OperationalError, OSError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        err = (self.dir / "stderr.txt").read_text(errors="replace")[-3000:]
        pytest.fail(f"timed out waiting for {what} (daemon exit {self.proc.poll()})\n"
                    f"--- log\n{self.log()[-4000:]}\n--- stderr\n{err}")

    def drop_all(self, stage):
        for src in sorted(Path(stage).glob("*.fits")):
            tmp = self.dir / "raw" / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.rename(self.dir / "raw" / src.name)

    def flat_running(self):
        return self.query("select count(*) from job where recipe = 'flat' and "
                          "state = 'RUNNING'")[0][0] == 1

    def busy_worker(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # the pool's workers are children of the forkserver, not of the daemon
            pids = [p for p in descendants(self.proc.pid)
                    if (proc_stat(p) or ("X", 0, 0))[1] != self.proc.pid]
            before = {p: (proc_stat(p) or ("X", 0, 0))[2] for p in pids}
            time.sleep(0.3)
            used = {p: (proc_stat(p) or ("X", 0, 0))[2] - before[p] for p in pids}
            if used and max(used.values()) > 0:
                return max(used, key=used.get)
        pytest.fail("no busy worker process")

    def close(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(timeout=30)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.close()


def test_no_worker_outlives_a_killed_daemon(flats, daemon):
    daemon.start()
    daemon.drop_all(flats)
    daemon.wait_for(daemon.flat_running, 180, "the flat job to run")
    daemon.busy_worker()
    everyone = descendants(daemon.proc.pid)
    assert len(everyone) >= 2, everyone  # the forkserver and a worker at least
    os.kill(daemon.proc.pid, signal.SIGKILL)  # the daemon alone, not its process group
    daemon.proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in everyone):
        time.sleep(0.05)
    survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in everyone
                 if alive(p)}
    assert not survivors, f"processes of the killed daemon outlived it by 5 s: {survivors}"


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(flats, daemon):
    daemon.start()
    daemon.drop_all(flats)
    daemon.wait_for(daemon.flat_running, 180, "the flat job to run")
    worker = daemon.busy_worker()
    os.kill(worker, signal.SIGKILL)
    flat = daemon.dir / "reduced" / "S20170505S0030_flat.fits"
    daemon.wait_for(lambda: flat.exists() and daemon.query(
        "select count(*) from sequence where state != 'DONE'")[0][0] == 0, 300,
        "the flat job to be run again and to complete (max_tries = 1)")
    assert daemon.query("select state, tries, crashes from job where recipe = 'flat'") == \
        [("DONE", 1, 1)]
    log = daemon.log()
    assert "worker died (signal 9" in log and "Traceback" not in log
    assert daemon.proc.poll() is None, "the daemon exited"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def small_flats(tmp_path_factory):
    out = tmp_path_factory.mktemp("worker_small_flats")
    simulate_night(out, seed=5, size=128, workers=1, only=["flats", "bpm"])
    return out


@pytest.fixture
def full_fs(tmp_path):
    """An 8 MB tmpfs (root only) filled up by a ballast file; unmounted at teardown."""
    with tmpfs(tmp_path / "reduced", "8m") as mnt:
        ballast = mnt / "ballast.bin"
        with open(ballast, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mnt, ballast


def test_a_full_disk_is_waited_out_and_the_job_resumes_once_space_is_freed(
        small_flats, tmp_path, full_fs):
    mnt, ballast = full_fs
    d = Daemon(tmp_path, out=mnt)
    try:
        d.start()
        d.drop_all(small_flats)
        waiting = re.compile(r"WARNING job=1 flat failed: \[Errno 28\] No space left on device: "
                             r"'[^']+_flat\.fits'; a transient cause: next try at .* \(in 10 s\)")
        d.wait_for(lambda: waiting.search(d.log()), 180, "the flat job to wait for space")
        assert d.query("select state, tries from job where recipe = 'flat'") == [("RETRY", 1)]
        assert "_file" not in d.log()
        assert not [p.name for p in mnt.rglob("*") if p.name.endswith(".tmp")]
        ballast.unlink()  # no operator action beyond freeing the space
        d.wait_for(lambda: d.query("select state from job where recipe = 'flat'") ==
                   [("DONE",)], 120, "the flat job to resume by itself")
        assert d.query("select state, tries, crashes from job") == [("DONE", 1, 0)]
        assert (mnt / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits").exists()
        assert "Traceback" not in d.log()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=60) == 0
    finally:
        d.close()
