"""OBJCAT in DRAGONS' columns and units; our tools read frames in DRAGONS' layout."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from dragons_layout import to_dragons_layout

from gsaoi_watch.cli.main import main
from gsaoi_watch.data.fitsio import load_bpm, load_frame, read_catalogs, write_frame
from gsaoi_watch.data.headers import Header
from gsaoi_watch.data.objcat import OBJCAT_COLUMNS, read_objcat
from gsaoi_watch.errors import CatalogError
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.detect import (
    CATALOG_COLUMNS,
    FLAG_SATURATED,
    FLAG_TRUNCATED,
    detect_array,
)
from gsaoi_watch.sim import BPM_NAME, simulate_night

SIZE = 256


# --- detect_array's table ------------------------------------------------------------------
def _gauss(shape, x, y, flux, sx, sy=None, angle=0.0):
    sy = sx if sy is None else sy
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - x) * c + (yy - y) * s, -(xx - x) * s + (yy - y) * c
    return flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


@pytest.fixture(scope="module")
def planted():
    """An array with stars (one saturated, one on the edge), an elongated and a wide source."""
    shape = (160, 200)
    rng = np.random.default_rng(5)
    sci = rng.normal(0.0, 5.0, shape)
    stars = [(40.3, 40.7), (150.2, 30.1), (120.6, 130.3), (175.0, 120.0), (90.0, 20.0)]
    for x, y in stars:
        sci += _gauss(shape, x, y, 2e5, 2.0)
    sci += _gauss(shape, 100.4, 70.2, 2e5, 2.0)  # saturated core (DQ below)
    sci += _gauss(shape, 1.5, 80.0, 2e5, 2.0)  # on the left edge
    sci += _gauss(shape, 160.0, 80.0, 3e5, 6.0, 2.0, math.radians(30.0))  # elongated
    sci += _gauss(shape, 45.0, 120.0, 1.5e5, 6.0)  # wide: a galaxy
    dq = np.zeros(shape, np.uint16)
    dq[69:72, 99:102] = DQ["saturated"]
    dq[45, 44] = DQ["bad_pixel"]  # in the wing of the first star
    arr = Array(sci.astype(np.float32), np.full(shape, 25.0, np.float32), dq, Header())
    _, cat = detect_array(arr)
    return cat, stars


def _row(cat, x, y):
    k = int(np.argmin(np.hypot(cat["X_IMAGE"] - 1 - x, cat["Y_IMAGE"] - 1 - y)))
    assert math.hypot(cat["X_IMAGE"][k] - 1 - x, cat["Y_IMAGE"][k] - 1 - y) < 1.0
    return cat[k]


def test_detect_gives_dragons_columns_in_dragons_order(planted):
    cat, _ = planted
    order = [name for name, _, _ in OBJCAT_COLUMNS]
    assert cat.colnames == list(CATALOG_COLUMNS)
    assert [order.index(c) for c in cat.colnames] == sorted(order.index(c) for c in cat.colnames)
    for needed in ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FWHM_IMAGE",
                   "ELLIPTICITY", "FLUX_MAX", "ISOAREA_IMAGE", "A_IMAGE", "B_IMAGE",
                   "THETA_IMAGE", "FLAGS", "IMAFLAGS_ISO", "NIMAFLAGS_ISO", "BACKGROUND",
                   "MAG_AUTO", "MAGERR_AUTO", "CLASS_STAR", "FLUX_RADIUS"):
        assert needed in cat.colnames
    assert list(cat["NUMBER"]) == list(range(1, len(cat) + 1))


def test_detect_measures_what_was_planted(planted):
    cat, stars = planted
    for x, y in stars:
        r = _row(cat, x, y)
        assert abs(r["X_IMAGE"] - (x + 1)) < 0.02 and abs(r["Y_IMAGE"] - (y + 1)) < 0.02
        assert r["FWHM_IMAGE"] == pytest.approx(2.3548 * 2.0, rel=0.12)  # a pixel count
        assert r["CLASS_STAR"] > 0.9 and r["FLAGS"] == 0
        assert r["MAG_AUTO"] == pytest.approx(-2.5 * math.log10(r["FLUX_AUTO"]), abs=1e-9)
        assert r["MAGERR_AUTO"] == pytest.approx(1.0857 * r["FLUXERR_AUTO"] / r["FLUX_AUTO"],
                                                 rel=1e-3)
        assert r["FLUX_AUTO"] == pytest.approx(2e5, rel=0.02)
        # half-light radius of a Gaussian: sigma sqrt(2 ln 2) (the segment holds ~all)
        assert r["FLUX_RADIUS"] == pytest.approx(2.0 * math.sqrt(2 * math.log(2)), rel=0.1)
        assert r["ELLIPTICITY"] == pytest.approx(1 - r["B_IMAGE"] / r["A_IMAGE"], abs=1e-6)
        assert r["B_IMAGE"] > 1.1 and abs(r["BACKGROUND"]) < 1.0
    first = _row(cat, *stars[0])
    assert first["IMAFLAGS_ISO"] == DQ["bad_pixel"] and first["NIMAFLAGS_ISO"] == 1
    saturated = _row(cat, 100.4, 70.2)
    assert saturated["FLAGS"] & FLAG_SATURATED and saturated["IMAFLAGS_ISO"] & DQ["saturated"]
    assert saturated["NIMAFLAGS_ISO"] >= 8  # the rim of the masked core
    edge = cat[int(np.argmin(cat["X_IMAGE"]))]
    assert edge["FLAGS"] & FLAG_TRUNCATED
    long = _row(cat, 160.0, 80.0)
    assert long["THETA_IMAGE"] == pytest.approx(30.0, abs=2.0)
    assert long["ELLIPTICITY"] > 0.4 and long["CLASS_STAR"] < 0.2
    assert _row(cat, 45.0, 120.0)["CLASS_STAR"] < 0.2  # the galaxy


# --- a reduced night at small size ------------------------------------------------------------
@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("objcat_night")
    truth = simulate_night(out, seed=21, size=SIZE, workers=2,
                           only=["science", "flats", "bpm"])
    flats = sorted(str(p) for p in out.glob("S20170505S00[3-7]*.fits"))
    master = make_processed_flat(flats, bpm=load_bpm(out / BPM_NAME), bpm_name=BPM_NAME)
    sci = sorted(str(out / f["filename"]) for f in truth["frames"] if f["kind"] == "science")
    res = reduce_images(sci[:5], flat=master, flat_name="flat", bpm=load_bpm(out / BPM_NAME),
                        params={"skyCorrect": {"offset_sky": False}},
                        on_product=lambda f: str(write_frame(f, out / "red")))
    return out, truth, sorted(res["sky_corrected"])


def test_written_objcat_has_dragons_columns_units_and_world_positions(reduced):
    _, truth, paths = reduced
    frame_truth = next(f for f in truth["frames"]
                       if f["filename"] == Path(paths[0]).name.replace("_skyCorrected", ""))
    checked = 0
    with fits.open(paths[0]) as hdul:
        for a in frame_truth["arrays"]:
            ver = a["index"] + 1
            hdu = hdul["OBJCAT", ver]
            assert hdu.columns.names == [n for n, _, _ in OBJCAT_COLUMNS]
            units = {c.name: c.unit for c in hdu.columns}
            assert units["X_IMAGE"] == "pixel" and units["ISOAREA_IMAGE"] == "pixel**2"
            assert units["X_WORLD"] == units["FWHM_WORLD"] == "deg"
            assert units["FLUX_AUTO"] == "count" and units["MAG_AUTO"] == "mag"
            flux_col = hdu.columns.names.index("FLUX_AUTO") + 1
            assert hdu.header.comments[f"TUNIT{flux_col}"].startswith("electron")
            assert units["ELLIPTICITY"] is None
            formats = {c.name: c.format for c in hdu.columns}
            assert formats["NUMBER"] == "J" and formats["X_WORLD"] == "D"
            assert formats["FLAGS"] == "I" and formats["FLUX_AUTO"] == "E"
            cat = Table.read(hdu)
            for name in cat.colnames:
                assert np.isfinite(np.asarray(cat[name], float)).all(), name
            wcs = WCS(hdul["SCI", ver].header)
            scale = 3600 * math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))
            assert np.allclose(np.asarray(cat["FWHM_WORLD"]) * 3600,
                               np.asarray(cat["FWHM_IMAGE"]) * scale, rtol=1e-3)
            planted = np.array([s[1:] for s in a["stars"]]).reshape(-1, 3)
            for x, y, rate in planted:
                near = np.hypot(planted[:, 0] - x, planted[:, 1] - y) < 12.0
                if rate < 300 or near.sum() > 1 or not (8 < x < SIZE - 8 and 8 < y < SIZE - 8):
                    continue  # bright, isolated, on the array: centroid within 0.1 px
                k = int(np.argmin(np.hypot(cat["X_IMAGE"] - x, cat["Y_IMAGE"] - y)))
                if math.hypot(cat["X_IMAGE"][k] - x, cat["Y_IMAGE"][k] - y) > 0.5:
                    continue  # on the galaxy, or blended
                checked += 1
            # the world position is the WCS of the pixel position, every row
            ra, dec = wcs.all_pix2world(np.asarray(cat["X_IMAGE"], float),
                                        np.asarray(cat["Y_IMAGE"], float), 1)
            sep = 3600 * np.hypot((cat["X_WORLD"] - ra) * np.cos(np.radians(dec)),
                                  cat["Y_WORLD"] - dec)
            assert sep.max() < 1e-4
    assert checked >= 5


def test_world_columns_put_planted_stars_at_their_wcs_position(planted, tmp_path):
    """X_WORLD/Y_WORLD of the planted stars: the WCS of where they were planted (< 0.01")."""
    cat, stars = planted
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 80.0,
                          "CRPIX2": 60.0, "CRVAL1": 201.365, "CRVAL2": -43.019,
                          "CD1_1": -5.46e-6, "CD1_2": 2.0e-7, "CD2_1": 2.0e-7,
                          "CD2_2": 5.46e-6, "BUNIT": "electron"})
    shape = (160, 200)
    arr = Array(np.zeros(shape, np.float32), None, None, header)
    frame = Frame(phu=fits.Header({"INSTRUME": "GSAOI"}), arrays=(arr,),
                  filename="S20170505S0095_sourcesDetected.fits",
                  orig_filename="S20170505S0095.fits", meta={"catalogs": [cat]})
    path = write_frame(frame, tmp_path)
    with fits.open(path) as hdul:
        written = Table.read(hdul["OBJCAT", 1])
    wcs = WCS(header)
    for x, y in stars:
        k = int(np.argmin(np.hypot(written["X_IMAGE"] - 1 - x, written["Y_IMAGE"] - 1 - y)))
        ra, dec = wcs.all_pix2world(x + 1, y + 1, 1)
        sep = 3600 * math.hypot((written["X_WORLD"][k] - ra) * math.cos(math.radians(dec)),
                                written["Y_WORLD"][k] - dec)
        assert sep < 0.01
    k = int(np.argmin(np.hypot(written["X_IMAGE"] - 161, written["Y_IMAGE"] - 81)))
    assert written["FWHM_WORLD"][k] * 3600 == pytest.approx(
        written["FWHM_IMAGE"][k] * 0.01966, rel=0.01)
    # the elongated source at 30 degrees from +x: East is -x here, so 150 degrees from East
    assert (written["THETA_WORLD"][k] - 150.0 + 90.0) % 180.0 - 90.0 == pytest.approx(0.0,
                                                                                     abs=3.0)


def test_dragons_selections_keep_the_bright_stars(reduced):
    """DRAGONS' own cuts on an OBJCAT (measureIQ's clip_sources for AO data, clean_objcat,
    measure_bg_from_objcat) keep the bright isolated stars of our written catalogue."""
    _, truth, paths = reduced
    name = Path(paths[0]).name.replace("_skyCorrected", "")
    frame_truth = next(f for f in truth["frames"] if f["filename"] == name)
    kept = bright = 0
    with fits.open(paths[0]) as hdul:
        for a in frame_truth["arrays"]:
            c = Table.read(hdul["OBJCAT", a["index"] + 1])
            stellar = np.abs(c["FWHM_IMAGE"] / 1.08 - c["PROFILE_FWHM"]) < 0.2 * c["FWHM_IMAGE"]
            max_bad = np.where(c["IMAFLAGS_ISO"] & 4, 0, 0.02 * c["ISOAREA_IMAGE"])
            good = (stellar & (c["PROFILE_FWHM"] > 0) & (c["ELLIPTICITY"] > 0)
                    & (c["ELLIPTICITY"] < 0.5) & (c["B_IMAGE"] > 1.1)
                    & (c["FLUX_AUTO"] > 25 * c["FLUXERR_AUTO"]) & (c["ISOAREA_IMAGE"] > 20)
                    & (c["NIMAFLAGS_ISO"] <= max_bad)
                    & (c["PROFILE_EE50"] > c["PROFILE_FWHM"]))
            clean = ((c["ISOAREA_IMAGE"] >= 20) & (c["B_IMAGE"] >= 1.1)
                     & (c["A_IMAGE"] / c["B_IMAGE"] <= 50))
            assert (c["REF_NUMBER"] == -999).all() and (c["REF_MAG"] == -999).all()
            assert np.isfinite(c["BACKGROUND"][c["FLAGS"] == 0]).all()
            planted = np.array([s[1:] for s in a["stars"]]).reshape(-1, 3)
            for x, y, rate in planted:  # rate 500 e-/s: S/N ~ 30, above DRAGONS' 25
                near = np.hypot(planted[:, 0] - x, planted[:, 1] - y) < 12.0
                if rate < 500 or near.sum() > 1 or not (8 < x < SIZE - 8 and 8 < y < SIZE - 8):
                    continue
                k = int(np.argmin(np.hypot(c["X_IMAGE"] - x, c["Y_IMAGE"] - y)))
                if math.hypot(c["X_IMAGE"][k] - x, c["Y_IMAGE"][k] - y) > 0.5:
                    continue  # on the galaxy
                if c["FLAGS"][k] & FLAG_SATURATED:
                    continue  # DRAGONS leaves saturated stars out of its IQ, by design
                bright += 1
                kept += bool(good[k] and clean[k]) and c["CLASS_STAR"][k] > 0.8
    assert bright >= 5 and kept >= 0.8 * bright


def test_read_objcat_accepts_older_products_and_names_a_broken_one():
    old = Table({"number": [1, 2], "x": [10.0, 20.0], "y": [5.0, 6.0], "flux": [100.0, -999.0],
                 "flux_err": [1.0, 2.0], "fwhm": [3.0, 3.1], "ellipticity": [0.1, 0.2],
                 "peak": [9.0, 8.0], "area": [30, 31]})
    cat = read_objcat(old, path="S20170505S0095_skyCorrected.fits", extver=1)
    assert list(cat["X_IMAGE"]) == [10.0, 20.0] and list(cat["FWHM_IMAGE"]) == [3.0, 3.1]
    assert cat["FLUX_AUTO"][0] == 100.0 and math.isnan(cat["FLUX_AUTO"][1])  # -999: unknown
    assert list(cat["FLUX_MAX"]) == [9.0, 8.0] and list(cat["ISOAREA_IMAGE"]) == [30, 31]
    lower = Table({"x_image": [1.0], "y_image": [2.0], "flux_auto": [3.0]})
    assert math.isnan(read_objcat(lower, path="f.fits", extver=3)["FWHM_IMAGE"][0])
    with pytest.raises(CatalogError) as err:
        read_objcat(Table({"FLUX_AUTO": [1.0]}), path="S20170505S0095_sourcesDetected.fits",
                    extver=2)
    assert str(err.value) == ("S20170505S0095_sourcesDetected.fits: OBJCAT 2 has no "
                              "X_IMAGE/Y_IMAGE columns")
    with pytest.raises(CatalogError, match="X_IMAGE is not a numeric column"):
        read_objcat(Table({"X_IMAGE": ["a"], "Y_IMAGE": [1.0], "FLUX_AUTO": [1.0]}),
                    path="f.fits", extver=1)


# --- frames in DRAGONS' layout -------------------------------------------------------------------
def _dragons(paths, directory, **kw):
    directory.mkdir(exist_ok=True)
    return [str(to_dragons_layout(p, directory / Path(p).name.replace(
        "_skyCorrected", "_sourcesDetected"), **kw)) for p in paths]


def test_load_frame_and_catalogues_of_dragons_layout(reduced, tmp_path):
    _, _, paths = reduced
    grouped = _dragons(paths[:1], tmp_path / "g", grouped=True)[0]
    ours, theirs = load_frame(paths[0]), load_frame(grouped)
    for a, b in zip(ours.arrays, theirs.arrays):
        for plane in ("sci", "var", "dq", "objmask"):
            assert np.array_equal(getattr(a, plane), getattr(b, plane))
        assert b.header["BUNIT"] == "electron"
    with fits.open(grouped) as hdul, fits.open(paths[0]) as mine:
        assert hdul[1].name == hdul[2].name == "SCI" and "REFCAT" in hdul
        cats, own = read_catalogs(hdul, grouped), read_catalogs(mine, paths[0])
    for c, o in zip(cats, own):
        assert len(c) == len(o) > 0
        np.testing.assert_array_equal(c["X_IMAGE"], o["X_IMAGE"])
        assert "ERRX2_IMAGE" in c.colnames


@pytest.mark.parametrize("variant", ["sextractor", "none", "broken"])
def test_stack_and_qa_read_dragons_frames(reduced, tmp_path, variant, capsys, caplog):
    _, _, paths = reduced
    inputs = _dragons(paths, tmp_path / "in", objcat=variant)
    out = tmp_path / "stack.fits"
    with caplog.at_level(logging.WARNING):
        assert main(["stack", *inputs, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out} from 3 frames" in captured.out
    with fits.open(out) as hdul:
        assert hdul[0].header["NCOMBINE"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if variant == "broken":
        for p in inputs:
            lines = [m for m in warned if Path(p).name in m]
            assert len(lines) == 1 and "OBJCAT 2 has no X_IMAGE/Y_IMAGE columns" in lines[0]
            assert "\n" not in lines[0]
    else:
        assert not any("OBJCAT" in m for m in warned)
    caplog.clear()
    assert main(["qa", *inputs]) == 0
    captured = capsys.readouterr()
    assert "QA failed" not in captured.err and "Traceback" not in captured.err
    lines = [x for x in captured.out.splitlines() if not x.startswith("  ")]
    assert [x.split(" |")[0] for x in lines] == [Path(p).name for p in inputs]
    assert all("FWHM" in x or "IQ" in x for x in lines)


def test_daemon_stack_job_reads_dragons_frames(reduced, tmp_path, caplog):
    from gsaoi_watch.daemon.jobs import run_job
    _, _, paths = reduced
    inputs = _dragons(paths, tmp_path / "in", objcat="broken", grouped=True)
    with caplog.at_level(logging.WARNING):
        res = run_job({"recipe": "stack", "paths": inputs, "output_dir": str(tmp_path),
                       "output_name": "job_stack.fits"})
    assert res["products"] == [(str(tmp_path / "job_stack.fits"), "stack")]
    assert res["skipped"] == [] and "3 frames" in res["note"]
    assert sum("OBJCAT 2 has no X_IMAGE" in r.getMessage() for r in caplog.records) == 3


def test_qa_of_a_quick_look_frame_without_flat(reduced, tmp_path, capsys):
    """DRAGONS' ql _sourcesDetected frame without a flat has only DETECSRC: QA measured."""
    _, _, paths = reduced
    theirs = _dragons(paths[:1], tmp_path / "q")[0]
    with fits.open(theirs, mode="update") as hdul:
        for key in ("FLATCORR", "SUBSKY"):
            hdul[0].header.remove(key, ignore_missing=True)
    assert main(["qa", theirs]) == 0
    out = capsys.readouterr().out
    assert out.startswith(Path(theirs).name + " | FWHM")


def test_qa_and_stack_on_our_and_dragons_frames_agree(reduced, tmp_path, capsys):
    """The QA of a frame is the same from our OBJCAT and from DRAGONS' copy of it."""
    _, _, paths = reduced
    theirs = _dragons(paths[:1], tmp_path / "d")[0]
    assert main(["qa", "--json", paths[0], theirs]) == 0
    import json
    a, b = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert a["iq"]["n_stars"] == b["iq"]["n_stars"]
    if a["iq"]["n_stars"]:
        assert a["iq"]["fwhm"] == pytest.approx(b["iq"]["fwhm"], rel=1e-4)


def test_garbage_is_a_one_line_error_naming_the_file(reduced, tmp_path, capsys):
    _, _, paths = reduced
    garbage = tmp_path / "S20170505S0200_sourcesDetected.fits"
    garbage.write_bytes(b"SIMPLE  =                    T" + bytes(range(256)) * 20)
    text = tmp_path / "S20170505S0201_sourcesDetected.fits"
    text.write_text("not a FITS file\n")
    for verb in (["qa"], ["stack", "-o", str(tmp_path / "s.fits")]):
        for bad in (garbage, text):
            status = main([*verb, str(bad)])
            err = capsys.readouterr().err
            lines = [x for x in err.splitlines() if x.strip()]
            assert status != 0 and "Traceback" not in err
            assert len(lines) == 1 and bad.name in lines[0], (verb, err)
