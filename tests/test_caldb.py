"""The calibration database on a real SQLite file and a PostgreSQL server: rules, verbs,
robustness."""

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.calibration.caldb import add_calibration
from gsaoi_watch.cli.main import main
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.sim import simulate_night

ARRAY_IDS = ["H2RG-032-074", "H2RG-032-064", "H2RG-032-071", "H2RG-032-061"]


def processed_flat(path, when, filter1="Kshort_G1105"):
    """A small processed-flat file (PROCFLAT, SCI/VAR/DQ) observed at ``when``."""
    h = fits.Header()
    for k, v in (("INSTRUME", "GSAOI"), ("OBSERVAT", "Gemini-South"), ("OBSTYPE", "OBJECT"),
                 ("OBJECT", "Domeflat"), ("OBSCLASS", "dayCal"), ("FILTER1", filter1),
                 ("FILTER2", "Clear"), ("DATE-OBS", f"{when:%Y-%m-%d}"),
                 ("UT", f"{when:%H:%M:%S}"), ("PROCFLAT", "yes"), ("READMODE", "FOWLER"),
                 ("GEM-TLM", "now"), ("DATALAB", "GS-CAL-1-001-SQ-FLAT")):
        h[k] = v
    hdus = [fits.PrimaryHDU(header=h)]
    for ver, aid in enumerate(ARRAY_IDS, start=1):
        for name in ("SCI", "VAR", "DQ"):
            e = fits.ImageHDU(np.ones((8, 8), np.float32), name=name)
            e.header["EXTVER"] = ver
            e.header["ARRAYID"] = aid
            e.header["CCDSEC"] = e.header["CCDSIZE"] = "[1:8,1:8]"
            hdus.append(e)
    fits.HDUList(hdus).writeto(path)
    return path


def frame_at(when, filter1="Kshort_G1105", roi=False):
    h = fits.Header()
    for k, v in (("INSTRUME", "GSAOI"), ("FILTER1", filter1), ("FILTER2", "Clear"),
                 ("DATE-OBS", f"{when:%Y-%m-%d}"), ("UT", f"{when:%H:%M:%S}")):
        h[k] = v
    exts = []
    for aid in ARRAY_IDS:
        e = fits.Header()
        e["ARRAYID"] = aid
        e["CCDSIZE"] = "[1:2048,1:2048]"
        e["CCDSEC"] = "[513:1536,513:1536]" if roi else "[1:2048,1:2048]"
        exts.append(e)
    return FrameInfo(h, exts)


@pytest.fixture
def cal_db(database_url):
    db.open_database(database_url, create=True)
    yield database_url
    db.close_database()


def test_association_picks_the_right_flat_among_decoys(tmp_path, cal_db):
    t = dt.datetime(2017, 5, 5, 23, 0, 0)
    right = processed_flat(tmp_path / "right_flat.fits", t - dt.timedelta(hours=2))
    decoys = {
        "other_filter": processed_flat(tmp_path / "j_flat.fits", t - dt.timedelta(minutes=5),
                                       filter1="J_G1102"),
        "too_old": processed_flat(tmp_path / "old_flat.fits", t - dt.timedelta(days=31)),
        "bad": processed_flat(tmp_path / "bad_flat.fits", t - dt.timedelta(minutes=30)),
        "farther": processed_flat(tmp_path / "far_flat.fits", t + dt.timedelta(days=3)),
        "deleted": processed_flat(tmp_path / "gone_flat.fits", t - dt.timedelta(minutes=1)),
    }
    for p in [right, *decoys.values()]:
        add_calibration(p)
    db.Product.update(is_bad=True).where(db.Product.filename == "bad_flat.fits").execute()
    decoys["deleted"].unlink()
    best = queries.best_calibration(frame_at(t))
    assert best.filename == "right_flat.fits"
    # an ROI frame is served the same full-frame flat (reductions crop it)
    assert queries.best_calibration(frame_at(t, roi=True)).filename == "right_flat.fits"
    # with no flat of the filter within 30 days, nothing is served
    assert queries.best_calibration(frame_at(t, filter1="H_G1103")) is None
    assert queries.best_calibration(frame_at(t + dt.timedelta(days=40))) is None


def test_adding_a_raw_frame_is_a_clear_error(tmp_path, cal_db):
    simulate_night(tmp_path / "raw", seed=1, size=64, workers=1, only=["standard"])
    raw = tmp_path / "raw" / "S20170504S0114.fits"
    with pytest.raises(GsaoiWatchError, match="S20170504S0114.fits: not a processed calibration"):
        add_calibration(raw)


def test_remove_keeps_the_file_and_bad_is_never_served(tmp_path, cal_db, capsys):
    t = dt.datetime(2017, 5, 5, 23, 0, 0)
    flat = processed_flat(tmp_path / "S20170505S0030_flat.fits", t)
    common = ["-d", str(cal_db)]
    db.close_database()
    assert main(["caldb", "add", str(flat), *common]) == 0
    assert main(["caldb", "list", *common]) == 0
    assert "S20170505S0030_flat.fits" in capsys.readouterr().out
    assert main(["caldb", "bad", "S20170505S0030_flat.fits", *common]) == 0
    db.open_database(cal_db)
    assert queries.best_calibration(frame_at(t)) is None
    db.close_database()
    assert main(["caldb", "good", str(flat), *common]) == 0
    assert main(["caldb", "remove", "S20170505S0030_flat.fits", *common]) == 0
    assert flat.exists()
    db.open_database(cal_db)
    assert db.Product.select().count() == 0


def test_corrupt_database_is_reported_not_recreated(tmp_path, capsys):
    path = tmp_path / "cal_manager.db"
    path.write_bytes(b"not sqlite at all " * 100)
    before = path.read_bytes()
    assert main(["caldb", "list", "-d", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "file is not a database" in err
    assert path.read_bytes() == before
    assert main(["caldb", "init", "-d", str(path)]) == 2  # refuses without --wipe
    assert main(["caldb", "init", "--wipe", "-d", str(path)]) == 0


def test_missing_database_and_newer_schema(tmp_path):
    with pytest.raises(db.DatabaseError, match="caldb init"):
        db.open_database(tmp_path / "none.db")
    path = tmp_path / "new.db"
    db.open_database(path, create=True)
    db.SchemaInfo.create(version=db.SCHEMA_VERSION + 1)
    db.close_database()
    with pytest.raises(db.DatabaseError, match="newer than this"):
        db.open_database(path)


def test_a_locked_database_waits_then_says_so(tmp_path, monkeypatch):
    path = tmp_path / "cal.db"
    db.open_database(path, create=True)
    db.close_database()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(db, "LOCK_TIMEOUT", 0.3)
    try:
        flat = processed_flat(tmp_path / "f_flat.fits", dt.datetime(2017, 5, 5))
        db.open_database(path)
        t0 = dt.datetime.now()
        with pytest.raises(db.DatabaseError, match="locked by another writer"):
            add_calibration(flat)
        assert (dt.datetime.now() - t0).total_seconds() < 5
    finally:
        holder.rollback()
        holder.close()
        db.close_database()


def test_config_file_and_default_location(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["caldb", "config"]) == 0
    assert "database: cal_manager.db" in capsys.readouterr().out
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[database]\nurl = "elsewhere/cal.db"\n')
    assert main(["caldb", "init", "-c", str(cfg)]) == 0
    assert (tmp_path / "elsewhere" / "cal.db").exists()
    cfg.write_text('[database]\nurll = "x"\n')
    assert main(["caldb", "config", "-c", str(cfg)]) == 2
    assert "unknown key(s) urll" in capsys.readouterr().err


def test_tutorial_sequence_with_the_database(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "playdata"
    simulate_night(raw, seed=4, size=128, workers=2, only=["flats", "standard", "bpm"])
    work = tmp_path / "playground"
    work.mkdir()
    monkeypatch.chdir(work)
    flats = sorted(str(p) for p in raw.glob("S20170505S00*.fits"))
    std = sorted(str(p) for p in raw.glob("S20170504S*.fits"))
    Path("flats.list").write_text("\n".join(flats))
    Path("std.list").write_text("\n".join(std))
    assert main(["caldb", "init"]) == 0
    assert main(["reduce", "@flats.list"]) == 0
    assert main(["caldb", "add", "S20170505S0030_flat.fits"]) == 0
    capsys.readouterr()
    assert main(["caldb", "list"]) == 0
    listing = capsys.readouterr().out
    assert "S20170505S0030_flat.fits" in listing and "processed_flat" in listing
    assert "bpm_20121104" in listing  # the BPM beside the raw data was registered
    assert main(["reduce", "@std.list"]) == 0
    with fits.open("S20170504S0114_skyCorrected.fits") as hdul:
        assert hdul[0].header["FLATIM"] == "S20170505S0030_flat.fits"
    db.open_database("cal_manager.db")
    product = db.Product.get(db.Product.filename == "S20170504S0114_skyCorrected.fits")
    used = {(u.caltype, u.calibration.filename) for u in product.calibrations_used}
    assert ("processed_flat", "S20170505S0030_flat.fits") in used
    assert any(c == "processed_bpm" for c, _ in used)
    db.close_database()
    info = read_frame_info("S20170504S0114_skyCorrected.fits")
    assert "RAW" not in info.tags and "PREPARED" in info.tags


def test_a_schema_1_database_is_upgraded(database_url):
    import peewee as pw
    from playhouse.migrate import SchemaMigrator, migrate

    path = database_url
    db.open_database(path, create=True)
    con = db.database.obj
    migrate(SchemaMigrator.from_database(con).drop_column("product", "qa"))
    migrate(SchemaMigrator.from_database(con).drop_column("job", "crashes"))
    for table in ("sequence", "job", "command"):
        migrate(SchemaMigrator.from_database(con).drop_index(table, f"{table}_owner"),
                SchemaMigrator.from_database(con).drop_column(table, "owner"))
    con.drop_tables([db.Daemon])
    db.SchemaInfo.delete().execute()
    db.SchemaInfo.create(version=1)
    db.close_database()
    db.open_database(path)
    try:
        assert "qa" in {c.name for c in db.database.obj.get_columns("product")}
        assert "daemon" in db.database.obj.get_tables()  # and on to schema 3
        assert "crashes" in {c.name for c in db.database.obj.get_columns("job")}  # 4
        for table in ("sequence", "job", "command", "daemon"):  # 5
            assert "owner" in {c.name for c in db.database.obj.get_columns(table)}
        assert db.SchemaInfo.select(pw.fn.MAX(db.SchemaInfo.version)).scalar() == \
            db.SCHEMA_VERSION == 5
    finally:
        db.close_database()


def test_a_schema_3_database_gets_job_crashes_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "v3.db"
    db.open_database(path, create=True)
    db.close_database()
    with sqlite3.connect(path) as con:  # the job table as schema 3 made it, with a row
        con.execute("drop table job")
        con.execute("create table job (id integer primary key, sequence_id integer, "
                    "recipe varchar(255) not null, parameters text not null, state "
                    "varchar(255) not null, tries integer not null, started datetime, "
                    "finished datetime, error text)")
        con.execute("insert into job (recipe, parameters, state, tries) values "
                    "('flat', '{}', 'RUNNING', 2)")
        con.execute("delete from schema_info")
        con.execute("insert into schema_info (version, created) values (3, '2017-05-05')")
    db.open_database(path)
    try:
        job = db.Job.get()
        assert (job.recipe, job.state, job.tries, job.crashes) == ("flat", "RUNNING", 2, 0)
        assert job.owner == ""  # schema 5: no engine's yet; the first to recover takes it
        db.Job.update(crashes=1).execute()
        assert db.Job.get().crashes == 1
    finally:
        db.close_database()
    with sqlite3.connect(path) as con:
        assert con.execute("select max(version) from schema_info").fetchone() == (
            db.SCHEMA_VERSION,)


def _flat_rows(path):
    db.open_database(path)  # what the commands committed, read afresh
    try:
        return [(p.path, int(p.is_bad)) for p in
                db.Product.select().where(db.Product.kind == "processed_flat")]
    finally:
        db.close_database()


def test_one_calibration_is_one_row_and_caldb_verbs_act_on_the_served_copy(
        tmp_path, monkeypatch, capsys, database_url):
    raw = tmp_path / "playdata"
    simulate_night(raw, seed=4, size=64, workers=1, only=["flats", "standard", "bpm"])
    work = tmp_path / "playground"
    work.mkdir()
    monkeypatch.chdir(work)
    Path("flats.list").write_text("\n".join(sorted(str(p) for p in raw.glob("S20170505S*"))))
    Path("std.list").write_text("\n".join(sorted(str(p) for p in raw.glob("S20170504S*"))))
    served = work / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits"
    # every command on the test's database: ./cal_manager.db on SQLite, as the tutorial's
    url = "cal_manager.db" if "://" not in database_url else database_url
    assert main(["caldb", "init", "-d", url]) == 0
    assert main(["reduce", "@flats.list", "-d", url]) == 0
    assert _flat_rows(url) == [(str(served), 0)]
    # the tutorial's `caldb add` of the product, and a walk finding both files: one row
    assert main(["caldb", "add", "S20170505S0030_flat.fits", "-d", url]) == 0
    assert main(["caldb", "add", "-k", ".", "-d", url]) == 0
    assert _flat_rows(url) == [(str(served), 0)]
    capsys.readouterr()
    assert main(["caldb", "list", "-d", url]) == 0
    listing = capsys.readouterr().out
    assert listing.count("S20170505S0030_flat.fits") == 1 and "calibrations" in listing
    # bad by the product's name marks the served copy: nothing is served any more
    assert main(["caldb", "bad", "S20170505S0030_flat.fits", "-d", url]) == 0
    assert _flat_rows(url) == [(str(served), 1)]
    assert main(["reduce", "@std.list", "-d", url]) == 2
    assert "no processed flat" in capsys.readouterr().err
    assert main(["caldb", "good", str(served), "-d", url]) == 0
    assert main(["reduce", "@std.list", "-d", url]) == 0
    with fits.open("S20170504S0114_skyCorrected.fits") as hdul:
        assert hdul[0].header["FLATIM"] == "S20170505S0030_flat.fits"
    # remove by the product's path: the served row goes, both files stay
    assert main(["caldb", "remove", str(work / "S20170505S0030_flat.fits"), "-d", url]) == 0
    assert _flat_rows(url) == []
    assert served.exists() and Path("S20170505S0030_flat.fits").exists()
    assert main(["reduce", "@std.list", "-d", url]) == 2
    assert main(["caldb", "remove", "S20170505S0030_flat.fits", "-d", url]) == 1  # nothing left


def test_a_different_file_of_the_same_name_takes_the_row_over(tmp_path, cal_db):
    t = dt.datetime(2017, 5, 5, 23, 0, 0)
    (tmp_path / "calibrations").mkdir()
    first = processed_flat(tmp_path / "calibrations" / "S1_flat.fits", t)
    again = tmp_path / "S1_flat.fits"
    again.write_bytes(first.read_bytes())
    row = add_calibration(first)
    assert add_calibration(again).id == row.id
    assert db.Product.get_by_id(row.id).path == str(first.resolve())  # same content: kept
    other = tmp_path / "elsewhere"
    other.mkdir()
    changed = processed_flat(other / "S1_flat.fits", t + dt.timedelta(hours=1))
    assert add_calibration(changed).id == row.id
    assert db.Product.get_by_id(row.id).path == str(changed.resolve())
    assert db.Product.select().count() == 1
    assert queries.best_calibration(frame_at(t)).path == str(changed.resolve())
