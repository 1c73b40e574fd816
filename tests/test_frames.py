"""Frame reading: bad input gets one clear line; tag rules on headers alone; processed files."""

import numpy as np
import pytest
from astropy.io import fits

from gsaoi_watch.cli.main import main
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.data.tags import compute_tags
from gsaoi_watch.errors import FrameError


def gsaoi_file(path, n_ext=4, instrument="GSAOI", **phu):
    h = fits.Header()
    h["INSTRUME"] = instrument
    h["OBSERVAT"] = "Gemini-South"
    h["TELESCOP"] = "Gemini-South"
    h["OBSTYPE"] = "OBJECT"
    h["OBSCLASS"] = "science"
    h["OBJECT"] = "NGC5128"
    h["FILTER1"], h["FILTER2"] = "Kshort_G1105", "Clear"
    h["EXPTIME"] = 60.0
    h["DATE-OBS"], h["UT"] = "2017-05-05", "01:00:00.0"
    h["FRAME"], h["TRKFRAME"], h["RATRACK"], h["DECTRACK"] = "FK5", "FK5", 0.0, 0.0
    for k, v in phu.items():
        h[k] = v
    hdus = [fits.PrimaryHDU(header=h)]
    for i in range(n_ext):
        e = fits.ImageHDU(np.zeros((16, 16), np.float32))
        e.header["ARRAYID"] = ["H2RG-032-074", "H2RG-032-064", "H2RG-032-071",
                               "H2RG-032-061"][i % 4]
        hdus.append(e)
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    good = gsaoi_file(tmp_path / "S20170505S0001.fits")
    (tmp_path / "notfits.fits").write_text("this is not a FITS file\n" * 10)
    (tmp_path / "empty.fits").write_bytes(b"")
    truncated = tmp_path / "truncated.fits"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    gsaoi_file(tmp_path / "niri.fits", instrument="NIRI")
    gsaoi_file(tmp_path / "three.fits", n_ext=3)
    return tmp_path


@pytest.mark.parametrize("name, problem", [
    ("notfits.fits", "not a FITS file"),
    ("empty.fits", "empty file"),
    ("truncated.fits", "truncated FITS"),
    ("niri.fits", "not a GSAOI frame (INSTRUME='NIRI')"),
    ("three.fits", "has 3 array extensions; a GSAOI frame has 4"),
    ("missing.fits", "cannot read"),
])
def test_bad_input_is_one_clear_line(bad_files, name, problem):
    with pytest.raises(FrameError) as exc:
        read_frame_info(bad_files / name)
    text = str(exc.value)
    assert text.startswith(str(bad_files / name) + ": ")
    assert problem in text
    assert "\n" not in text


def test_tools_report_bad_files_and_carry_on(bad_files, capsys):
    files = sorted(str(p) for p in bad_files.glob("*.fits"))
    assert main(["dataselect", *files, "--expr", "exposure_time==60"]) == 1
    captured = capsys.readouterr()
    assert captured.out.split() == [str(bad_files / "S20170505S0001.fits")]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith(str(bad_files)) for line in errors)
    assert main(["typewalk", "-d", str(bad_files)]) == 1
    captured = capsys.readouterr()
    assert "S20170505S0001.fits" in captured.out
    assert len(captured.err.strip().splitlines()) == 5
    assert main(["showd", *files, "-d", "object"]) == 1
    captured = capsys.readouterr()
    assert "NGC5128" in captured.out and len(captured.err.strip().splitlines()) == 5


def test_bad_expression_and_descriptor_are_usage_errors(bad_files, capsys):
    good = str(bad_files / "S20170505S0001.fits")
    assert main(["dataselect", good, "--expr", "__import__('os')"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert main(["showd", good, "-d", "objekt"]) == 2
    assert "unknown descriptor" in capsys.readouterr().err


def test_processed_product_reads_as_four_arrays(tmp_path):
    hdus = [fits.PrimaryHDU(header=fits.Header([("INSTRUME", "GSAOI"), ("PROCFLAT", "x"),
                                                ("OBJECT", "Domeflat")]))]
    for ver in range(1, 5):
        for name in ("SCI", "VAR", "DQ"):
            h = fits.ImageHDU(np.zeros((8, 8), np.float32), name=name)
            h.header["EXTVER"] = ver
            hdus.append(h)
    fits.HDUList(hdus).writeto(tmp_path / "p.fits")
    info = read_frame_info(tmp_path / "p.fits")
    assert len(info.ext_headers) == 4
    assert {"PROCESSED", "LAMPON", "FLAT", "DOMEFLAT"} <= info.tags


def test_sections():
    s = parse_section("[513:1536,514:1537]")
    assert (s.x1, s.x2, s.y1, s.y2) == (512, 1536, 513, 1537)
    assert s.as_iraf() == "[513:1536,514:1537]"
    assert parse_section("[1024:513,1:2048]").x1 == 512  # amplifier sections read backwards
    assert parse_section("junk") is None


def test_ut_datetime_fallbacks(tmp_path):
    p = gsaoi_file(tmp_path / "a.fits", UT="23:59:59.95")
    assert str(read_frame_info(p).ut_datetime()) == "2017-05-05 23:59:59.950000"
    h = fits.Header([("DATE-OBS", "2017-05-05T03:04:05"), ("INSTRUME", "GSAOI")])
    from gsaoi_watch.data.descriptors import FrameInfo
    assert str(FrameInfo(h, []).ut_datetime()) == "2017-05-05 03:04:05"
    h = fits.Header([("MJD-OBS", 57878.5)])
    assert str(FrameInfo(h, []).ut_datetime()) == "2017-05-05 12:00:00"
    h = fits.Header([("DATE-OBS", "2017-05-05"), ("TIME-OBS", "04:05:06")])
    assert str(FrameInfo(h, []).ut_datetime()) == "2017-05-05 04:05:06"


def phu(**kw):
    h = fits.Header()
    for k, v in {"INSTRUME": "GSAOI", "OBSERVAT": "Gemini-South", "OBSTYPE": "OBJECT",
                 "OBSCLASS": "science", **kw}.items():
        if v is not None:
            h[k] = v
    return h


@pytest.mark.parametrize("kw, present, absent", [
    ({"OBJECT": "Domeflat OFF"}, {"LAMPOFF", "DOMEFLAT", "FLAT", "CAL"}, {"LAMPON"}),
    ({"OBJECT": "Twilight"}, {"TWILIGHT", "FLAT", "CAL"}, {"DOMEFLAT"}),
    ({"OBSTYPE": "DARK"}, {"DARK", "CAL"}, {"IMAGE"}),
    ({"BPMASK": "x", "FRAME": "AZEL_TOPO", "OBJECT": "Domeflat"},
     {"BPM", "CAL", "PROCESSED"}, {"IMAGE", "AZEL_TARGET", "LAMPON", "FLAT", "DOMEFLAT"}),
    ({"PROCFLAT": "x", "OBJECT": "Domeflat"}, {"PROCESSED", "LAMPON"}, set()),
    ({"PROCSCI": "x"}, {"PROCESSED_SCIENCE", "PROCESSED"}, {"RAW"}),
    ({"GEM-TLM": "x"}, set(), {"RAW"}),
    ({"PREPARE": "x"}, {"PREPARED"}, {"UNPREPARED"}),
    ({"OBSCLASS": None}, {"IMAGE"}, {"ACQUISITION"}),
    ({"OBSCLASS": "acqCal"}, {"ACQUISITION"}, set()),
    ({"FRAME": "AZEL_TOPO", "AIRMASS": 1.0}, {"AZEL_TARGET", "AT_ZENITH"}, set()),
    ({"FRAME": "AZEL_TOPO", "AIRMASS": 1.4}, {"AZEL_TARGET"}, {"AT_ZENITH"}),
    ({"FRAME": "AZEL_TOPO", "TRKFRAME": "FK5", "RATRACK": 1.0, "DECTRACK": 0.0},
     {"NON_SIDEREAL"}, {"SIDEREAL"}),
    ({"FRAME": "FK5", "RATRACK": 0.0, "DECTRACK": 0.0}, {"SIDEREAL"}, {"NON_SIDEREAL"}),
    ({"FRAME": "FK5"}, {"NON_SIDEREAL"}, {"SIDEREAL"}),   # track rates missing
    ({"FRAME": "AZEL_TOPO"}, set(), {"SIDEREAL", "NON_SIDEREAL"}),
    ({"OBSERVAT": "Gemini-North"}, {"NORTH"}, {"SOUTH"}),
    ({"GCALLAMP": "QH", "GCALSHUT": "OPEN"}, {"GCALFLAT", "FLAT", "CAL"}, {"LAMPON"}),
])
def test_tag_rules(kw, present, absent):
    tags = compute_tags(phu(**kw))
    assert present <= tags
    assert not (absent & tags)
    assert {"GEMINI", "GSAOI"} <= tags
