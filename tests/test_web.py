"""The live page's server on a database filled with known rows: JSON, pictures, headers, errors.

A real server (:class:`gsaoi_watch.web.server.LivePage`) on port 0 of 127.0.0.1, asked over a
real socket; the database is a SQLite file opened with ``db.open_database``.
"""

import datetime as dt
import json
import logging
import os
import socket
import sqlite3
import threading
import urllib.error
import urllib.request

import pytest

from gsaoi_watch.calibration import db
from gsaoi_watch.cli.main import build_parser
from gsaoi_watch.cli.options import config_from_args
from gsaoi_watch.config import Config, load_config, parse_address
from gsaoi_watch.daemon.engine import BUSY_WAIT
from gsaoi_watch.errors import ConfigError
from gsaoi_watch.web import queries
from gsaoi_watch.web.app import CSP
from gsaoi_watch.web.measures import measures
from gsaoi_watch.web.server import LivePage, start_live_page

SCRIPT = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n" + b"picture"
UT0 = dt.datetime(2017, 5, 5, 5, 0, 0)


def requirement(value, band, requested, met, **extra):
    return {"value": value, "error": 0.02, "unit": "arcsec", "band": band,
            "requested": requested, "met": met, "probability": 0.9 if met else 0.05,
            "reason": None, "limits": {"20": 0.45, "70": 0.8, "85": 1.2}, **extra}


def qa_record(seeing, *, requirements=None, standard=None):
    qa = {"filename": "x", "iq": {"fwhm": seeing / 7, "fwhm_zenith": seeing / 7.2,
                                  "strehl": 0.2, "ellipticity": 0.05, "n_stars": 7,
                                  "seeing": seeing, "band": "IQ70"},
          "bg": {"rate": 40.0, "mag": 17.9, "band": "BG20", "source": "recorded"},
          "standard": standard, "zeropoints": [], "cc": None, "notes": []}
    if standard:
        qa["zeropoints"] = [{"array": 0, "zp": 26.1, "zp_err": 0.01, "nominal": 26.2},
                            {"array": 1, "zp": 26.3, "zp_err": 0.01, "nominal": 26.2}]
        qa["cc"] = {"extinction": 0.1, "extinction_err": 0.01, "band": "CC70"}
    if requirements is not None:
        qa["requirements"] = requirements
    return json.dumps(qa)


@pytest.fixture
def night(tmp_path):
    """A night in the database: flat, standard (OBJECT a script), science, problems."""
    out = tmp_path / "reduced"
    (out / "calibrations" / "processed_flat").mkdir(parents=True)
    (out / "provisional").mkdir()
    raw = tmp_path / "raw"
    db.open_database(tmp_path / "gw.db", create=True)
    flat_seq = db.Sequence.create(key="f", kind="flat_on", observation_id="GS-CAL-3",
                                  object="Domeflat", filter_name="Kshort_G1106",
                                  exposure_time=15.0, state="DONE", opened=UT0)
    std = db.Sequence.create(key="s", kind="standard", observation_id="GS-2017A-Q-29-9",
                             object=SCRIPT, filter_name="Kshort_G1106", exposure_time=30.0,
                             state="DONE", opened=UT0 + dt.timedelta(minutes=1))
    sci = db.Sequence.create(key="o", kind="science", observation_id="GS-2017A-Q-29-13",
                             object="NGC5128", filter_name="Kshort_G1106", exposure_time=60.0,
                             state="OPEN", quicklook=True,
                             opened=UT0 + dt.timedelta(minutes=2))
    bad = db.Sequence.create(key="b", kind="science", observation_id="GS-2017A-Q-29-14",
                             object="M83", filter_name="H_G1103", exposure_time=None,
                             state="FAILED", reason="error on seq: boom",
                             opened=UT0 + dt.timedelta(minutes=3))
    for k in range(3):
        db.Frame.create(path=str(raw / f"std{k}.fits"), state="used", sequence=std,
                        data_label=f"GS-2017A-Q-29-9-00{k + 1}")
    for k in range(4):
        db.Frame.create(path=str(raw / f"sci{k}.fits"), state="ingested", sequence=sci,
                        data_label=f"GS-2017A-Q-29-13-00{k + 1}")
    db.Frame.create(path=str(raw / "junk.fits"), state="quarantined", error="not a FITS file")
    db.Frame.create(path=str(raw / "cut.fits"), state="unusable", sequence=sci,
                    error=f"no EXPTIME {SCRIPT}")
    flat_job = db.Job.create(sequence=flat_seq, recipe="flat", state="DONE")
    std_job = db.Job.create(sequence=std, recipe="images", state="DONE")
    sci_job = db.Job.create(sequence=sci, recipe="images", state="DONE")
    db.Job.create(sequence=bad, recipe="images", state="FAILED", error="no skies for M83")
    flat = db.Product.create(
        path=str(out / "calibrations" / "processed_flat" / "S0030_flat.fits"),
        filename="S0030_flat.fits", kind="processed_flat", job=flat_job, is_calibration=True)
    (out / "S0030_flat.png").write_bytes(PNG + b"flat")  # beside the flat, not its copy
    made = {}

    def product(name, job, minutes, qa, *, where=out, kind="sky_corrected", label=None):
        made[name] = db.Product.create(
            path=str(where / name), filename=name, kind=kind, job=job, qa=qa,
            ut_datetime=UT0 + dt.timedelta(minutes=minutes), data_label=label,
            filter_name="Kshort_G1106")
        return made[name]

    product("std1_skyCorrected.fits", std_job, 10,
            qa_record(0.6, standard="9132", requirements={
                "iq": requirement(0.6, "IQ70", "IQ70", True),
                "cc": {**requirement(0.1, "CC70", "CC50", False), "unit": "mag",
                       "limits": {"50": 0.08, "70": 0.3, "80": 1.0}},
                "bg": {**requirement(17.9, "BG20", "BGAny", True), "unit": "mag/arcsec2",
                       "limits": {"20": 14.6, "50": 14.6, "80": 14.6}}}))
    product("std0_skyCorrected.fits", std_job, 5,
            qa_record(0.5, standard="9132", requirements={
                "iq": requirement(0.5, "IQ70", "IQ20", False)}))
    product("sci0_skyCorrected.fits", sci_job, 20, qa_record(0.9))           # no requirements
    product("sci1_skyCorrected.fits", sci_job, 25, None)                     # no QA
    product("sci2_skyCorrected.fits", sci_job, 30, "{not json")              # unreadable
    (out / "sci0_skyCorrected.png").write_bytes(PNG + b"sci0")
    # provisional frames: one replaced by its final product, one not yet
    product("sci0_skyCorrected.fits", None, 20, None, where=out / "provisional",
            kind="provisional_sky_corrected", label="GS-2017A-Q-29-13-001")
    product("sci3_skyCorrected.fits", None, 35, qa_record(0.7, requirements={
        "iq": requirement(0.7, "IQ70", "IQ70", True)}), where=out / "provisional",
        kind="provisional_sky_corrected", label="GS-2017A-Q-29-13-004")
    (out / "provisional" / "sci3_skyCorrected.png").write_bytes(PNG + b"sci3")
    # a picture that is a symbolic link out of the output directory, and a product outside
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG + b"secret")
    (out / "std0_skyCorrected.png").symlink_to(secret)
    outside = db.Product.create(path=str(tmp_path / "elsewhere_skyCorrected.fits"),
                                filename="elsewhere_skyCorrected.fits", kind="stack")
    (tmp_path / "elsewhere_skyCorrected.png").write_bytes(PNG)
    db.close_database()
    db.open_database(tmp_path / "gw.db", lock_timeout=BUSY_WAIT)  # as the daemon does
    yield {"out": out, "db": tmp_path / "gw.db", "flat": flat, "made": made,
           "outside": outside, "tmp": tmp_path}
    db.close_database()


@pytest.fixture
def server(night):
    page = LivePage(night["out"], "127.0.0.1", 0)
    page.start()
    yield page
    page.stop()


def get(page, path, *, host=None):
    request = urllib.request.Request(page.url.rstrip("/") + path)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(page, path):
    status, headers, body = get(page, path)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    return json.loads(body)


# --- /api/frames ----------------------------------------------------------------------------
def test_frames_one_per_reduced_frame_in_ut_order_with_the_requirements(server):
    frames = get_json(server, "/api/frames")
    names = [f["file"] for f in frames]
    # the provisional sci0 has its final product: left out; sci3 is only provisional
    assert names == ["std0_skyCorrected.fits", "std1_skyCorrected.fits",
                     "sci0_skyCorrected.fits", "sci1_skyCorrected.fits",
                     "sci2_skyCorrected.fits", "sci3_skyCorrected.fits"]
    by = {f["file"]: f for f in frames}
    assert [f["ut"] for f in frames][:2] == ["2017-05-05T05:05:00Z", "2017-05-05T05:10:00Z"]
    std1 = by["std1_skyCorrected.fits"]
    assert (std1["observation_id"], std1["kind"], std1["object"]) == (
        "GS-2017A-Q-29-9", "standard", SCRIPT)
    assert std1["iq"]["value"] == 0.6 and std1["iq"]["requested"] == "IQ70"
    assert std1["iq"]["met"] is True and std1["iq"]["strehl"] == 0.2
    assert std1["iq"]["fwhm"] == pytest.approx(0.6 / 7)
    assert std1["cc"]["met"] is False and std1["cc"]["requested"] == "CC50"
    assert std1["cc"]["limits"] == {"50": 0.08, "70": 0.3, "80": 1.0}
    assert std1["cc"]["zeropoint"] == pytest.approx(26.2)
    assert std1["cc"]["extinction"] == 0.1
    assert std1["bg"]["requested"] == "BGAny" and std1["bg"]["mag"] == 17.9
    assert std1["bg"]["better"] == "higher" and std1["iq"]["better"] == "lower"
    std0 = by["std0_skyCorrected.fits"]
    assert std0["iq"]["met"] is False and std0["iq"]["requested"] == "IQ20"
    # only IQ given: CC and BG from the measurements, no verdict
    assert std0["cc"]["value"] == 0.1 and std0["cc"]["band"] == "CC70"
    assert std0["cc"]["met"] is None and std0["cc"]["requested"] is None
    # an older record without requirements: the bands measured, limits from the tables
    sci0 = by["sci0_skyCorrected.fits"]
    assert sci0["iq"]["value"] == 0.9 and sci0["iq"]["band"] == "IQ70"
    assert sci0["iq"]["requested"] is None and sci0["iq"]["met"] is None
    assert sci0["iq"]["limits"] == {"20": 0.45, "70": 0.8, "85": 1.2}
    assert sci0["bg"]["value"] == 17.9 and sci0["bg"]["limits"]["20"] == 14.6
    assert sci0["cc"]["value"] is None and "no standard star" in sci0["cc"]["reason"]
    assert (sci0["kind"], sci0["quicklook"], sci0["filter"]) == ("science", True, "Kshort")
    assert by["sci1_skyCorrected.fits"]["iq"]["reason"] == "no QA recorded"
    assert by["sci2_skyCorrected.fits"]["bg"]["reason"] == "QA record unreadable"
    sci3 = by["sci3_skyCorrected.fits"]
    assert sci3["provisional"] is True and sci3["iq"]["met"] is True
    assert sci3["observation_id"] == "GS-2017A-Q-29-13"  # from its raw frame (no job)
    assert sci3["kind"] == "science"
    assert not any(f["provisional"] for f in frames if f["file"] != sci3["file"])


def test_pictures_are_named_by_product_id_and_served_from_the_output_directory(server, night):
    frames = {f["file"]: f for f in get_json(server, "/api/frames")}
    sci0 = frames["sci0_skyCorrected.fits"]
    assert sci0["picture"].startswith(f"/pictures/{sci0['id']}.png?v=")
    assert get(server, sci0["picture"])[2] == PNG + b"sci0"
    sci3 = frames["sci3_skyCorrected.fits"]
    status, headers, body = get(server, sci3["picture"])
    assert (status, headers["Content-Type"], body) == (200, "image/png", PNG + b"sci3")
    assert frames["std1_skyCorrected.fits"]["picture"] is None  # no PNG
    # the symbolic link out of the output directory is not followed
    assert frames["std0_skyCorrected.fits"]["picture"] is None
    assert get(server, f"/pictures/{frames['std0_skyCorrected.fits']['id']}.png")[0] == 404
    # the flat: registered as its copy under calibrations/, its PNG beside the flat made
    flat = night["flat"]
    assert get(server, f"/pictures/{flat.id}.png")[2] == PNG + b"flat"
    seqs = get_json(server, "/api/sequences")
    flat_products = next(s for s in seqs if s["kind"] == "flat_on")["products"]
    assert [p["path"] for p in flat_products] == ["calibrations/processed_flat/S0030_flat.fits"]
    assert flat_products[0]["picture"].startswith(f"/pictures/{flat.id}.png")
    # unknown ids, a product outside the output directory, paths in the URL: refused
    for path in ("/pictures/99999.png", f"/pictures/{night['outside'].id}.png",
                 "/pictures/../../secret.png", "/pictures/%2e%2e%2fsecret.png",
                 "/pictures/1.png/../../secret.png", "/pictures/abc.png",
                 "/static/../queries.py", "/static/%2e%2e/queries.py"):
        status, _, body = get(server, path)
        assert status in (403, 404), path
        assert b"secret" not in body and b"import" not in body


# --- /api/sequences, /api/files, /api/status ------------------------------------------------------
def test_sequences_with_states_frames_products_and_jobs(server):
    seqs = get_json(server, "/api/sequences")
    assert [s["key"] for s in seqs] == ["f", "s", "o", "b"]
    by = {s["key"]: s for s in seqs}
    assert by["s"]["frames"] == 3 and by["o"]["frames"] == 5 and by["f"]["frames"] == 0
    assert by["s"]["object"] == SCRIPT and SCRIPT in by["s"]["label"]
    assert by["o"]["quicklook"] is True and by["o"]["state"] == "OPEN"
    assert by["b"]["state"] == "FAILED" and by["b"]["job"]["error"] == "no skies for M83"
    assert by["b"]["exposure_time"] is None
    sci_paths = sorted(p["path"] for p in by["o"]["products"])
    assert sci_paths == ["provisional/sci3_skyCorrected.fits", "sci0_skyCorrected.fits",
                         "sci1_skyCorrected.fits", "sci2_skyCorrected.fits"]
    assert [p["provisional"] for p in by["o"]["products"]
            if p["path"].startswith("provisional/")] == [True]
    assert sorted(p["file"] for p in by["s"]["products"]) == [
        "std0_skyCorrected.fits", "std1_skyCorrected.fits"]


def test_files_lists_quarantined_and_unusable_frames_failed_jobs_and_sequences(server):
    files = get_json(server, "/api/files")
    assert [(f["file"], f["state"], f["reason"]) for f in files["frames"]] == [
        ("junk.fits", "quarantined", "not a FITS file"),
        ("cut.fits", "unusable", f"no EXPTIME {SCRIPT}")]
    assert [(j["state"], j["error"]) for j in files["jobs"]] == [("FAILED", "no skies for M83")]
    assert files["jobs"][0]["sequence"].startswith("GS-2017A-Q-29-14 science M83 H")
    assert [s["reason"] for s in files["sequences"]] == ["error on seq: boom"]
    status = get_json(server, "/api/status")
    assert status["counts"] == {"sequences": 4, "frames": 9, "reduced": 7, "problems": 2}
    assert status["daemon"]["running"] is False


def test_a_page_shows_its_own_daemon_only(night):
    """Two daemons on one database: each page lists its own sequences, jobs, frames and
    products; the other's (another raw directory) are not on it."""
    from gsaoi_watch.calibration.daemons import owner_of

    mine, theirs = owner_of(night["tmp"] / "raw"), owner_of(night["tmp"] / "raw2")
    with db.writing():
        db.Sequence.update(owner=mine).execute()
        db.Job.update(owner=mine).execute()
        other = db.Sequence.create(key="x", kind="science", observation_id="GS-2017A-Q-7-1",
                                   object="M83", filter_name="J_G1102", state="FAILED",
                                   reason="error on seq: theirs", owner=theirs)
        job = db.Job.create(sequence=other, recipe="images", state="FAILED",
                            error="their failure", owner=theirs)
        raw2 = night["tmp"] / "raw2"
        db.Frame.create(path=str(raw2 / "x0.fits"), state="ingested", sequence=other,
                        data_label="GS-2017A-Q-7-1-001")
        db.Frame.create(path=str(raw2 / "theirs.fits"), state="quarantined", error="theirs")
        db.Product.create(path=str(night["out"] / "x0_skyCorrected.fits"),
                          filename="x0_skyCorrected.fits", kind="sky_corrected", job=job,
                          ut_datetime=UT0, filter_name="J_G1102")
    whole = LivePage(night["out"], "127.0.0.1", 0)
    page = LivePage(night["out"], "127.0.0.1", 0, owner=mine)
    whole.start()
    page.start()
    try:
        assert [s["key"] for s in get_json(page, "/api/sequences")] == ["f", "s", "o", "b"]
        assert [s["key"] for s in get_json(whole, "/api/sequences")] == \
            ["f", "s", "o", "b", "x"]
        assert "x0_skyCorrected.fits" not in {f["file"] for f in get_json(page, "/api/frames")}
        assert "x0_skyCorrected.fits" in {f["file"] for f in get_json(whole, "/api/frames")}
        files = get_json(page, "/api/files")
        assert [f["file"] for f in files["frames"]] == ["junk.fits", "cut.fits"]
        assert [j["error"] for j in files["jobs"]] == ["no skies for M83"]
        assert [s["reason"] for s in files["sequences"]] == ["error on seq: boom"]
        assert get_json(page, "/api/status")["counts"] == {
            "sequences": 4, "frames": 9, "reduced": 7, "problems": 2}
        assert get_json(whole, "/api/status")["counts"] == {
            "sequences": 5, "frames": 11, "reduced": 8, "problems": 3}
    finally:
        page.stop()
        whole.stop()


# --- headers, escaping, errors -----------------------------------------------------------------
def test_security_headers_and_json_that_is_never_markup(server):
    for path in ("/", "/api/frames", "/static/live.js", "/static/live.css"):
        status, headers, body = get(server, path)
        assert status == 200, path
        assert headers["Content-Security-Policy"] == CSP
        assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
    status, headers, page = get(server, "/")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script src="/static/live.js" defer></script>' in page
    assert page.count(b"<script") == 1  # the page holds no data and no inline script
    status, headers, body = get(server, "/api/sequences")
    assert b"</script>" not in body and b"<\\/script>" in body  # and it still reads back
    assert SCRIPT in [s["object"] for s in json.loads(body)]
    js = get(server, "/static/live.js")[2].decode()
    assert "innerHTML" not in js and "eval(" not in js


def test_only_loopback_host_names_on_a_loopback_server(server):
    assert get(server, "/api/status", host="evil.example:8777")[0] == 403
    assert get(server, "/", host=f"localhost:{server.port}")[0] == 200


def test_a_handler_exception_is_a_500_and_one_log_line(server, monkeypatch, caplog):
    def broken(**kwargs):
        raise ValueError("broken query\nsecond line")

    monkeypatch.setattr(queries, "files", broken)
    with caplog.at_level(logging.ERROR, logger="gsaoi_watch.web"):
        status, _, body = get(server, "/api/files")
    assert status == 500 and b"broken" not in body
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["live page: GET /api/files failed: ValueError: broken query"]
    assert get(server, "/api/status")[0] == 200  # the server goes on


def test_a_locked_database_is_a_503_not_a_hang(server, night):
    db.close_database()  # an exclusive lock needs every other connection closed
    con = sqlite3.connect(night["db"], timeout=1, isolation_level=None)
    try:
        con.execute("PRAGMA locking_mode = EXCLUSIVE")
        con.execute("BEGIN EXCLUSIVE")
        con.execute("update sequence set reason = 'x'")
        status, _, body = get(server, "/api/frames")
        assert status == 503
        assert json.loads(body)["error"].startswith("database unavailable: ")
        assert "locked" in json.loads(body)["error"]
    finally:
        con.rollback() if con.in_transaction else None
        con.close()
    assert get(server, "/api/frames")[0] == 200  # and back once the lock is gone


def test_a_removed_database_file_is_a_503_and_is_not_recreated(server, night):
    os.rename(night["db"], night["tmp"] / "moved.db")
    try:
        status, _, body = get(server, "/api/sequences")
        assert status == 503 and b"database file removed" in body
        assert not night["db"].exists()
    finally:
        os.rename(night["tmp"] / "moved.db", night["db"])


# --- the server's life ---------------------------------------------------------------------------
def test_stop_closes_the_port_and_ends_the_threads(night):
    before = set(threading.enumerate())
    page = LivePage(night["out"], "127.0.0.1", 0)
    url = page.start()
    assert url == f"http://127.0.0.1:{page.port}/" and page.port > 0
    assert get(page, "/api/status")[0] == 200
    page.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", page.port), timeout=2).close()
    assert set(threading.enumerate()) <= before


def test_a_port_in_use_is_one_error_line_and_no_page(night, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = Config().replace("paths", output_dir=str(night["out"])).replace(
            "http", enabled=True, address=f"127.0.0.1:{port}")
        with caplog.at_level(logging.INFO, logger="gsaoi_watch.web"):
            assert start_live_page(config) is None
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert caplog.records[0].getMessage() == (
        f"live page not served: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "reducing without it")
    assert start_live_page(Config()) is None  # not enabled: nothing


def test_the_url_line_is_logged_with_the_bound_port(night, caplog):
    config = Config().replace("paths", output_dir=str(night["out"])).replace(
        "http", enabled=True, address="127.0.0.1:0")
    with caplog.at_level(logging.INFO, logger="gsaoi_watch.web"):
        page = start_live_page(config)
    try:
        assert page is not None
        assert [r.getMessage() for r in caplog.records] == [
            f"live page at http://127.0.0.1:{page.port}/"]
    finally:
        page.stop()


# --- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "message"), [
    ("8777", "must be HOST:PORT"), (":8777", "must be HOST:PORT"),
    ("127.0.0.1:65536", "port must be an integer in [0, 65535]"),
    ("127.0.0.1:-1", "port must be an integer"), ("127.0.0.1:http", "port must be"),
    ("local host:80", "must be HOST:PORT")])
def test_bad_addresses_are_one_line_naming_the_key(tmp_path, address, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\naddress = "{address}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"{cfg}: [http] address")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_addresses_and_the_command_line_flag():
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:8777") == ("::1", 8777)
    assert parse_address("0.0.0.0:65535") == ("0.0.0.0", 65535)
    assert Config().http.enabled is False
    args = build_parser().parse_args(["run", "--http", "127.0.0.1:0"])
    config = config_from_args(args)
    assert (config.http.enabled, config.http.address) == (True, "127.0.0.1:0")
    args = build_parser().parse_args(["run", "--http", "nope"])
    with pytest.raises(ConfigError, match=r"\[http\] address must be HOST:PORT"):
        config_from_args(args)


def test_measures_of_odd_records():
    out = measures({"iq": {"seeing": float("nan"), "band": "IQUnknown"}, "bg": None,
                    "requirements": {"iq": {"value": "0.5", "met": "yes", "limits": {
                        "70": 0.8, "20": 0.45, "x": None}}}})
    assert out["iq"]["value"] is None and out["iq"]["met"] is None
    assert list(out["iq"]["limits"]) == ["20", "70"]
    assert out["bg"]["reason"] == "background not measured" and out["bg"]["limits"] == {}
    json.dumps(out, allow_nan=False)
