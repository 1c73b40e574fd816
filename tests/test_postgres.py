"""The database with several writers at once, on SQLite and PostgreSQL; PostgreSQL's errors.

Concurrent writers: processes (spawned) ingest the same raw frames from two directories
and register the same and different products at once; every row is there exactly once.
A daemon process on PostgreSQL reduces a small night end to end.
"""

import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.cli.main import main
from gsaoi_watch.sim import simulate_night

WRITERS = 4


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A small raw night: flats and a standard (64-pixel arrays)."""
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, seed=7, size=64, workers=1, only=["flats", "standard"])
    return out


class _Engine:
    """What ingest needs of the engine: a clock, counters, events (recorded, not run)."""

    def __init__(self):
        self.counts = Counter()
        self.events = []
        self.owner = "test-host:/raw"

    def now(self):
        return db._now()

    def emit(self, sequence_id, event, **kw):
        self.events.append((sequence_id, event))

    def close_superseded(self):
        pass


def _retrying(fn):
    """Run ``fn`` in one transaction; a database busy or a deadlock is retried, nothing else."""
    for attempt in range(200):
        try:
            with db.writing():
                return fn()
        except Exception as exc:
            if not db.unavailable(exc) or attempt == 199:
                raise
            time.sleep(0.02 * random.random())


def _writer(url, files, products, shared, seed, start_at):
    """One writer: ingest raw frames, register products and one shared calibration."""
    from gsaoi_watch.daemon import ingest
    from gsaoi_watch.daemon.events import FrameArrived
    from gsaoi_watch.data.fitsio import read_frame_info

    db.open_database(url, lock_timeout=5.0)
    engine = _Engine()
    # every writer the same frames and calibration in the same order, so that they collide
    # on each row at about the same moment; their own products in between
    work = [("frame", f) for f in files] + [("calibration", s) for s in shared]
    random.Random(0).shuffle(work)
    for k, p in enumerate(products):
        work.insert(random.Random(seed + k).randrange(len(work)), ("product", p))
    while time.time() < start_at:  # all writers start together
        time.sleep(0.005)
    for what, path in work:
        if what == "frame":
            info = read_frame_info(path)
            _retrying(lambda p=path, i=info: ingest.ingest(engine, FrameArrived(p, i)))
        else:
            _retrying(lambda p=path, w=what: queries.register_product(
                p, None, kind="processed_flat" if w == "calibration" else "sky_corrected",
                is_calibration=w == "calibration"))
    db.close_database()


def test_concurrent_writers_lose_and_duplicate_nothing(database_url, night, tmp_path):
    db.open_database(database_url, create=True)
    db.close_database()
    # two raw directories with the same frames (same data labels), as two daemons see them
    raws = [tmp_path / "raw_a", tmp_path / "raw_b"]
    frames = sorted(night.glob("S2017*.fits"))[::3]  # 12 frames of the three sequences
    for raw in raws:
        raw.mkdir()
        for f in frames:
            shutil.copy(f, raw / f.name)
    all_frames = [str(raw / f.name) for raw in raws for f in frames]
    # products: each writer its own, plus one calibration every writer registers from two
    # places (the product and its copy under calibrations/): one row by DRAGONS' rule
    (tmp_path / "calibrations" / "processed_flat").mkdir(parents=True)
    mine = []
    for w in range(WRITERS):
        paths = []
        for k in range(3):
            p = tmp_path / f"S2017050{w}S{k:04d}_skyCorrected.fits"
            p.write_bytes(os.urandom(512))
            paths.append(str(p))
        mine.append(paths)
    flat = tmp_path / "S20170505S0030_flat.fits"
    flat.write_bytes(os.urandom(2048))
    served = tmp_path / "calibrations" / "processed_flat" / flat.name
    shutil.copy(flat, served)
    shared = [str(flat), str(served)]

    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    procs = [ctx.Process(target=_writer, args=(database_url, all_frames, mine[w], shared, w,
                                               start_at)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    db.open_database(database_url)
    rows = list(db.Frame.select())
    assert sorted(r.path for r in rows) == sorted(str(Path(f).resolve()) for f in all_frames)
    ingested = [r for r in rows if r.state == "ingested"]
    quarantined = [r for r in rows if r.state == "quarantined"]
    # each data label once: one of its two copies joined a sequence, the other is a duplicate
    assert len(ingested) == len(quarantined) == len(frames)
    labels = [r.data_label for r in ingested]
    assert len(set(labels)) == len(labels) == len(frames)
    assert all("duplicate of" in r.error for r in quarantined)
    assert all(r.sequence_id is not None for r in ingested)
    keys = [s.key for s in db.Sequence.select()]
    assert len(keys) == len(set(keys)) == 3  # flats on, flats off, the standard
    assert sum(s.frames.count() for s in db.Sequence.select()) == len(frames)
    products = list(db.Product.select())
    made = sorted(str(Path(p).resolve()) for paths in mine for p in paths)
    assert sorted(p.path for p in products if not p.is_calibration) == made
    cals = [p for p in products if p.is_calibration]
    assert [(c.filename, c.path) for c in cals] == [(flat.name, str(served.resolve()))]
    assert len(products) == len(made) + 1


REGISTER = """
import sys, time
from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import DaemonRunningError, register_daemon
db.open_database(sys.argv[1], lock_timeout=20)
while time.time() < float(sys.argv[2]):
    time.sleep(0.002)
try:
    register_daemon(10.0)
    print("registered", flush=True)
except DaemonRunningError:
    print("refused", flush=True)
time.sleep(2)  # alive while the others try
"""


def test_daemons_starting_at_once_register_one(database_url):
    db.open_database(database_url, create=True)
    db.close_database()
    start_at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER, database_url, start_at],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert sorted(o.strip() for o, _ in outs) == ["refused"] * 3 + ["registered"], outs
    db.open_database(database_url)
    assert db.Daemon.select().count() == 1


def test_missing_driver_and_unreachable_server_are_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    assert main(["caldb", "list", "-d", "postgresql://astro:s3cret@db.example/gsaoi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3cret" not in err
    assert "postgresql://astro:***@db.example/gsaoi: PostgreSQL needs the psycopg driver" in err
    assert "pip install 'gsaoi-watch[postgres]'" in err
    monkeypatch.undo()
    for verb in (["caldb", "list"], ["status"], ["close", "--all"]):
        assert main([*verb, "-d", "postgres://astro:s3cret@127.0.0.1:1/gsaoi"]) == (
            2)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "s3cret" not in err and "Traceback" not in err
        assert "postgres://astro:***@127.0.0.1:1/gsaoi: cannot use the PostgreSQL database" \
            in err and "Connection refused" in err


@pytest.mark.parametrize("url,shown", [
    ("postgresql://astro:s3cret@db.example:5433/gsaoi",
     "postgresql://astro:***@db.example:5433/gsaoi"),
    ("postgres://astro@/gsaoi?host=/run/postgresql&port=5432",
     "postgres://astro@/gsaoi?host=/run/postgresql&port=5432"),
    ("postgresql:///gsaoi?host=/tmp&password=s3cret", "postgresql:///gsaoi?host=/tmp&password=***"),
    ("cal_manager.db", "cal_manager.db"),
])
def test_urls_are_shown_without_their_password(url, shown):
    assert db.describe_target(url) == shown
    assert db.is_postgres(url) == url.startswith("postgres")


def test_unix_socket_url_and_a_lost_connection_is_waited_out(fresh_postgres):
    from gsaoi_watch.daemon.boundary import Boundary

    assert "host=" in fresh_postgres  # the server of the tests listens on a unix socket
    db.open_database(fresh_postgres)
    with db.writing():
        db.Command.create(verb="close", argument="--all")
    pid = db.database.obj.connection().info.backend_pid
    with psycopg.connect("postgresql://" + fresh_postgres.split("://", 1)[1],
                         autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    done = []
    boundary = Boundary(lambda e: done.append(db.Command.select().count()),
                        lambda e, exc: pytest.fail(f"handled as a failure: {exc}"),
                        db._now)
    boundary.submit("event")  # the connection is gone: kept, not failed
    assert done == [] and boundary.waiting and "unavailable" in boundary.status()
    boundary.retry_at = 0.0
    boundary.retry()  # a new connection: handled, nothing lost
    assert done == [1] and not boundary.waiting


def test_pg_errors_that_mean_not_now(fresh_postgres):
    db.open_database(fresh_postgres)
    con = db.database.obj
    with pytest.raises(Exception) as serialization:
        with db.writing():
            con.execute_sql("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
    assert db.unavailable(serialization.value)
    with pytest.raises(Exception) as unique:
        with db.writing():
            db.Frame.create(path="/raw/a.fits")
            db.Frame.create(path="/raw/a.fits")
    assert not db.unavailable(unique.value)
    with pytest.raises(Exception) as missing:
        con.execute_sql("SELECT * FROM no_such_table")
    assert not db.unavailable(missing.value)


def test_caldb_init_wipe_on_a_server(fresh_postgres, capsys):
    db.open_database(fresh_postgres)
    with db.writing():
        db.Command.create(verb="close")
    db.close_database()
    assert main(["caldb", "init", "--wipe", "-d", fresh_postgres]) == 0
    db.open_database(fresh_postgres)
    assert db.Command.select().count() == 0 and db.SchemaInfo.select().count() == 1


def test_two_processes_create_a_new_schema_once(fresh_postgres):
    code = ("import sys; from gsaoi_watch.calibration import db; "
            "db.open_database(sys.argv[1], create=True)")
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_postgres],
                              stderr=subprocess.PIPE) for _ in range(3)]
    errs = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    db.open_database(fresh_postgres)
    assert [r.version for r in db.SchemaInfo.select()] == [db.SCHEMA_VERSION]


DAEMON_CONFIG = """
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


def _registered(url):
    db.open_database(url)
    try:
        return db.Daemon.select().count() == 1
    finally:
        db.close_database()


@pytest.mark.slow
def test_the_daemon_reduces_a_night_on_postgresql(fresh_postgres, tmp_path):
    from tests.test_daemon import EXPECTED

    stage = tmp_path / "stage"
    simulate_night(stage, seed=12, size=64, workers=2)
    raw, out, log = tmp_path / "raw", tmp_path / "reduced", tmp_path / "gw.log"
    raw.mkdir()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(DAEMON_CONFIG.format(raw=raw, out=out, log=log, db=fresh_postgres))
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not _registered(fresh_postgres):  # the daemon is up, connected
            assert time.monotonic() < deadline and proc.poll() is None, \
                (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.2)
        files = sorted(stage.glob("*.fits"))
        for k, f in enumerate(files):
            shutil.copy(f, raw / f".{f.name}.tmp")
            os.replace(raw / f".{f.name}.tmp", raw / f.name)
            if k == len(files) // 2:  # the server drops the daemon's connection mid-night
                time.sleep(2)
                with psycopg.connect("postgresql://" + fresh_postgres.split("://", 1)[1],
                                     autocommit=True) as admin:
                    dropped = admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchone()[0]
                assert dropped >= 1
        db.open_database(fresh_postgres)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = [s.state for s in db.Sequence.select()]
            live = db.Job.select().where(db.Job.state.in_(("RUNNING", "SUBMITTED",
                                                            "RETRY"))).count()
            if len(states) == 4 and set(states) == {"DONE"} and live == 0 and \
                    all((out / n).exists() for n in EXPECTED):
                break
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail(f"not reduced in time\n{log.read_text()[-3000:]}")
        products = Counter(p.filename for p in db.Product.select())
        assert set(EXPECTED) <= set(products) and max(products.values()) == 1
        frames = list(db.Frame.select())  # every raw file once, none quarantined
        assert sorted(f.path for f in frames) == sorted(str(p.resolve())
                                                         for p in raw.glob("*.fits"))
        assert {f.state for f in frames} <= {"ingested", "used"}, Counter(
            f.state for f in frames)
        assert all(f.sequence_id is not None for f in frames if f.state == "ingested")
        flat = db.Product.get(db.Product.kind == "processed_flat")
        assert flat.is_calibration and "calibrations" in flat.path
        sky = db.Product.get(db.Product.filename == "S20170504S0114_skyCorrected.fits")
        assert [c.calibration.id for c in sky.calibrations_used
                if c.caltype == "processed_flat"] == [flat.id]
        assert db.Daemon.select().count() == 1
        text = log.read_text()
        # the drop is reported either way: a transaction it broke (kept, retried) or a
        # connection found dead before the next one began (replaced)
        assert ("database unavailable" in text and "database available again" in text) \
            or "database connection lost" in text, text[-3000:]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    db.close_database()
    db.open_database(fresh_postgres)
    assert db.Daemon.select().count() == 0  # unregistered at the clean stop
