"""The fault battery (issue 12): the daemon as a real process under hostile conditions.

Each test drives ``python -m gsaoi_watch run`` through its command line on real files and
a real SQLite file, injects one fault, and asserts that every valid frame ends as part of a
product or with a logged reason, that no product is duplicated or half-written, and that
the daemon is still running at the end (SIGTERM then exits 0).  See ``faultkit.py``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import faultkit as fk
import pytest
from astropy.io import fits

pytestmark = [pytest.mark.faults, pytest.mark.slow]

CALIB_NIGHT = fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM] + fk.STANDARD
CALIB_PRODUCTS = [fk.FLAT_PRODUCT] + [n.replace(".fits", "_skyCorrected.fits")
                                      for n in fk.STANDARD]
SCIENCE_PRODUCTS = [n for n in fk.NIGHT_PRODUCTS if n.startswith("S20170505S01")
                    or n.startswith("S20170505S009")]


@pytest.fixture(scope="session")
def night(tmp_path_factory):
    """The simulated tutorial night at 128 pixels (the command line's simulator)."""
    return fk.simulate(tmp_path_factory.mktemp("night128"), size=128)


@pytest.fixture(scope="session")
def night512(tmp_path_factory):
    """Flats and science at 512 pixels: jobs long enough to be killed in the middle."""
    return fk.simulate(tmp_path_factory.mktemp("night512"), size=512,
                       only=["flats", "science", "bpm", "standard"])


@pytest.fixture
def daemons():
    """A factory of daemons on temporary directories; all are killed at teardown."""
    made = []

    def make(tmp_path, **settings):
        d = fk.Daemon(tmp_path, **settings)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def wait_calibrations_and_standard(d, timeout=240):
    d.wait_for(lambda: d.products_exist(CALIB_PRODUCTS) and d.quiet(), timeout,
               "the master flat and the standard's four products")


def assert_no_sequence_failed(d):
    failed = d.query("select key, reason from sequence where state = 'FAILED'")
    assert not failed, f"sequences failed: {failed}\n" + "\n".join(
        ln for ln in d.log_text().splitlines() if " ERROR " in ln)[-3000:]


def assert_the_usual(d, *, failures_allowed=False):
    if not failures_allowed:
        assert_no_sequence_failed(d)
    fk.assert_accounted(d)
    fk.assert_products_whole(d)
    fk.assert_still_running_then_stop(d)


# --- a. the database locked by another process ----------------------------------------------
@pytest.mark.parametrize("hold", [5, 60])
def test_a_exclusive_lock_on_the_database_while_frames_arrive(night, tmp_path, daemons, hold):
    d = daemons(tmp_path)
    d.start()
    fk.drop_all(night, fk.FLATS_ON, d.raw)
    d.wait_for(lambda: d.query("select count(*) from frame")[0][0] >= 5, 60,
               "the first lamp-on frames to be ingested")
    con = sqlite3.connect(d.db, isolation_level=None, timeout=60)
    con.execute("BEGIN EXCLUSIVE")
    locked_at = time.monotonic()
    try:
        rest = fk.FLATS_OFF + [fk.BPM] + fk.STANDARD
        fk.drop_all(night, rest, d.raw, pause=min(hold * 0.8 / len(rest), 1.0))
        while time.monotonic() < locked_at + hold:
            time.sleep(0.2)
        assert d.running(), f"the daemon exited while the database was locked " \
                            f"({d.proc.returncode}):\n{d.log_text()[-3000:]}"
    finally:
        con.execute("ROLLBACK")
        con.close()
    released_at = time.monotonic()
    wait_calibrations_and_standard(d)
    if hold >= 60:  # a database that stays unavailable: the heartbeat goes on and says so
        during = [(t, m) for t, m in d.messages if locked_at + 15 <= t <= released_at]
        assert any(m == "WATCHDOG=1" for t, m in during if t >= released_at - 20), \
            "no WATCHDOG=1 in the last 20 s of the lock: systemd would kill the daemon"
        statuses = [m for _, m in during if m.startswith("STATUS=")]
        assert any("database" in m.lower() for m in statuses), \
            f"the heartbeat did not say the database was unavailable: {statuses[-3:]}"
    assert_the_usual(d)


# --- b. a worker killed in the middle of a job -------------------------------------------------
def running_worker(d, recipe, timeout=120):
    """The pool process busy with the running ``recipe`` job (by CPU use), from /proc."""
    d.wait_for(lambda: d.query("select count(*) from job where recipe=? and state='RUNNING'",
                               recipe)[0][0] == 1, timeout, f"a {recipe} job to run")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in fk.descendants(d.pid) if "resource_tracker" not in fk.cmdline(p)]
        pid, ticks = fk.busiest(pids, window=0.5)
        if pid is not None and ticks > 0:
            return pid
    d.fail(f"a busy worker process for the {recipe} job")


def test_b_kill_9_of_a_worker_mid_job(night512, tmp_path, daemons):
    # max_tries = 1: a worker's death is not the job's fault and must not use up its tries;
    # prepare_ahead off: the science job is the only work in the pool when it is killed
    d = daemons(tmp_path, prepare_ahead="false", max_tries=1)
    d.start()
    fk.drop_all(night512, fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM] + fk.SCIENCE, d.raw)
    worker = running_worker(d, "images")
    assert d.query("select state from job where recipe='images'") == [("RUNNING",)]
    os.kill(worker, signal.SIGKILL)
    d.wait_for(lambda: not fk.alive(worker), 30, "the killed worker to be gone")
    fk.drop_all(night512, fk.STANDARD, d.raw)  # more work for the pool: it must be whole again
    d.wait_for(lambda: d.products_exist(SCIENCE_PRODUCTS + CALIB_PRODUCTS[1:]) and d.quiet(),
               300, "the science job to be retried and to complete after its worker was "
               "killed, and the standard to be reduced by the pool after it")
    jobs = d.query("select j.state from job j join sequence s on j.sequence_id = s.id "
                   "where s.kind = 'science' and j.recipe = 'images' order by j.id")
    assert jobs[-1] == ("DONE",), jobs
    assert d.query("select state from sequence where kind='science'") == [("DONE",)]
    assert_the_usual(d)


# --- c. the daemon killed in the middle of a job, then restarted -------------------------------
def _product_files(out):
    return {p.name: p.stat().st_mtime_ns for p in Path(out).rglob("*.fits")
            if ".prepared" not in p.parts}


def test_c_kill_9_of_the_daemon_mid_job_then_restart(night512, tmp_path, daemons):
    d = daemons(tmp_path, prepare_ahead="false")
    d.start()
    fk.drop_all(night512, fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM] + fk.SCIENCE, d.raw)
    running_worker(d, "images")
    old_pid = d.pid
    family = {p: fk.cmdline(p) for p in fk.descendants(old_pid)}
    before = _product_files(d.out)
    os.kill(old_pid, signal.SIGKILL)  # the daemon alone, not its process group
    d.proc.wait(timeout=30)
    deadline = time.monotonic() + 5  # PR_SET_PDEATHSIG (or equivalent) acts at once
    while time.monotonic() < deadline and any(fk.alive(p) for p in family):
        time.sleep(0.1)
    survivors = {p: c for p, c in family.items() if fk.alive(p)}
    deadline = time.monotonic() + 30  # for the report: what the orphans go on to do
    while time.monotonic() < deadline and any(fk.alive(p) for p in survivors):
        time.sleep(0.2)
    lingering = [p for p in survivors if fk.alive(p)]
    after = _product_files(d.out)
    written_by_orphans = sorted(n for n, m in after.items() if before.get(n) != m)
    for p in lingering:
        os.kill(p, signal.SIGKILL)
    d.start()
    d.wait_for(lambda: d.products_exist(SCIENCE_PRODUCTS) and d.quiet(), 300,
               "the night to be reduced after the restart")
    orphans = {p: c[:70] for p, c in survivors.items()}
    assert not survivors and not written_by_orphans, (
        f"processes of the killed daemon outlived it by 5 s: {orphans}; still alive 30 s "
        f"later: {lingering}; files they wrote after the daemon died: {written_by_orphans}")
    jobs = d.query("select j.id, j.state from job j join sequence s on j.sequence_id = s.id "
                   "where s.kind = 'science' and j.recipe = 'images' order by j.id")
    assert [state for _, state in jobs] == ["DONE"], jobs
    assert fk.runs(d, jobs[0][0]) == 2, "the interrupted run and the one that completed"
    assert_the_usual(d)


# --- d. the output file system full, then space freed ----------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A 64 MB tmpfs mounted for the test (root only), unmounted at teardown."""
    with fk.tmpfs(tmp_path / "reduced", "64m", mode="0755") as mnt:
        yield mnt


def fill(directory) -> Path:
    """A ballast file taking every free byte of the file system."""
    ballast = Path(directory) / "ballast.bin"
    block = b"\0" * (1 << 20)
    with open(ballast, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


NO_SPACE = re.compile(r"no space|ENOSPC|disk full|file system (is )?full", re.I)


def test_d_full_output_file_system_then_space_freed(night, tmp_path, small_fs, daemons):
    d = daemons(tmp_path, out=small_fs)
    ballast = fill(small_fs)
    d.start()
    fk.drop_all(night, CALIB_NIGHT, d.raw)
    d.wait_for(lambda: NO_SPACE.search(d.log_text()) or d.query(
        "select count(*) from job where error is not null or state in ('RETRY','FAILED')"
    )[0][0] > 0, 180, "a job to fail for lack of space")
    assert NO_SPACE.search(d.log_text()), "the log does not say the disk is full:\n" + \
        d.log_text()[-3000:]
    ballast.unlink()  # no operator action beyond freeing the space
    wait_calibrations_and_standard(d, timeout=240)
    assert_the_usual(d)


# --- e. ORIGNAME pointing outside the output directory ---------------------------------------
@pytest.fixture
def abs_dir():
    """/tmp/abs, existing (a hostile header names a directory that exists), as it was found."""
    path = Path("/tmp/abs")
    made = not path.exists()
    path.mkdir(exist_ok=True)
    yield path
    if made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def beside(tmp_path):
    """What is beside the test's directory now; whatever appears there is removed after."""
    before = set(os.listdir(tmp_path.parent))
    yield before
    for name in set(os.listdir(tmp_path.parent)) - before:
        path = tmp_path.parent / name
        if path.is_file() and name.startswith("x"):
            path.unlink()


def sequences_settled(d, kind):
    rows = d.query("select state from sequence where kind = ?", kind)
    return bool(rows) and all(s in ("DONE", "FAILED", "QUICKLOOK") for (s,) in rows) \
        and d.quiet()


def test_e_orignames_never_choose_the_product_path(night, tmp_path, daemons, abs_dir, beside):
    abs_before = sorted(abs_dir.rglob("*"))
    parent_before = beside
    d = daemons(tmp_path)
    fk.drop_all(night, fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM, fk.STANDARD[0]], d.raw)
    for name, orig in zip(fk.STANDARD[1:], ["../../x.fits", "/tmp/abs/x.fits",
                                            fk.STANDARD[0]]):
        fk.edit_header(night / name, tmp_path / name, ORIGNAME=orig)
        fk.drop(tmp_path / name, d.raw)
        (tmp_path / name).unlink()
    (tmp_path / "cwd").mkdir()
    d.start(cwd=tmp_path / "cwd")
    d.wait_for(lambda: sequences_settled(d, "standard"), 240, "the standard to be reduced")
    after = sorted(abs_dir.rglob("*"))
    assert after == abs_before, f"written under /tmp/abs: {after}"
    new = sorted(set(os.listdir(tmp_path.parent)) - parent_before)
    assert not [n for n in new if n.startswith("x")], f"written beside the test dir: {new}"
    stray = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                   if p.relative_to(tmp_path).parts[0] not in ("raw", "reduced")
                   and (p.name.startswith("x") or p.suffix in (".fits", ".png", ".html")))
    assert not stray, f"products outside the output directory: {stray}"
    for name in fk.STANDARD:  # each product keeps its raw file's name and its own data
        product = d.out / name.replace(".fits", "_skyCorrected.fits")
        assert fits.getval(product, "DATALAB") == fits.getval(night / name, "DATALAB"), name
    assert_the_usual(d)


# --- f. non-ASCII, space and newline file names ----------------------------------------------
FORGED = "2017-05-05 00:00:00,000 ERROR forged"
ODD_NAMES = {"S20170504S0114.fits": "S20170504S0114 copy.fits",
             "S20170504S0115.fits": "S20170504S0115_Ω_é.fits",
             "S20170504S0116.fits": "S20170504S0116\nFORGED line.fits",
             "S20170504S0117.fits": f"S20170504S0117\n{FORGED}.fits"}
SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def test_f_odd_file_names(night, tmp_path, daemons):
    d = daemons(tmp_path)
    d.start()
    fk.drop_all(night, fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM], d.raw)
    for src, odd in ODD_NAMES.items():
        fk.drop(night / src, d.raw, name=odd)
    d.wait_for(lambda: d.products_exist([fk.FLAT_PRODUCT]) and d.query(
        "select count(*) from frame")[0][0] == 35 and d.quiet(), 240,
        "the flat and the four oddly named frames to be dealt with")
    assert_no_sequence_failed(d)  # an odd name is that frame's problem, not its sequence's
    fk.assert_accounted(d)
    products = [p.name for p in d.out.glob("*.fits")]
    unsafe = [n for n in products if not SAFE.fullmatch(n)]
    assert not unsafe, f"product names outside a safe character set: {unsafe}"
    states = dict(d.query("select path, state from frame"))
    for src, odd in ODD_NAMES.items():
        if states[str((d.raw / odd).resolve())] == "used":
            stem = src[:-5]
            assert any(n.startswith(stem) and "_skyCorrected" in n for n in products), \
                f"{odd!r} was used but no product carries its name: {sorted(products)}"
    fk.assert_log_well_formed(d)
    lines = d.log_text().split("\n")
    assert not [ln for ln in lines if ln.startswith(("FORGED", FORGED[:23]))], \
        "a file name forged a log line"
    fk.assert_products_whole(d)
    fk.assert_still_running_then_stop(d)


# --- g. a symlink to a frame outside the raw directory --------------------------------------
def test_g_symlink_out_of_the_raw_directory(night, tmp_path, daemons):
    d = daemons(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "outside_target.fits"
    shutil.copyfile(night / fk.STANDARD[3], target)
    d.start()
    fk.drop_all(night, fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM], d.raw)
    # the link lands before the standard's frames: by the time the standard is reduced, the
    # daemon has had its event and a rescan (rescan_seconds = 2) to pick it up
    (d.raw / "link_to_outside.fits").symlink_to(target)
    fk.drop_all(night, fk.STANDARD[:3], d.raw)
    d.wait_for(lambda: d.products_exist([fk.FLAT_PRODUCT] + [
        n.replace(".fits", "_skyCorrected.fits") for n in fk.STANDARD[:3]]) and d.quiet(),
        240, "the flat and the standard's three real frames")
    log = d.log_text()
    assert "outside_target" not in log and "S20170504S0117" not in log, \
        [ln for ln in log.splitlines() if "outside_target" in ln or "S20170504S0117" in ln]
    assert not d.query("select path from frame where path like '%outside_target%'")
    made = [p.name for p in d.out.rglob("*") if "S20170504S0117" in p.name
            or "link_to_outside" in p.name or "outside_target" in p.name]
    assert not made, f"products from the symlinked frame: {made}"
    assert d.query("select count(*) from product where filename like 'S20170504S%'"
                   )[0][0] == 3
    assert_the_usual(d)


# --- h. a late lamp-on frame after the master flat -------------------------------------------
def test_h_late_lamp_on_frame_remakes_the_flat_and_what_used_it(night, tmp_path, daemons):
    d = daemons(tmp_path)
    d.start()
    late = fk.FLATS_ON[-1]
    fk.drop_all(night, fk.FLATS_ON[:-1] + fk.FLATS_OFF + [fk.BPM] + fk.STANDARD, d.raw)
    wait_calibrations_and_standard(d)
    flat = d.out / fk.FLAT_PRODUCT
    assert fits.getval(flat, "NCOMBINE") == 29
    std = [d.out / n for n in CALIB_PRODUCTS[1:]]
    first = {p: p.stat().st_mtime_ns for p in [flat, *std]}
    fk.drop(night / late, d.raw)
    d.wait_for(lambda: all(p.stat().st_mtime_ns != first[p] for p in first) and d.quiet()
               and fits.getval(flat, "NCOMBINE") == 30, 240,
               "the flat re-made from all 30 frames and the standard reduced again with it")
    header = fits.getheader(flat)
    assert "off" in str(header.get("FLATMETH", "lamp-off")).lower(), header.get("FLATMETH")
    states = dict(d.query("select path, state from frame"))
    assert [states[str((d.raw / n).resolve())] for n in fk.FLATS_ON + fk.FLATS_OFF] == \
        ["used"] * 30
    assert all(p.stat().st_mtime_ns > flat.stat().st_mtime_ns for p in std), \
        "a standard product older than the flat it should use"
    for p in std:
        assert fits.getval(p, "FLATIM") == fk.FLAT_PRODUCT
    served = d.query("select c.path from product_calibration pc join product c on "
                     "pc.calibration_id = c.id join product p on pc.product_id = p.id "
                     "where p.filename = ? and pc.caltype = 'processed_flat'",
                     CALIB_PRODUCTS[1])
    assert len(served) == 1 and Path(served[0][0]).exists(), served
    assert fits.getval(served[0][0], "NCOMBINE") == 30
    assert d.query("select count(*) from sequence where state = 'DONE'")[0][0] == \
        d.query("select count(*) from sequence")[0][0]
    assert_the_usual(d)


# --- i. a frame without EXPTIME --------------------------------------------------------------
def test_i_frame_without_exptime(night, tmp_path, daemons):
    d = daemons(tmp_path)
    bad = fk.STANDARD[2]
    fk.edit_header(night / bad, tmp_path / bad, EXPTIME=None)
    d.start()
    names = fk.FLATS_ON + fk.FLATS_OFF + [fk.BPM] + fk.SCIENCE
    fk.drop_all(night, names + [n for n in fk.STANDARD if n != bad], d.raw)
    fk.drop(tmp_path / bad, d.raw)
    rest = [fk.FLAT_PRODUCT] + SCIENCE_PRODUCTS + [
        n.replace(".fits", "_skyCorrected.fits") for n in fk.STANDARD if n != bad]
    d.wait_for(lambda: d.products_exist(rest) and d.quiet() and bad[:-5] in d.log_text(), 300,
               "the rest of the night reduced and the frame without EXPTIME reported")
    assert d.query("select recipe, tries from job where tries > 1") == [], "retried"
    stem = bad[:-5]
    reasons = [ln for ln in d.log_text().splitlines() if stem in ln
               and re.search(r" (WARNING|ERROR) ", ln)]
    assert reasons and any(re.search(r"EXPTIME|exposure", ln, re.I) for ln in reasons), \
        f"no reason naming {bad}: {reasons}"
    assert len(reasons) <= 2, f"reported again and again: {reasons}"
    assert "Traceback" not in d.log_text()
    assert_the_usual(d, failures_allowed=True)  # a frame's own sequence may fail, once


# --- j. bad configuration values -------------------------------------------------------------
BAD_VALUES = [("sequences", "idle_timeout", "inf"),
              ("sequences", "idle_timeout", "nan"),
              ("jobs", "workers", "1e11"),
              ("jobs", "workers", "100000000000"),
              ("database", "url", '"mysql://gsaoi@dbhost/gsaoi_watch"'),
              ("watch", "settle_seconds", "-1"),
              ("watch", "give_up_seconds", "-inf"),
              ("sequences", "flat_wait", "-5.0"),
              ("sequences", "min_quiet", "-1"),
              ("service", "heartbeat_seconds", "-10")]


@pytest.mark.parametrize("section,key,value", BAD_VALUES,
                         ids=[f"{s}.{k}={v}" for s, k, v in BAD_VALUES])
def test_j_bad_config_values_exit_2_naming_section_and_key(tmp_path, section, key, value):
    cfg = fk.CONFIG.format(raw=tmp_path / "raw", out=tmp_path / "reduced",
                           log=tmp_path / "gw.log", db=tmp_path / "gw.db", idle_timeout=3,
                           flat_wait=600, max_tries=3, prepare_ahead="true")
    lines, current = [], None
    for line in cfg.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key} ="):
            line = f"{key} = {value}"
        lines.append(line)
    assert f"{key} = {value}" in lines
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(path)],
                                stdout=subprocess.DEVNULL, stderr=err_file,
                                env=fk.environment(), start_new_session=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            log = tmp_path / "gw.log"
            if log.exists() and " ready: " in log.read_text():
                break  # the configuration was accepted
            time.sleep(0.1)
        accepted = proc.poll() is None
        if accepted:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    err = err_path.read_text()
    if accepted:
        pytest.fail(f"{section}.{key} = {value} was accepted: the daemon started\n{err[-2000:]}")
    said = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(said) == 1, said
    assert section in said[0] and key in said[0], said[0]


# --- k. files readable by others under umask 022 --------------------------------------------
def test_k_products_pictures_and_page_follow_umask_022(night, tmp_path, daemons):
    d = daemons(tmp_path)
    d.start(umask=0o022)
    fk.drop_all(night, CALIB_NIGHT, d.raw)
    wait_calibrations_and_standard(d)
    d.wait_for(lambda: (d.out / "index.html").exists() and len(list(d.out.glob("*.png"))) >= 5,
               60, "the pictures and the summary page")
    files = [p for p in d.out.rglob("*") if p.is_file() and ".prepared" not in p.parts]
    files.append(d.db)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in files}
    wrong = {n: oct(m) for n, m in modes.items() if m != 0o644}
    assert not wrong, f"not 0644 under umask 022: {wrong}"
    kinds = {Path(n).suffix for n in modes}
    assert {".fits", ".png", ".html", ".db"} <= kinds, kinds
    assert_the_usual(d)
