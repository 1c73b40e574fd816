"""Every product opens with the tags and descriptor values DRAGONS gives its own products.

A small simulated night is reduced end to end (master flat, standard and science
``_skyCorrected`` frames, the pure-sky ``_flatCorrected`` frames) and stacked.  Each product
is opened with :func:`read_frame_info` and checked against a table written from
``shared/gsaoi_facts.md`` §1 (tags, §1.3; descriptors, §1.2; prepare-time rewrites, §1.4;
the array numbers of §2.1): the expected values come from the raw inputs' headers (read
with plain astropy) and those rules, never from the product itself.  Then the file tools
(typewalk, showd, dataselect) on a directory of raw frames and products, the refusals
(a stack is not a frame to reduce; a raw file with the wrong number of arrays), the
daemon's arrival gate given a stack, and the stack's header as DRAGONS itself reads it.
"""

import datetime as dt
import logging
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from engine_harness import Night

from gsaoi_watch.calibration import db
from gsaoi_watch.cli.main import main
from gsaoi_watch.data.fitsio import load_bpm, load_frame, read_frame_info, write_frame
from gsaoi_watch.errors import FrameError
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.pipeline.stack_files import stack_files
from gsaoi_watch.sim import BPM_NAME, simulate_night

pytestmark = pytest.mark.slow  # one small night reduced and stacked (~30 s)

SIZE = 128

# --- the rules, from gsaoi_facts ---------------------------------------------------------------
#: §2.1, in extension order: ARRAYID, gain (e-/ADU), read noise by LNRS (e-), well (ADU),
#: linlimit, non-linearity coefficients (a0, a1, a2) for data in electrons.
ARRAYS = (
    ("H2RG-032-074", 2.434, {2: 26.53, 8: 13.63, 16: 10.22}, 52400, 0.73,
     (0.9947237, 3.0403620e-07, 4.2870263e-12)),
    ("H2RG-032-064", 2.010, {2: 19.10, 8: 9.85, 16: 7.44}, 50250, 0.64,
     (0.9944842, 3.3573418e-07, 9.1085864e-12)),
    ("H2RG-032-071", 2.411, {2: 27.24, 8: 14.22, 16: 10.61}, 53700, 0.76,
     (0.9947278, 2.9311700e-07, 3.7454887e-12)),
    ("H2RG-032-061", 2.644, {2: 32.26, 8: 16.78, 16: 12.79}, 52300, 0.75,
     (0.9958842, 2.1448022e-07, 3.8885419e-12)),
)
#: §1.2 read_speed_setting from LNRS.
READ_SPEED = {2: "Bright Objects", 8: "Faint Objects", 16: "Very Faint Objects"}
#: The array whose header DRAGONS' mosaic keeps (transform.find_reference_extension: the
#: central one, preferring left and down: ext 2, DETSEC [1:2048,1:2048]).
MOSAIC_REFERENCE = 1
#: §2.4: DRAGONS resamples GSAOI to 0.02"/pix; the simulator scales the pixels of a
#: smaller detector so the field stays the same, and the stack's grid with them.
STACK_SCALE = 0.02 * 2048 / SIZE

RAW_IMAGE = {"GEMINI", "GSAOI", "IMAGE", "RAW", "SIDEREAL", "SOUTH", "UNPREPARED"}
RAW_LAMPON = {"AZEL_TARGET", "CAL", "DOMEFLAT", "FLAT", "GEMINI", "GSAOI", "IMAGE", "LAMPON",
              "NON_SIDEREAL", "RAW", "SOUTH", "UNPREPARED"}
#: §1.3: GEM-TLM drops RAW, a PREPAR* keyword turns UNPREPARED into PREPARED, PROCFLAT adds
#: PROCESSED (LAMPON stays: GSAOI's lamp rule has no blocked_by), PROCSCI adds PROCESSED
#: and PROCESSED_SCIENCE.  DRAGONS' own intermediate products are PREPARED, not PROCESSED.
EXPECTED_TAGS = {
    "flat": {"AZEL_TARGET", "CAL", "DOMEFLAT", "FLAT", "GEMINI", "GSAOI", "IMAGE", "LAMPON",
             "NON_SIDEREAL", "PREPARED", "PROCESSED", "SOUTH"},
    "skyCorrected": {"GEMINI", "GSAOI", "IMAGE", "PREPARED", "SIDEREAL", "SOUTH"},
    "flatCorrected": {"GEMINI", "GSAOI", "IMAGE", "PREPARED", "SIDEREAL", "SOUTH"},
    "stack": {"GEMINI", "GSAOI", "IMAGE", "PREPARED", "PROCESSED", "PROCESSED_SCIENCE",
              "SIDEREAL", "SOUTH"},
}
#: §1.4 / DRAGONS' _update_datalab and stackFrames: the data label of each product.
DATALAB_SUFFIX = {"flat": "-SQ-FLAT", "skyCorrected": "", "flatCorrected": "", "stack": "-STACK"}


def _linearised(coeffs, c):
    """§2.2: linear_e = a0 c + a1 c^2 + a2 c^3 for c in electrons."""
    a0, a1, a2 = coeffs
    return a0 * c + a1 * c * c + a2 * c ** 3


def _cd_scale(h):
    det = h["CD1_1"] * h["CD2_2"] - h["CD1_2"] * h["CD2_1"]
    return 3600.0 * math.sqrt(abs(det))


def _shifted(text, dy):
    x1, x2, y1, y2 = (int(v) for v in re.findall(r"\d+", text))
    return f"[{x1}:{x2},{y1 + dy}:{y2 + dy}]"


def _roi_fixed(phu, ext, index, key):
    """§1.4 central-ROI fix: rows of CCDSEC/DETSEC shifted +1 (ext 1, 2) or -1 (ext 3, 4).

    The rule is for CCDSEC '[513:1536,513:1536]' of a 2048 array: the central half, here
    of the simulator's smaller arrays.
    """
    n = int(re.findall(r"\d+", ext["CCDSIZE"])[1])
    central = f"[{n // 4 + 1}:{3 * n // 4},{n // 4 + 1}:{3 * n // 4}]"
    if phu["DATE-OBS"] >= "2013-05-13" and ext["CCDSEC"] == central:
        return _shifted(ext[key], 1 if index in (0, 1) else -1)
    return ext[key]


def _qa_state(phu):
    pireq, gemqa = phu.get("RAWPIREQ", "UNKNOWN"), phu.get("RAWGEMQA", "UNKNOWN")
    if gemqa == "BAD":
        return "Fail"
    if "CHECK" in (pireq, gemqa):
        return "CHECK"
    if "UNKNOWN" in (pireq, gemqa):
        return "Undefined"
    return {("YES", "USABLE"): "Pass", ("NO", "USABLE"): "Usable"}.get((pireq, gemqa),
                                                                        "Undefined")


def _wavefront_sensor(phu):
    names = [n for n, k in (("AOWFS", "AOWFS_ST"), ("OIWFS", "OIWFS_ST"), ("PWFS1", "PWFS1_ST"),
                            ("PWFS2", "PWFS2_ST")) if phu.get(k) == "guiding"]
    if "GWFS1CFG" in phu:
        names.append("GEMS")
    return "&".join(sorted(names)) or None


def _pretty(filter1, filter2):
    comps = [re.match(r"(.*?)_G", f).group(1) if "_G" in f else f for f in (filter1, filter2)]
    return "&".join(c for c in comps if "Clear" not in c and "open" not in c.lower())


def _raw(path):
    with fits.open(path) as hdul:
        return hdul[0].header.copy(), [h.header.copy() for h in hdul[1:]]


def expected(kind, raw_path, *, stack=None):
    """The descriptor values DRAGONS gives a product of ``kind`` made from ``raw_path``.

    ``stack``: (raw paths of the inputs used, (ny, nx) of the stack) for the stack, whose
    first input is the alignment reference and whose PHU DRAGONS keeps.
    """
    phu, exts = _raw(raw_path)
    lnrs, coadds = phu["LNRS"], phu["COADDS"]
    out = {
        "object": phu["OBJECT"], "observation_class": phu["OBSCLASS"],
        "observation_type": phu["OBSTYPE"],
        "data_label": phu["DATALAB"] + DATALAB_SUFFIX[kind],
        "filter_name": f"{phu['FILTER1']}&{phu['FILTER2']}",
        "filter_name_pretty": _pretty(phu["FILTER1"], phu["FILTER2"]),
        "exposure_time": float(phu["EXPTIME"]), "coadds": coadds,
        "read_mode": phu["READMODE"], "read_speed_setting": READ_SPEED[lnrs],
        "ut_datetime": dt.datetime.combine(dt.date.fromisoformat(phu["DATE-OBS"]),
                                           dt.time.fromisoformat(phu["UT"])),
        "position_angle": float(phu["PA"]),
        "target_ra": float(phu["RA"]), "target_dec": float(phu["DEC"]),
        "qa_state": _qa_state(phu), "wavefront_sensor": _wavefront_sensor(phu),
    }
    if kind != "stack":
        scale = float(np.mean([_cd_scale(h) for h in exts]))
        detsec = [_roi_fixed(phu, h, i, "DETSEC") for i, h in enumerate(exts)]
        out.update({
            "pixel_scale": scale, "ra": exts[0]["CRVAL1"], "dec": exts[0]["CRVAL2"],
            "airmass": float(phu["AIRMASS"]),
            "gain": [1.0] * 4,  # ADUToElectrons
            "read_noise": [round(a[2][lnrs] / math.sqrt(coadds), 2) for a in ARRAYS],
            "saturation_level": [_linearised(a[5], a[3] * a[1]) for a in ARRAYS],
            "non_linear_level": [_linearised(a[5], a[4] * a[3] * a[1]) for a in ARRAYS],
            "array_name": [h["ARRAYID"] for h in exts],
            "array_section": [_roi_fixed(phu, h, i, "CCDSEC") for i, h in enumerate(exts)],
            "detector_section": detsec, "data_section": [h["DATASEC"] for h in exts],
        })
    else:
        used, (ny, nx) = stack
        ref = ARRAYS[MOSAIC_REFERENCE]
        scale = STACK_SCALE
        detsec = [phu["DETSIZE"]]  # the union of the four arrays' DETSEC: the whole mosaic
        out.update({
            "pixel_scale": scale,
            "ra": float(phu["RA"]), "dec": float(phu["DEC"]),  # a grid centred on the target
            "airmass": float(np.mean([_raw(p)[0]["AIRMASS"] for p in used])),
            "gain": [1.0],
            # stackFrames: the rms of the inputs' read noise (all the same here)
            "read_noise": [round(ref[2][lnrs] / math.sqrt(coadds), 2)],
            "saturation_level": [_linearised(ref[5], ref[3] * ref[1])],
            "non_linear_level": [_linearised(ref[5], ref[4] * ref[3] * ref[1])],
            "array_name": [phu["DETECTOR"]],  # no ARRAYID once mosaicked
            "array_section": [None], "detector_section": detsec,
            "data_section": [f"[1:{nx},1:{ny}]"],
        })
    sign = -1.0 if phu["INPORT"] == 1 else 1.0
    out["detector_x_offset"] = sign * phu["POFFSET"] / scale
    out["detector_y_offset"] = -phu["QOFFSET"] / scale
    group = ([out["filter_name_pretty"], out["exposure_time"], phu["GEMPRGID"]]
             if "FLAT" in EXPECTED_TAGS[kind] else
             [phu["OBSID"], out["filter_name_pretty"], out["exposure_time"]])
    out["group_id"] = "_".join(str(p) for p in [*group, phu["READMODE"], tuple(detsec)])
    return out


def observed(info):
    """The same descriptors, read by our FrameInfo."""
    out = {name: getattr(info, name)() for name in (
        "object", "observation_class", "observation_type", "data_label", "filter_name",
        "exposure_time", "coadds", "read_mode", "read_speed_setting", "ut_datetime",
        "position_angle", "target_ra", "target_dec", "qa_state", "wavefront_sensor",
        "pixel_scale", "ra", "dec", "airmass", "gain", "read_noise", "saturation_level",
        "non_linear_level", "array_name", "detector_x_offset", "detector_y_offset",
        "group_id")}
    out["filter_name_pretty"] = info.filter_name(pretty=True)
    for name in ("array_section", "detector_section", "data_section"):
        out[name] = getattr(info, name)(pretty=True)
    return out


# --- the night ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Raw night (128-pixel arrays), its products, and the stack of its science frames."""
    out = tmp_path_factory.mktemp("dragons_night")
    truth = simulate_night(out, seed=33, size=SIZE, workers=2)
    kinds = {f["filename"]: f["kind"] for f in truth["frames"]}
    bpm = load_bpm(out / BPM_NAME)
    red = out / "reduced"
    lamps = sorted(str(out / n) for n, k in kinds.items() if k in ("flat_on", "flat_off"))
    master = make_processed_flat(lamps, bpm=bpm, bpm_name=BPM_NAME)
    flat = write_frame(master, red)
    for kind, params in (("standard", {}), ("science", {"skyCorrect": {"offset_sky": False}})):
        names = sorted(str(out / n) for n, k in kinds.items() if k == kind)
        reduce_images(names, flat=master, flat_name=flat.name, bpm=bpm, bpm_name=BPM_NAME,
                      params=params, on_product=lambda f: str(write_frame(f, red)))
    science = sorted(p for p in red.glob("*_skyCorrected.fits")
                     if kinds[_root(p)] == "science")
    stack, result = stack_files(science, red / "disco_stack.fits")
    return SimpleNamespace(raw=out, red=red, kinds=kinds, flat=flat, stack=stack,
                           result=result)


def _root(path):
    """The raw frame a product is named after: S20170505S0095_skyCorrected -> S20170505S0095."""
    return Path(path).name.split("_")[0] + ".fits"


def _products(night):
    """(kind, product path, raw path of the frame whose PHU the product keeps)."""
    rows = []
    for path in sorted(night.red.glob("*.fits")):
        if path == night.stack:
            continue
        kind = path.name[:-5].split("_")[-1]
        rows.append((kind, path, night.raw / _root(path)))
    return rows


def test_every_product_is_covered(night):
    kinds = [k for k, _, _ in _products(night)]
    assert kinds.count("flat") == 1
    assert kinds.count("skyCorrected") == 4 + 9  # the standard's dithers, the science objects
    assert kinds.count("flatCorrected") == 7  # the science sequence's pure sky frames
    assert set(kinds) == {"flat", "skyCorrected", "flatCorrected"}


def test_raw_frames_carry_the_documented_raw_tags(night):
    """§1.3 / §G: what the simulator writes is what DRAGONS calls raw."""
    for name, kind in night.kinds.items():
        tags = read_frame_info(night.raw / name).tags
        if kind == "flat_on":
            assert tags == RAW_LAMPON, name
        elif kind in ("science", "standard"):
            assert tags == RAW_IMAGE, name


def _compare(kind, info, want):
    got = observed(info)
    assert set(info.tags) == EXPECTED_TAGS[kind], info.path
    assert not {"RAW", "UNPREPARED"} & info.tags
    for name, value in want.items():
        have = got[name]
        if isinstance(value, float):
            assert have == pytest.approx(value, rel=1e-6, abs=1e-9), (info.path, name)
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert have == pytest.approx(value, rel=1e-5), (info.path, name)
        else:
            assert have == value, (info.path, name)


def test_flat_and_frames_have_dragons_tags_and_descriptors(night):
    for kind, path, raw in _products(night):
        _compare(kind, read_frame_info(path), expected(kind, raw))


def test_stack_has_dragons_tags_and_descriptors(night):
    used = [night.raw / _root(n) for n in night.result.meta["used"]]
    assert len(used) >= 6
    with fits.open(night.stack) as hdul:
        shape = hdul["SCI"].data.shape
    info = read_frame_info(night.stack)
    want = expected("stack", used[0], stack=(used, shape))
    _compare("stack", info, want)
    # the literal values of the tutorial night
    assert info.read_mode() == "FOWLER" and info.filter_name(pretty=True) == "Kshort"
    assert info.exposure_time() == 60.0 and info.gain() == [1.0]
    assert info.pixel_scale() == pytest.approx(0.02 * 2048 / SIZE)
    assert np.isfinite(info.detector_x_offset()) and np.isfinite(info.detector_y_offset())


def test_stack_header_as_dragons_reads_it(night):
    """Plain astropy: the keywords DRAGONS' descriptors and primitives read directly."""
    used = [night.raw / _root(n) for n in night.result.meta["used"]]
    ref_phu, _ = _raw(used[0])
    with fits.open(night.stack) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "VAR", "DQ"]
        phu, sci = hdul[0].header, hdul["SCI"].header
        for key in ("PA", "READMODE", "LNRS", "POFFSET", "QOFFSET", "XOFFSET", "YOFFSET",
                    "RAOFFSET", "DECOFFSE", "INPORT", "FILTER1", "FILTER2", "DATE-OBS", "UT",
                    "OBSTYPE", "OBSCLASS", "OBSID", "COADDS", "DETECTOR", "RA", "DEC"):
            assert phu[key] == ref_phu[key], key
        for key in ("PROCSCI", "STACKFRM", "ALIGN", "CORRWCS", "GEM-TLM", "PREPARE"):
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$", phu[key]), key
        assert "ADDRECAT" not in phu and "ASTRMTRY" not in phu  # relative astrometry
        assert phu["NCOMBINE"] == len(used) and phu["ORIGNAME"] == used[0].name
        assert phu["NEXTEND"] == 3 and phu["EXPTIME"] == ref_phu["EXPTIME"]
        assert "BUNIT" not in phu
        ny, nx = hdul["SCI"].data.shape
        assert sci["DATASEC"] == f"[1:{nx},1:{ny}]" and sci["DETSEC"] == ref_phu["DETSIZE"]
        assert sci["EXTNAME"] == "SCI" and sci["EXTVER"] == 1
        assert sci["BUNIT"] == "electron" and sci["GAIN"] == 1.0
        assert "ARRAYID" not in sci and "CCDSEC" not in sci
        for name in ("VAR", "DQ"):
            assert hdul[name].header["EXTVER"] == 1


def test_stack_is_not_a_frame_to_reduce(night):
    with pytest.raises(FrameError) as err:
        load_frame(night.stack)
    text = str(err.value)
    assert "\n" not in text and "disco_stack.fits" in text and "mosaicked product" in text


def test_wrong_number_of_arrays_still_rejected(night, tmp_path):
    science = next(n for n, k in sorted(night.kinds.items()) if k == "science")
    with fits.open(night.raw / science) as hdul:
        phu = hdul[0].copy()
        phu.header["NEXTEND"] = 1  # not truncated: a raw file of one array
        fits.HDUList([phu, hdul[1].copy()]).writeto(tmp_path / "one_array.fits")
    with pytest.raises(FrameError, match="has 1 array extensions; a GSAOI frame has 4"):
        read_frame_info(tmp_path / "one_array.fits")
    sky = next(night.red.glob("*_skyCorrected.fits"))
    with fits.open(sky) as hdul:
        keep = [hdul[0].copy()] + [h.copy() for h in hdul[1:] if h.name == "SCI"][:2]
        keep[0].header["NEXTEND"] = 2
        fits.HDUList(keep).writeto(tmp_path / "two_arrays.fits")
    with pytest.raises(FrameError, match="2 array extensions; a PREPARED GSAOI product has 4"):
        read_frame_info(tmp_path / "two_arrays.fits")


# --- the file tools ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(night, tmp_path_factory):
    """A directory of raw frames, products and the stack, and the tags each should have."""
    d = tmp_path_factory.mktemp("mixed")
    names = sorted(night.kinds)
    raw = {next(n for n in names if night.kinds[n] == k): t
           for k, t in (("flat_on", RAW_LAMPON), ("science", RAW_IMAGE),
                        ("standard", RAW_IMAGE))}
    want = {}
    for name, tags in raw.items():
        shutil.copy(night.raw / name, d / name)
        want[name] = tags
    products = _products(night)
    picked = [next(r for r in products if r[0] == "flat"),
              next(r for r in products if r[0] == "flatCorrected"),
              next(r for r in products if night.kinds[_root(r[1])] == "standard"),
              next(r for r in products if r[0] == "skyCorrected"
                   and night.kinds[_root(r[1])] == "science")]
    for kind, path, _ in picked:
        shutil.copy(path, d / path.name)
        want[path.name] = EXPECTED_TAGS[kind]
    shutil.copy(night.stack, d / night.stack.name)
    want[night.stack.name] = EXPECTED_TAGS["stack"]
    return d, want


def test_typewalk_classifies_every_file(mixed, capsys):
    d, want = mixed
    assert main(["typewalk", "-d", str(d)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^\s+(\S+) \.+ (.*)$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"\((\w+)\)", m.group(2)))
    assert rows == want


def test_showd_reads_every_file(mixed, night, capsys):
    d, want = mixed
    files = sorted(str(p) for p in d.glob("*.fits"))
    assert main(["showd", *files, "-d", "position_angle,read_mode,exposure_time,gain",
                 "--csv"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.strip().splitlines()
    assert lines[0] == "filename,position_angle,read_mode,exposure_time,gain"
    rows = {Path(line.split(",")[0]).name: line.split(",", 1)[1] for line in lines[1:]}
    assert set(rows) == set(want)
    ref = _raw(night.raw / _root(night.result.meta["used"][0]))[0]
    assert rows["disco_stack.fits"] == f"{float(ref['PA'])},FOWLER,{float(ref['EXPTIME'])},[1.0]"


def test_dataselect_selects_by_processed_tags(mixed, capsys):
    d, want = mixed
    files = sorted(str(p) for p in d.glob("*.fits"))

    def select(*args):
        assert main(["dataselect", *files, *args]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        return {Path(line).name for line in out.split()}

    assert select("--tags", "PROCESSED_SCIENCE") == {"disco_stack.fits"}
    assert select("--tags", "PROCESSED") == {n for n, t in want.items() if "PROCESSED" in t}
    assert select("--tags", "PREPARED", "--xtags", "PROCESSED") == \
        {n for n, t in want.items() if t == EXPECTED_TAGS["skyCorrected"]}
    science = select("--xtags", "CAL", "--expr", 'observation_class=="science"')
    assert "disco_stack.fits" in science and not any("flat.fits" in n for n in science)


# --- the daemon -------------------------------------------------------------------------------
def test_daemon_ignores_a_stack_dropped_among_raw_frames(night, tmp_path, caplog):
    stage = tmp_path / "stage"
    stage.mkdir()
    science = next(n for n, k in sorted(night.kinds.items()) if k == "science")
    sky = night.red / science.replace(".fits", "_skyCorrected.fits")
    for path in (night.raw / science, sky, night.stack, night.flat):
        shutil.copy(path, stage / path.name)
    n = Night(tmp_path / "daemon", stage)
    try:
        n.arrive(science)
        calls = len(n.fake.calls)
        with caplog.at_level(logging.INFO, logger="gsaoi_watch.daemon"):
            n.arrive(night.stack.name, sky.name, night.flat.name)
        assert len(n.fake.calls) == calls  # nothing reduced
        rows = {Path(r.path).name: r for r in db.Frame.select()}
        for name, status in ((night.stack.name, "PROCESSED"), (sky.name, "PREPARED"),
                             (night.flat.name, "PROCESSED")):
            assert rows[name].state == "ignored" and rows[name].error is None, name
            assert f"frame={name} ignored: processed product ({status}), not a raw frame" in \
                [r.getMessage() for r in caplog.records], name
        assert rows[science].state == "ingested"
        assert not [r for r in caplog.records if "quarantined" in r.getMessage()]
    finally:
        db.close_database()
