"""A harness for fault tests: the daemon as a real process, driven only by its command line.

Nothing here imports gsaoi_watch: frames come from ``python -m gsaoi_watch simulate``, the
daemon is ``python -m gsaoi_watch run -c CONFIG``, and what it did is read from its SQLite
file (the ``sqlite3`` module), its log file, its products and ``/proc``.  The tests built on
it therefore do not depend on how the package is laid out inside.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from astropy.io import fits

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
idle_timeout = {idle_timeout}
min_quiet = 1
flat_wait = {flat_wait}
tick_seconds = 0.3
[jobs]
workers = 1
max_tries = {max_tries}
prepare_ahead = {prepare_ahead}
[service]
heartbeat_seconds = 1
"""

#: The checkout these tests belong to: the daemon processes run its code.
REPO = Path(__file__).resolve().parents[1]

#: One log record: ``2017-05-05 01:02:03,456 INFO    message`` (logs.LOG_FORMAT).
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                      r" +\S.*")

#: The simulated night (``simulate``'s file names).
STANDARD = [f"S20170504S{n:04d}.fits" for n in range(114, 118)]
FLATS_ON = [f"S20170505S{n:04d}.fits" for n in range(30, 45)]
FLATS_OFF = [f"S20170505S{n:04d}.fits" for n in range(60, 75)]
SCIENCE = [f"S20170505S{n:04d}.fits" for n in range(95, 111)]
BPM = "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"
FLAT_PRODUCT = "S20170505S0030_flat.fits"
#: Products of the whole night (test_daemon.EXPECTED): flat, 4 + 9 sky-corrected, 7 skies, stack.
NIGHT_PRODUCTS = ([FLAT_PRODUCT]
                  + [f"S20170504S{n:04d}_skyCorrected.fits" for n in range(114, 118)]
                  + [f"S20170505S{n:04d}_skyCorrected.fits" for n in range(95, 111, 2)]
                  + ["S20170505S0110_skyCorrected.fits"]
                  + [f"S20170505S{n:04d}_flatCorrected.fits" for n in range(96, 110, 2)]
                  + ["S20170505S0095_stack.fits"])

#: Frame states that end a frame's story (part of a product, or a reason).
GOOD_END = ("used", "ignored")
REASON_END = ("quarantined", "unusable", "failed", "rejected")


def environment(**extra) -> dict:
    """The environment for a gsaoi_watch process: this checkout first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def gsaoi_watch(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m gsaoi_watch ARGS`` and return the completed process (text output)."""
    kwargs.setdefault("env", environment())
    return subprocess.run([sys.executable, "-m", "gsaoi_watch", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def simulate(outdir, *, seed=20170505, size=128, only=None) -> Path:
    """A simulated raw night written by the command line (``simulate``)."""
    args = ["simulate", outdir, "--seed", seed, "--size", size, "--workers", 1]
    if only:
        args += ["--only", ",".join(only)]
    proc = gsaoi_watch(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return Path(outdir)


def drop(src, dst_dir, *, name=None) -> Path:
    """Land a raw frame as an atomic writer does: a temporary name, then a rename."""
    dst = Path(dst_dir) / (name or Path(src).name)
    tmp = Path(dst_dir) / f".landing_{os.getpid()}_{time.monotonic_ns()}.tmp"
    shutil.copyfile(src, tmp)
    tmp.rename(dst)
    return dst


def drop_all(stage, names, dst_dir, *, pause=0.02):
    """Drop the named frames of ``stage`` in order."""
    for n in names:
        drop(Path(stage) / n, dst_dir)
        time.sleep(pause)


def edit_header(src, dst, **cards):
    """Copy a raw frame with primary-header cards changed (value None deletes the card)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(src) as hdul:
            for key, value in cards.items():
                if value is None:
                    hdul[0].header.remove(key, ignore_missing=True)
                else:
                    hdul[0].header[key] = value
            hdul.writeto(dst, overwrite=True, output_verify="silentfix")
    return Path(dst)


# --- file systems ---------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(mnt, size, *, mode=None):
    """Mount a tmpfs of ``size`` (e.g. ``"8m"``) at ``mnt`` (root only); unmount after.

    Skips the test, with the reason, where mounting is not permitted.
    """
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",mode={mode}" if mode else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# --- /proc ----------------------------------------------------------------------------------
def proc_stat(pid):
    """(state, ppid, utime + stime ticks) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12])


def alive(pid) -> bool:
    """True if the process exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid) -> str:
    """The process's command line (NULs as spaces), '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def descendants(pid) -> list[int]:
    """Every living descendant of ``pid`` (children, grandchildren, ...)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[0] not in ("Z", "X"):
                parent_of[int(entry)] = st[1]
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        found += kids
        frontier += kids
    return found


def busiest(pids, *, window=0.5) -> tuple[int | None, int]:
    """The process among ``pids`` that used the most CPU over ``window`` s, and its ticks."""
    before = {p: (proc_stat(p) or ("X", 0, 0))[2] for p in pids}
    time.sleep(window)
    best, ticks = None, -1
    for p in pids:
        st = proc_stat(p)
        if st is None:
            continue
        if st[2] - before[p] > ticks:
            best, ticks = p, st[2] - before[p]
    return best, ticks


# --- the daemon -------------------------------------------------------------------------------
class Daemon:
    """One daemon process on a temporary directory: raw, output, database, log, notify socket.

    Parameters
    ----------
    tmp_path : pathlib.Path
        Its working directory.
    out : pathlib.Path, optional
        The output directory (default ``tmp_path / "reduced"``).
    **settings
        Config template values: ``idle_timeout``, ``flat_wait``, ``max_tries``,
        ``prepare_ahead``.
    """

    def __init__(self, tmp_path, *, out=None, **settings):
        self.dir = Path(tmp_path)
        self.raw = self.dir / "raw"
        self.out = Path(out) if out is not None else self.dir / "reduced"
        self.db = self.dir / "gw.db"
        self.log = self.dir / "gw.log"
        self.raw.mkdir(exist_ok=True)
        self.cfg = self.dir / "gw.toml"
        values = {"idle_timeout": 3, "flat_wait": 600, "max_tries": 3, "prepare_ahead": "true"}
        values.update(settings)
        self.cfg.write_text(CONFIG.format(raw=self.raw, out=self.out, log=self.log, db=self.db,
                                          **values))
        self.sock_path = str(self.dir / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []  # (monotonic time, datagram)
        self.proc = None
        self.stderr = None
        self.pgids: set[int] = set()
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()

    def _listen(self):  # drain the socket as systemd does
        while self._listening:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (TimeoutError, OSError):
                pass

    def start(self, *, umask=None, cwd=None, ready_timeout=60):
        """Start ``run -c CONFIG`` (in ``cwd``, under ``umask``) and wait for READY=1."""
        env = environment(NOTIFY_SOCKET=self.sock_path)
        if self.stderr is not None:
            self.stderr.close()
        self.stderr = open(self.dir / "stderr.txt", "ab")  # noqa: SIM115
        kwargs = {} if umask is None else {"umask": umask}
        self.messages.clear()
        self.proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c",
                                      str(self.cfg)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True,
                                     cwd=cwd, **kwargs)
        self.pgids.add(self.proc.pid)
        if not self.wait_message("READY=1", ready_timeout):
            self.fail("READY=1 from the daemon")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_message(self, text, timeout, *, since=0.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m == text and t >= since for t, m in list(self.messages)):
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def query(self, sql, *args):
        """Rows of a read-only query on the daemon's database."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def fail(self, what):
        """pytest.fail with the log tail, stderr tail and the daemon's thread stacks."""
        if self.running():
            self.proc.send_signal(signal.SIGUSR1)  # thread dump into stderr.txt
            time.sleep(1)
        err = (self.dir / "stderr.txt").read_text(errors="replace")[-5000:] \
            if (self.dir / "stderr.txt").exists() else ""
        state = "running" if self.running() else f"exited {self.proc.returncode}" \
            if self.proc else "not started"
        pytest.fail(f"timed out waiting for {what} (daemon {state})\n--- log\n"
                    f"{self.log_text()[-4000:]}\n--- stderr\n{err}")

    def wait_for(self, predicate, timeout=180, what="", *, while_running=True):
        """Poll ``predicate`` until true; fail with diagnostics at the deadline.

        With ``while_running``, a daemon that exits also fails the wait at once.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (sqlite3.OperationalError, OSError):
                pass
            if while_running and not self.running():
                self.fail(what + " -- the daemon exited")
            time.sleep(0.25)
        self.fail(what)

    def products_exist(self, names) -> bool:
        return all((self.out / n).exists() for n in names)

    def quiet(self) -> bool:
        """No sequence in flight and no job waiting, submitted, running or to be retried."""
        busy = self.query("select count(*) from sequence where state not in "
                          "('DONE','FAILED','QUICKLOOK')")[0][0]
        jobs = self.query("select count(*) from job where state not in ('DONE','FAILED')")[0][0]
        return busy == 0 and jobs == 0

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Send ``sig`` to the daemon process and return its exit status."""
        if self.running():
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode if self.proc else None

    def close(self):
        """Kill whatever is left of every daemon started here (its process groups)."""
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._listening = False
        self._listener.join(timeout=2)
        self.sock.close()
        if self.stderr is not None:
            self.stderr.close()


# --- what every fault test asserts ------------------------------------------------------------
def raw_frames(raw_dir) -> list[Path]:
    """Regular FITS files landed in the raw directory (not symlinks, not temporary names)."""
    return sorted(p for p in Path(raw_dir).iterdir()
                  if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
                  and p.name.lower().endswith(".fits"))


def assert_accounted(daemon, raw_files=None):
    """Every valid raw frame ends as part of a product or with a logged reason.

    A frame row must exist for each raw file, in a final state: ``used`` / ``ignored``, or a
    failure state with its reason in the row and a log line naming the file.
    """
    raw_files = raw_frames(daemon.raw) if raw_files is None else raw_files
    rows = {p: (s, e, q) for p, s, e, q in daemon.query(
        "select f.path, f.state, f.error, s.state from frame f "
        "left join sequence s on f.sequence_id = s.id")}
    log = daemon.log_text()
    problems = []
    for f in raw_files:
        row = rows.get(str(Path(f).resolve()))
        if row is None:
            problems.append(f"{f.name!r}: no frame row")
            continue
        state, error, seq_state = row
        if state in GOOD_END:
            continue
        if seq_state == "FAILED" and "FAILED" in log:  # its sequence failed, with a reason
            continue
        if state in REASON_END and error:
            if not any(_names(Path(f).stem, line) for line in log.split("\n")):
                problems.append(f"{f.name!r}: {state} ({error}) but no log line names it")
            continue
        problems.append(f"{f.name!r}: left in state {state!r} (error {error!r})")
    assert not problems, "frames not accounted for:\n" + "\n".join(problems)


def _names(stem, line) -> bool:
    """True if a log line names the file: as it is, escaped, or by its plain leading part."""
    plain = re.match(r"[A-Za-z0-9_.+-]*", stem).group(0)
    return stem in line or stem.encode("unicode_escape").decode("ascii") in line or (
        len(plain) >= 5 and plain in line)


def runs(daemon, job_id) -> int:
    """How many times a job ran: its tries plus any separate count of crashes/interruptions."""
    con = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        row = dict(con.execute("select * from job where id = ?", (job_id,)).fetchone())
    finally:
        con.close()
    extra = sum(v for k, v in row.items() if isinstance(v, int) and k != "tries"
                and ("crash" in k or "interrupt" in k))
    return row["tries"] + extra


def _extnames(hdul):
    return [(str(h.header.get("EXTNAME", "")).strip(), h.header.get("EXTVER")) for h in hdul[1:]]


def assert_products_whole(daemon):
    """Every product opens, is complete, has its extensions; no duplicates, no temp files."""
    out = daemon.out
    problems = []
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*")
                 if p.is_file() and (p.name.startswith(".") or p.name.endswith(
                     (".tmp", ".part", ".partial")))
                 and ".prepared" not in p.relative_to(out).parts[:1]]
    leftovers += [str(p.relative_to(out)) for p in (out / ".prepared").rglob("*.tmp")] \
        if (out / ".prepared").is_dir() else []
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    for path in sorted(out.rglob("*.fits")):
        if ".prepared" in path.relative_to(out).parts:
            continue
        size = path.stat().st_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(path, memmap=False) as hdul:
                    end = max(h.fileinfo()["datLoc"] + h.fileinfo()["datSpan"] for h in hdul)
                    names = _extnames(hdul)
                    for h in hdul:
                        _ = h.data
        except Exception as exc:  # noqa: BLE001 -- a product that does not open is the finding
            problems.append(f"{path.name}: does not open ({exc})")
            continue
        if end > size:
            problems.append(f"{path.name}: truncated ({size} of {end} bytes)")
        want = ({("SCI", 1), ("VAR", 1), ("DQ", 1)} if path.name.endswith("_stack.fits") else
                {(e, v) for e in ("SCI", "VAR", "DQ") for v in (1, 2, 3, 4)})
        if "_" in path.stem and not want <= set(names):
            problems.append(f"{path.name}: extensions {names}, missing {sorted(want - set(names))}")
    rows = daemon.query("select path, filename from product where kind != 'processed_bpm'")
    paths = [p for p, _ in rows]
    names = [n for _, n in rows]
    if len(paths) != len(set(paths)) or len(names) != len(set(names)):
        problems.append(f"duplicate product rows: {sorted(n for n in names if names.count(n) > 1)}")
    for p, n in rows:
        if not Path(p).exists():
            problems.append(f"product row {n} has no file ({p})")
    on_disk = {p.name for p in out.glob("*.fits")}
    registered = set(names)
    if not on_disk <= registered:
        problems.append(f"product files with no row: {sorted(on_disk - registered)}")
    assert not problems, "products not whole:\n" + "\n".join(problems)


def assert_still_running_then_stop(daemon):
    """The daemon survived the fault; SIGTERM then ends it with status 0."""
    assert daemon.running(), f"the daemon exited ({daemon.proc.returncode}):\n" \
                             f"{daemon.log_text()[-3000:]}"
    assert daemon.stop(signal.SIGTERM) == 0


def assert_log_well_formed(daemon):
    """Every line of the log is one record in the log format."""
    bad = [line for line in daemon.log_text().split("\n") if line and not LOG_LINE.fullmatch(line)]
    assert not bad, "log lines not in the log format:\n" + "\n".join(map(repr, bad[:20]))
