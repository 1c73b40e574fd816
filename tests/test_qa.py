"""Quick-look QA (zero points, IQ, BG, CC), pictures and the summary page, against the truth."""

import json
import math
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gsaoi_watch.data.fitsio import load_bpm, load_frame, write_frame
from gsaoi_watch.instrument.standards import find_standard
from gsaoi_watch.instrument.tables import ARRAYS, EXTINCTION, NOMINAL_ZEROPOINTS
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.quicklook.pictures import mosaic, picture_path, write_picture
from gsaoi_watch.quicklook.qaformat import qa_header, qa_log_line
from gsaoi_watch.quicklook.summary import qa_for_product, write_summary
from gsaoi_watch.reduction import photometry, qa
from gsaoi_watch.reduction.flat import flat_correct
from gsaoi_watch.reduction.recipes import preprocess
from gsaoi_watch.sim import BPM_NAME, simulate_night
from gsaoi_watch.sim.scene import MOFFAT_BETA

SIZE = 512
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("qa_night")
    truth = simulate_night(out, seed=21, size=SIZE, workers=2,
                           only=["standard", "flats", "bpm"])
    return out, truth


@pytest.fixture(scope="module")
def master(night):
    out, _ = night
    flats = sorted(str(p) for p in out.glob("S20170505S00[3-7]*.fits"))
    flat = make_processed_flat(flats, bpm=load_bpm(out / BPM_NAME), bpm_name=BPM_NAME)
    return flat, write_frame(flat, out)


@pytest.fixture(scope="module")
def standard(night, master):
    """The four reduced standard frames, in memory and written as products."""
    out, truth = night
    names = [f["filename"] for f in truth["frames"] if f["kind"] == "standard"]
    res = reduce_images([str(out / n) for n in names], flat=master[0],
                        bpm=load_bpm(out / BPM_NAME))
    frames = res["sky_corrected"]
    paths = [write_frame(f, out) for f in frames]
    return frames, paths


def truth_frame(truth, name):
    return next(f for f in truth["frames"] if f["filename"] == name)


def planted_standard(truth, frame_truth):
    """(array index, star entry, catalogue magnitude) of the standard in one frame."""
    std_id = next(i for i, f in zip(truth["catalogue"]["id"], truth["catalogue"]["field"])
                  if f == 2)  # the first star of the standard field is the standard
    for a in frame_truth["arrays"]:
        for s in a["stars"]:
            if s[0] == std_id:
                return a["index"], s, truth["catalogue"]["mag"][std_id]
    raise AssertionError("standard not planted")


# --- standards table -----------------------------------------------------------------------
def test_standards_table_has_the_simulated_standard(night):
    _, truth = night
    planted = truth["params"]["standard"]
    std = find_standard("9132")
    assert std.magnitude("Kshort") == pytest.approx(planted["mag"])
    assert find_standard(" 9132 ") is std
    assert find_standard("NGC5128", planted["ra"] + 5 / 3600, planted["dec"]) is std
    assert find_standard("NGC5128", 201.365, -43.019) is None
    assert std.magnitude("J") is None


# --- zero points and cloud cover -----------------------------------------------------------
def test_standard_zero_points_within_0p02_mag(night, standard):
    _, truth = night
    k_nominal = EXTINCTION["Kshort"]
    errors = []
    for path in standard[1]:
        result = qa_for_product(path)
        t = truth_frame(truth, fits.getval(path, "ORIGNAME"))
        index, star, mag = planted_standard(truth, t)
        # the zero point the simulator used: mag + 2.5 log10(planted e-/s) + k (X - 1)
        zp_sim = mag + 2.5 * math.log10(star[3]) + k_nominal * (t["airmass"] - 1)
        assert result["standard"] == "9132"
        (zp,) = result["zeropoints"]
        assert zp["array"] == index
        assert zp["nominal"] == NOMINAL_ZEROPOINTS["Kshort"][index]
        errors.append(zp["zp"] - zp_sim)
        assert zp["zp"] == pytest.approx(zp_sim, abs=0.02)
        assert 0 < zp["zp_err"] < 0.01
    assert abs(np.mean(errors)) < 0.01


def test_clear_night_is_cc50_and_cloud_is_measured(night, standard):
    frames, _ = standard
    std = find_standard("9132")
    for frame in frames:
        clear = qa.frame_qa(frame, standard=std)
        assert clear.cc.band == "CC50"
        assert abs(clear.cc.extinction) < 0.02
        # 0.5 mag of cloud: every pixel (and catalogue flux) dimmed by 10**(-0.2)
        cloudy = frame.map_arrays(
            lambda i, a: a.with_(sci=a.sci * np.float32(10 ** (-0.4 * 0.5))))
        cloudy.meta["catalogs"] = frame.meta["catalogs"]
        result = qa.frame_qa(cloudy, standard=std)
        assert result.cc.extinction == pytest.approx(clear.cc.extinction + 0.5, abs=0.01)
        assert result.cc.band == "CC80"


def test_saturated_standard_gives_no_zero_point(night, standard):
    _, truth = night
    frame = standard[0][0]
    index, star, _ = planted_standard(truth, truth_frame(truth, frame.orig_filename))
    k = next(k for k, a in enumerate(frame.arrays) if photometry.array_index(frame, k) == index)
    dq = frame.arrays[k].dq.copy()
    x, y = int(round(star[1] - 1)), int(round(star[2] - 1))
    dq[y - 1:y + 2, x - 1:x + 2] |= 4  # a saturated core
    arrays = list(frame.arrays)
    arrays[k] = arrays[k].with_(dq=dq)
    hit = frame.with_(arrays=tuple(arrays))
    result = qa.frame_qa(hit, standard=find_standard("9132"))
    assert result.photometry[0].saturated
    assert result.zeropoints == () and result.cc is None
    assert any("saturated" in n for n in result.notes)


@pytest.mark.parametrize(("ext", "band"), [(0.0, "CC50"), (0.08, "CC50"), (0.2, "CC70"),
                                           (0.9, "CC80"), (1.5, "CCAny"), (float("nan"),
                                                                            "CCUnknown")])
def test_cc_bands(ext, band):
    assert qa.cc_band(ext) == band


def test_bg_and_iq_bands():
    assert qa.bg_band(15.0, "Kshort") == "BG20"
    assert qa.bg_band(13.5, "Kshort") == "BGAny"
    assert qa.bg_band(13.5, "Z") == "BGUnknown"
    assert qa.iq_band(0.4) == "IQ20"
    assert qa.iq_band(1.0) == "IQ85"
    assert qa.iq_band(2.0) == "IQAny"


# --- image quality -------------------------------------------------------------------------
def _moffat_peak_fraction(fwhm, dx, dy, sub=21):
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / MOFFAT_BETA) - 1))
    u = (np.arange(sub) + 0.5) / sub - 0.5
    rr = (u[None, :] - dx) ** 2 + (u[:, None] - dy) ** 2
    prof = (MOFFAT_BETA - 1) / (math.pi * alpha**2) * (1 + rr / alpha**2) ** -MOFFAT_BETA
    return prof.mean()


def test_fwhm_within_10_percent_and_strehl_of_the_planted_psf(night, standard):
    _, truth = night
    for frame in standard[0]:
        t = truth_frame(truth, frame.orig_filename)
        iq = qa.measure_iq(frame)
        scale = frame.phu["PIXSCALE"]
        assert iq.n_stars >= 1
        assert iq.fwhm / (t["fwhm_px"] * scale) == pytest.approx(1.0, abs=0.10)
        assert iq.fwhm_zenith == pytest.approx(iq.fwhm * t["airmass"] ** -0.6)
        assert 0 <= iq.ellipticity < 0.1  # round Moffat stars
        # Strehl of the standard: planted Moffat peak-pixel fraction over the perfect PSF's
        index, star, _ = planted_standard(truth, t)
        dx, dy = star[1] - 1 - round(star[1] - 1), star[2] - 1 - round(star[2] - 1)
        expected = (_moffat_peak_fraction(t["fwhm_px"], dx, dy)
                    / qa.ideal_peak_fraction(scale, 2.15, dx, dy))
        assert iq.strehl == pytest.approx(expected, rel=0.25)


@pytest.fixture(scope="module")
def science(night, master, tmp_path_factory):
    out, _ = night
    sci_dir = tmp_path_factory.mktemp("qa_science")
    truth = simulate_night(sci_dir, seed=21, size=SIZE, workers=2, only=["science"])
    names = [f["filename"] for f in truth["frames"] if f["kind"] == "science"]
    res = reduce_images([str(sci_dir / n) for n in names], flat=master[0],
                        bpm=load_bpm(out / BPM_NAME),
                        params={"skyCorrect": {"offset_sky": False}})
    return truth, res["sky_corrected"]


@pytest.mark.slow
def test_science_frames_iq_and_drifting_bg(science):
    truth, frames = science
    assert len(frames) == 9
    for frame in frames:
        t = truth_frame(truth, frame.orig_filename)
        result = qa.frame_qa(frame)
        iq, bg = result.iq, result.bg
        assert iq.n_stars >= 3  # the saturated 9.3 mag star and the galaxy are not used
        assert iq.fwhm / (t["fwhm_px"] * frame.phu["PIXSCALE"]) == pytest.approx(1.0, abs=0.10)
        assert iq.ellipticity < 0.1
        for i in _galaxy_free(t):  # the sky drifts by 10 % over the sequence
            assert bg.rate_per_array[i] == pytest.approx(t["sky_rate"], rel=0.03)
        assert result.zeropoints == () and result.cc is None


def test_ideal_psf_peak_fraction_limits():
    d, obs = 8.1, 1.2
    area = math.pi / 4 * (d**2 - obs**2)
    lam = 2.15e-6
    p = 0.001 / 206265.0
    # a pixel much smaller than the core: peak intensity x pixel solid angle
    assert qa.ideal_peak_fraction(0.001, 2.15) == pytest.approx(area * p**2 / lam**2, rel=1e-3)
    # a pixel much larger than the core holds nearly everything
    assert qa.ideal_peak_fraction(1.0, 2.15, sub=41) > 0.9
    # off centre, less light in the pixel
    assert qa.ideal_peak_fraction(0.02, 2.15, 0.4, 0.4) < qa.ideal_peak_fraction(0.02, 2.15)


def test_saturated_and_extended_sources_are_rejected(standard):
    frame = standard[0][0]
    iq = qa.measure_iq(frame)
    cats = [c.copy() for c in frame.meta["catalogs"]]
    arrays = list(frame.arrays)
    for k, cat in enumerate(cats):
        for row in range(len(cat)):  # every candidate saturated in its core
            x, y = int(round(cat["X_IMAGE"][row] - 1)), int(round(cat["Y_IMAGE"][row] - 1))
            dq = arrays[k].dq.copy()
            dq[max(y, 0):y + 1, max(x, 0):x + 1] |= 4
            arrays[k] = arrays[k].with_(dq=dq)
    saturated = frame.with_(arrays=tuple(arrays))
    saturated.meta["catalogs"] = cats
    assert qa.measure_iq(saturated).n_stars == 0
    # a galaxy-sized source added to the catalogue does not change the FWHM
    widened = [c.copy() for c in frame.meta["catalogs"]]
    k = next(i for i, c in enumerate(widened) if len(c))
    extra = widened[k][np.argmax(widened[k]["FLUX_AUTO"])]
    widened[k].add_row(extra)
    widened[k]["FWHM_IMAGE"][-1] = 6 * extra["FWHM_IMAGE"]
    wide = frame.with_()
    wide.meta["catalogs"] = widened
    assert qa.measure_iq(wide).fwhm == pytest.approx(iq.fwhm, rel=1e-6)


# --- background ----------------------------------------------------------------------------
def _galaxy_free(t):
    return [a["index"] for a in t["arrays"] if a["galaxy_max_rate"] < 0.01 * t["sky_rate"]]


def test_bg_level_within_3_percent_of_the_planted_sky(night, master, standard):
    out, truth = night
    for frame in standard[0]:
        t = truth_frame(truth, frame.orig_filename)
        bg = qa.measure_bg(frame)
        assert bg.source == "recorded"
        clean = _galaxy_free(t)
        assert clean
        for i in clean:
            assert bg.rate_per_array[i] == pytest.approx(t["sky_rate"], rel=0.03)
        # Kshort sky of ~48 e-/s/pix: brighter than the K BG limit at full-size pixels
        assert bg.band == ("BG20" if bg.mag >= 14.6 else "BGAny")
    # a frame that is not sky-subtracted: the level measured from its pixels
    name = standard[0][0].orig_filename
    t = truth_frame(truth, name)
    flat_corrected = flat_correct(preprocess(load_frame(out / name),
                                             bpm=load_bpm(out / BPM_NAME)), master[0])
    bg = qa.measure_bg(flat_corrected)
    assert bg.source == "measured"
    for i in _galaxy_free(t):
        assert bg.rate_per_array[i] == pytest.approx(t["sky_rate"], rel=0.03)


def test_bg_of_a_sky_subtracted_frame_without_a_recorded_level_is_unknown(standard):
    frame = standard[0][0]
    arrays = []
    for a in frame.arrays:
        h = a.header.copy()
        del h["SKYLEV"]
        arrays.append(a.with_(header=h))
    result = qa.frame_qa(frame.with_(arrays=tuple(arrays)))
    assert math.isnan(result.bg.rate)
    assert any("sky level" in n for n in result.notes)


# --- header and log ------------------------------------------------------------------------
def test_qa_header_and_log_line(standard):
    frame = standard[0][0]
    before = frame.phu.tostring()
    result = qa.frame_qa(frame, standard=find_standard("9132"))
    out = qa_header(frame, result)
    assert frame.phu.tostring() == before
    zp = result.zeropoints[0]
    assert out.phu[f"ZP_ARR{zp.array + 1}"] == pytest.approx(zp.zp, abs=1e-4)
    assert out.phu["MEANZP"] == pytest.approx(zp.zp, abs=1e-4)
    assert out.phu["MEANFWHM"] == pytest.approx(result.iq.fwhm, abs=1e-4)
    assert out.phu["SKYLEVEL"] == pytest.approx(result.bg.rate, abs=1e-3)
    assert out.phu["CCBAND"] == "CC50"
    assert out.phu["CCMET"] == ("MET" if "CCREQ" in out.phu else "UNDETERMINED")
    for key in ("MEANELLP", "STREHL", "SKYMAG", "CLOUDEXT", "IQMET", "BGMET"):
        assert key in out.phu
    # small simulated arrays: IQ and BG in arcsec are not physical, so no band is given
    for m in ("IQ", "BG"):
        assert f"{m}BAND" not in out.phu and out.phu[f"{m}MET"] == "UNDETERMINED"
        assert out.phu[f"{m}NOTE"].startswith("not physical: pixel scale")
    line = qa_log_line(result)
    assert frame.filename in line and "CC50" in line and "\n" not in line
    assert f"{zp.zp:.3f}" in line
    json.dumps(result.to_dict())  # plain data


def test_qa_for_product_is_picklable_plain_data(master, standard):
    assert pickle.loads(pickle.dumps(qa_for_product)) is qa_for_product
    result = qa_for_product(standard[1][1])
    assert pickle.loads(pickle.dumps(result)) == result
    json.dumps(result)
    assert "skipped" in qa_for_product(master[1])


# --- pictures and the summary page -----------------------------------------------------------
def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_mosaic_places_arrays_by_position():
    planes = []
    for spec in ARRAYS:
        h = fits.Header()
        h["ARRAYID"] = spec.array_id
        n = 64
        ox, oy = spec.detsec_origin(n)
        h["CCDSIZE"] = f"[1:{n},1:{n}]"
        h["DETSEC"] = f"[{ox + 1}:{ox + n},{oy + 1}:{oy + n}]"
        planes.append((np.full((n, n), spec.index, np.float32), np.ones((n, n), bool), h))
    image, factor, _ = mosaic(planes, max_pixels=1024)
    assert factor == 1
    gap_x, gap_y = round(145 * 64 / 2048), round(140 * 64 / 2048)
    assert image.shape == (128 + gap_y, 128 + gap_x)
    assert image[0, 0] == 1 and image[-1, 0] == 2 and image[-1, -1] == 3 and image[0, -1] == 0
    assert np.isnan(image[64 + gap_y // 2, 10]) and np.isnan(image[10, 64 + gap_x // 2])
    image, factor, _ = mosaic(planes, max_pixels=40)
    assert factor == 4 and max(image.shape) <= 40


def _stack_file(path):
    """A stack-like product: one SCI extension with a TAN WCS rotated by 30 degrees."""
    rng = np.random.default_rng(3)
    data = rng.normal(0, 1, (300, 420)).astype(np.float32)
    data[150, 200] = 500
    h = fits.Header()
    t = math.radians(30)
    s = 0.02 / 3600
    h.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 210, "CRPIX2": 150,
              "CRVAL1": 201.4, "CRVAL2": -43.0, "CD1_1": -s * math.cos(t),
              "CD1_2": s * math.sin(t), "CD2_1": s * math.sin(t), "CD2_2": s * math.cos(t)})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=h, name="SCI")]).writeto(path)
    return path


def test_pictures_of_flat_frame_and_stack(tmp_path, master, standard):
    products = [master[1], standard[1][0], _stack_file(tmp_path / "N5128_stack.fits")]
    for product in products:
        png = write_picture(product)
        assert png == picture_path(product) == product.with_suffix(".png")
        assert png_size(png) == (800, 800)
    small = write_picture(products[1], out=tmp_path / "small.png", size_px=300)
    assert png_size(small) == (300, 300)
    assert not list(tmp_path.glob(".*.tmp"))


def test_summary_page_links_pictures_and_qa(tmp_path, night, master, standard):
    out, _ = night
    products = []
    for path in standard[1]:
        write_picture(path)
        products.append({"path": str(path), "qa": qa_for_product(path)})
    write_picture(master[1])
    sequences = [
        {"name": "GS-CAL20170505-3 flats <Kshort>", "kind": "flat", "state": "done",
         "frames": 30, "products": [{"path": str(master[1]), "qa": qa_for_product(master[1])}]},
        {"name": "GS-2017A-Q-29-9 standard 9132", "kind": "standard", "state": "done",
         "frames": [p.name for p in standard[1]], "products": products},
        {"name": "GS-2017A-Q-29-13 NGC5128", "kind": "science", "state": "open"},
    ]
    page = write_summary(out, sequences)
    assert page == out / "index.html"
    text = page.read_text()
    for path in [*standard[1], master[1]]:
        assert f'src="{picture_path(path).name}"' in text
    assert "flats &lt;Kshort&gt;" in text
    zps = re.findall(r"(\d+\.\d{3}) \(array 2\)", text)
    assert len(zps) == 4
    for zp, p in zip(zps, products):
        assert float(zp) == pytest.approx(p["qa"]["zeropoints"][0]["zp"], abs=1e-3)
    assert text.count("CC50 (req. CC50: met)") == 4
    assert "No products yet" in text


def test_cli_qa_prints_a_line_per_frame_and_writes_pictures(tmp_path, master, standard,
                                                           capsys):
    from gsaoi_watch.cli.main import main
    for p in standard[1]:
        picture_path(p).unlink(missing_ok=True)
    status = main(["qa", *map(str, standard[1]), str(master[1]), "--png"])
    captured = capsys.readouterr().out
    assert status == 0
    lines = [x for x in captured.splitlines() if not x.startswith("  ")]
    assert len(lines) == 5
    for p, line in zip(standard[1], lines):
        assert line.startswith(p.name) and "ZP array 2" in line and "CC50" in line
    verdicts = [x.split()[:2] for x in captured.splitlines() if x.startswith("  ")
                and not x.startswith("  picture")]
    assert verdicts.count(["CC", "MET"]) == 4  # 4 standards: one line each per metric
    assert verdicts.count(["IQ", "UNDETERMINED"]) == 4  # small arrays: not physical
    assert "flat field" in lines[-1]
    for p in [*standard[1], master[1]]:
        assert png_size(picture_path(p)) == (800, 800)
    assert main(["qa", str(tmp_path / "missing.fits")]) == 1
