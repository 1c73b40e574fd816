"""The simulator's frames agree with its truth file, and look like GSAOI to the classifier."""

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.instrument.tables import ARRAYS
from gsaoi_watch.sim import BPM_NAME, simulate_night, truth_persistence, truth_plane
from gsaoi_watch.sim.detector import invert_nonlinearity
from gsaoi_watch.sim.persistence import PERSIST_RATE, PERSIST_TAU
from gsaoi_watch.sim.plan import SkyModel, plan_night

SIZE = 256
SCIENCE_TAGS = {"GEMINI", "GSAOI", "IMAGE", "RAW", "SIDEREAL", "SOUTH", "UNPREPARED"}
FLAT_TAGS = {"AZEL_TARGET", "CAL", "DOMEFLAT", "FLAT", "GEMINI", "GSAOI", "IMAGE",
             "NON_SIDEREAL", "RAW", "SOUTH", "UNPREPARED"}


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    truth = simulate_night(out, seed=7, size=SIZE, workers=1)
    return out, truth


def linearize(adu, spec, lnrs=2):
    """DRAGONS nonlinearityCorrect followed by ADUToElectrons."""
    c = adu.astype(np.float64) * spec.gain
    a0, a1, a2 = spec.coeffs[lnrs]
    return a0 * c + a1 * c**2 + a2 * c**3


def frames_of(truth, kind, sky=None):
    return [f for f in truth["frames"]
            if f["kind"] == kind and (sky is None or f["is_sky"] == sky)]


def test_night_has_the_tutorial_files(night):
    out, truth = night
    names = sorted(p.name for p in out.glob("S2017*.fits"))
    expected = ([f"S20170504S{n:04d}.fits" for n in range(114, 118)]
                + [f"S20170505S{n:04d}.fits" for n in range(30, 45)]
                + [f"S20170505S{n:04d}.fits" for n in range(60, 75)]
                + [f"S20170505S{n:04d}.fits" for n in range(95, 111)])
    assert names == expected
    assert (out / BPM_NAME).exists() and (out / "truth" / "flat.npz").exists()
    on_disk = json.loads((out / "truth.json").read_text())
    assert [f["filename"] for f in on_disk["frames"]] == expected  # time order = numbering
    assert len(frames_of(truth, "science", sky=False)) == 9
    assert len(frames_of(truth, "science", sky=True)) == 7


def test_classification_matches_dragons(night):
    out, truth = night
    for f in truth["frames"]:
        info = read_frame_info(out / f["filename"])
        if f["kind"] == "flat_on":
            assert info.tags == FLAT_TAGS | {"LAMPON"}
        elif f["kind"] == "flat_off":
            assert info.tags == FLAT_TAGS | {"LAMPOFF"}
        else:
            assert info.tags == SCIENCE_TAGS
        assert info.filter_name() == "Kshort_G1105&Clear"
        assert info.filter_name(pretty=True) == "Kshort"
        assert info.ut_datetime().isoformat().startswith(f["ut_start"][:19])
    std = read_frame_info(out / "S20170504S0114.fits")
    assert std.observation_class() == "partnerCal" and std.object() == "9132"
    assert std.is_roi() and std.exposure_time() == 30.0
    n = SIZE // 2
    assert std.array_section(pretty=True) == [f"[{SIZE // 4 + 1}:{SIZE // 4 + n},"
                                              f"{SIZE // 4 + 1}:{SIZE // 4 + n}]"] * 4
    bpm = read_frame_info(out / BPM_NAME)
    assert {"BPM", "CAL", "PROCESSED"} <= bpm.tags and "IMAGE" not in bpm.tags


def test_sky_frames_are_unguided_and_far(night):
    out, truth = night
    for f in frames_of(truth, "science"):
        info = read_frame_info(out / f["filename"])
        if f["is_sky"]:
            assert info.wavefront_sensor() is None
            # separateSky's overlap limit: 0.9 * (4096 + 145) pixels ~ 75"
            assert max(abs(f["poff"]), abs(f["qoff"])) > 0.9 * 4241 * 0.0197
        else:
            assert info.wavefront_sensor() == "GEMS"
            assert max(abs(f["poff"]), abs(f["qoff"])) < 10


def test_sky_level_and_drift_match_truth(night):
    out, truth = night
    levels = []
    for f in frames_of(truth, "science", sky=True):
        with fits.open(out / f["filename"]) as hdul:
            spec = ARRAYS[1]
            lin = linearize(hdul[2].data, spec)
            fl = truth_plane(out, "FLAT", 2)
            good = fl > 0.5
            measured = np.median(lin[good] / fl[good])
        expected = f["sky_rate"] * f["exptime"]
        levels.append((f["ut_start"], measured, expected))
        # stars cover << 1 % of a sky frame; the median sits within 0.5 % of the truth
        assert measured == pytest.approx(expected, rel=5e-3)
    measured = [m for _, m, _ in sorted(levels)]
    assert measured[-1] > measured[0] * 1.04  # the planted +10 % drift is there


def test_flat_pattern_matches_truth(night):
    out, truth = night
    on = frames_of(truth, "flat_on")
    off = frames_of(truth, "flat_off")
    for spec in ARRAYS:
        ext = spec.index + 1

        def stack(frames, spec=spec, ext=ext):
            return np.mean([linearize(fits.getdata(out / f["filename"], ext), spec)
                            for f in frames], axis=0)
        diff = stack(on) - stack(off)
        truth_flat = truth_plane(out, "FLAT", ext)
        good = truth_flat > 0.2
        ratio = diff[good] / truth_flat[good]
        level = np.median(ratio)
        rel = ratio / level - 1
        # photon + read noise of 15+15 frames at the planted lamp levels
        lamp = truth["params"]["lamp_on_rate"] * 15
        therm = truth["params"]["lamp_off_rate"] * 15
        rn = spec.read_noise[2]
        sigma = np.sqrt((lamp + 2 * therm + 2 * rn**2) / 15) / lamp
        assert level == pytest.approx(lamp, rel=0.01)
        assert np.std(rel) < 1.3 * sigma  # cosmic rays and pixel area add a little
        assert np.corrcoef(diff[good], truth_flat[good])[0, 1] > 0.95


def test_dead_and_hot_pixels(night):
    out, truth = night
    bad = truth["bad_pixels"]
    off = fits.getdata(out / frames_of(truth, "flat_off")[0]["filename"], 2)
    on = frames_of(truth, "flat_on")[0]["filename"]
    n_not_in_bpm = 0
    for arr, x, y, in_bpm in bad["dead"]:
        data = fits.getdata(out / on, arr + 1)
        assert data[y, x] < 0.05 * np.median(data)
        assert bool(fits.getdata(out / BPM_NAME, ("DQ", arr + 1))[y, x]) == in_bpm
        n_not_in_bpm += not in_bpm
    assert 0 < n_not_in_bpm < len(bad["dead"]) // 3
    hot_in_ext2 = [(x, y, r) for arr, x, y, _, r in bad["hot"] if arr == 1 and r > 30]
    assert hot_in_ext2
    exptime = frames_of(truth, "flat_off")[0]["exptime"]
    for x, y, rate in hot_in_ext2:
        box = off[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
        excess = off[y, x] - np.median(box)
        expected = rate * exptime / ARRAYS[1].gain
        noise = np.sqrt(np.median(box) / ARRAYS[1].gain + expected / ARRAYS[1].gain)
        assert abs(excess - expected) < 5 * noise + 0.05 * expected


def _isolated_stars(arr, lo, hi):
    for sid, x, y, rate in arr["stars"]:
        if not lo < rate < hi or not (30 < x < SIZE - 30 and 30 < y < SIZE - 30):
            continue
        if [s for s in arr["stars"]
                if s[0] != sid and np.hypot(s[1] - x, s[2] - y) < 30 and s[3] > 0.01 * rate]:
            continue  # blended
        yield x, y, rate


def test_star_positions_and_fluxes(night):
    out, truth = night
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    n_pos = n_flux = 0
    for f in (frames_of(truth, "science", sky=False)[0], frames_of(truth, "science", sky=True)[0]):
        for arr in f["arrays"]:
            spec = ARRAYS[arr["index"]]
            img = linearize(fits.getdata(out / f["filename"], spec.index + 1), spec)
            resp = truth_plane(out, "RESPONSE", spec.index + 1)
            flat = truth_plane(out, "FLAT", spec.index + 1)
            # bright but unsaturated stars (peak < 30 000 e-)
            for x, y, rate in _isolated_stars(arr, 1000, 12000):
                r = np.hypot(xx + 1 - x, yy + 1 - y)
                core = r < 5
                local = img - np.median(img[(r > 25) & (r < 35)])
                w = local[core]
                cx = (w * (xx[core] + 1)).sum() / w.sum()
                cy = (w * (yy[core] + 1)).sum() / w.sum()
                assert abs(cx - x) < 0.15 and abs(cy - y) < 0.15
                n_pos += 1
                if f["is_sky"] and rate > 1000:
                    # offset skies have no galaxy: the background is exactly the sky
                    ap = r < 20
                    net = img - f["sky_rate"] * f["exptime"] * flat
                    flux = (net[ap] / resp[ap]).sum() / f["exptime"]
                    fwhm = f["fwhm_px"]
                    alpha = fwhm / (2 * np.sqrt(2 ** (1 / 2.5) - 1))
                    inside = 1 - (1 + (20 / alpha) ** 2) ** -1.5
                    assert flux == pytest.approx(rate * inside, rel=0.03)
                    n_flux += 1
    assert n_pos >= 3 and n_flux >= 1


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")  # raw files say RADECSYS
def test_header_wcs_points_at_the_stars(night):
    out, truth = night
    f = frames_of(truth, "science", sky=False)[3]
    cat = truth["catalogue"]
    with fits.open(out / f["filename"]) as hdul:
        for arr in f["arrays"]:
            w = WCS(hdul[arr["index"] + 1].header)
            for sid, x, y, _ in arr["stars"][:20]:
                ra, dec = w.all_pix2world(x, y, 1)
                dra = (ra - cat["ra"][sid]) * np.cos(np.radians(dec)) * 3600
                ddec = (dec - cat["dec"][sid]) * 3600
                # the raw WCS is linear: the static distortion leaves < 1.5" errors
                assert np.hypot(dra, ddec) < 1.5


def test_saturation_and_hidden_saturation(tmp_path):
    # Full-size PSF sampling matters for the core; the science frames at 512 suffice.
    truth = simulate_night(tmp_path, seed=3, size=512, workers=2, only=["science"])
    f = frames_of(truth, "science", sky=False)[0]
    n_sat = sum(a["n_saturated"] for a in f["arrays"])
    n_low = sum(a["n_reads_low"] for a in f["arrays"])
    assert n_sat > 20 and n_low > 0
    with fits.open(tmp_path / f["filename"]) as hdul:
        plateau = sum(int(np.sum(hdul[s.index + 1].data == np.float32(s.well))) for s in ARRAYS)
        assert plateau == n_sat - n_low


def test_nonlinearity_round_trip():
    for spec in ARRAYS:
        linear_adu = 30000.0
        raw_e = invert_nonlinearity(linear_adu * spec.gain, spec.coeffs[2])
        corrected = linearize(np.array(raw_e / spec.gain), spec) / spec.gain
        assert corrected == pytest.approx(linear_adu, rel=1e-9)
        assert raw_e / spec.gain < linear_adu  # the detector reads low when non-linear


def test_same_seed_same_pixels(tmp_path):
    a = simulate_night(tmp_path / "a", seed=11, size=64, workers=1, only=["standard"])
    b = simulate_night(tmp_path / "b", seed=11, size=64, workers=2, only=["standard"])
    c = simulate_night(tmp_path / "c", seed=12, size=64, workers=1, only=["standard"])
    name = a["frames"][0]["filename"]
    da = fits.getdata(tmp_path / "a" / name, 2)
    assert np.array_equal(da, fits.getdata(tmp_path / "b" / name, 2))
    assert not np.array_equal(da, fits.getdata(tmp_path / "c" / name, 2))
    assert b["frames"][0]["filename"] == name and c


def test_bad_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        simulate_night(tmp_path, size=100)


def test_roi_frames_reproduce_the_row_bug(night):
    out, truth = night
    f = frames_of(truth, "standard")[0]
    x0, y0 = truth["conventions"]["roi_origin"]
    n = SIZE // 2
    for arr in f["arrays"]:
        ext = arr["index"] + 1
        shift = 1 if arr["index"] < 2 else -1
        assert arr["roi_row_shift"] == shift
        info = read_frame_info(out / f["filename"])
        assert info.array_section()[arr["index"]].y1 == y0  # the header keeps the bug
        data = fits.getdata(out / f["filename"], ext).astype(float)
        flat = truth_plane(out, "FLAT", ext)
        # the ROI's dead pixels sit on the truly read rows, not on the nominal ones
        dead = [(x - x0, y - y0 - shift) for a, x, y, _ in truth["bad_pixels"]["dead"]
                if a == arr["index"] and x0 <= x < x0 + n and 0 <= y - y0 - shift < n]
        for x, y in dead:
            assert data[y, x] < 0.2 * np.median(data)
        true_rows = flat[y0 + shift:y0 + shift + n, x0:x0 + n]
        nominal = flat[y0:y0 + n, x0:x0 + n]
        good = (true_rows > 0.2) & (nominal > 0.2)
        assert (np.corrcoef(data[good], true_rows[good])[0, 1]
                > np.corrcoef(data[good], nominal[good])[0, 1])


def _sky_line_residuals(frames):
    t = np.array([f["extra"]["sky_mid_s"] for f in frames])
    rates = np.array([f["sky_rate"] for f in frames])
    return rates / np.polyval(np.polyfit(t, rates, 1), t) - 1


@pytest.mark.parametrize("seed", [7, 21, 33, 20170505])
def test_sky_varies_on_minutes_not_on_a_line(seed):
    night = plan_night(seed, SIZE)
    model = night.params["sky_model"]
    amplitude = model["amplitude"]
    assert amplitude == 0.01 and len(model["periods"]) == 3
    assert all(1200 <= p <= 4800 for p in model["periods"])  # rises and falls of 10-40 min
    frames = [f.to_dict() for f in night.frames if f.kind in ("science", "standard")]
    # each frame's rate is the model at mid-exposure (science: + drift and a 0.01 % jitter)
    sky = SkyModel.from_dict(model)
    p = night.params
    for f in frames:
        v = f["extra"]["sky_variation"]
        assert abs(v) <= amplitude * (1 + 1e-9)
        assert float(sky.variation(f["extra"]["sky_mid_s"])) == pytest.approx(v, abs=1e-12)
        if f["kind"] == "standard":
            assert f["sky_rate"] == pytest.approx(p["standard_sky_rate"] * (1 + v), rel=1e-12)
        else:
            trend = 1 + p["sky_drift"] * (f["extra"]["sky_mid_s"] - 30.0) / p["science_span_s"]
            assert f["sky_rate"] == pytest.approx(p["sky_base_rate"] * trend * (1 + v),
                                                  rel=6 * p["sky_jitter"])
    # a straight line through the offset skies' rates misses by a few tenths of a per cent
    skies = [f for f in frames if f["kind"] == "science" and f["is_sky"]]
    resid = _sky_line_residuals(skies)
    assert 0.0015 < np.max(np.abs(resid)) < 1.5 * amplitude
    assert np.std(resid) > 2 * p["sky_jitter"]


def test_sky_model_is_random_per_night():
    a, b = (plan_night(s, SIZE).params["sky_model"] for s in (7, 8))
    assert a["periods"] != b["periods"] and a["phases"] != b["phases"]
    assert plan_night(7, SIZE).params["sky_model"] == a


def test_persistence_of_earlier_bright_pixels(night):
    out, truth = night
    sci = frames_of(truth, "science")
    first, sky = sci[0], sci[1]
    assert sky["is_sky"] and not first["is_sky"]
    assert sky["persistence"]["sources"] == [first["filename"]]
    assert all(frames_of(truth, "flat_on")[k]["persistence"]["n_pixels"] == [0] * 4
               for k in range(15))
    n_checked = 0
    for arr in sky["arrays"]:
        ext = arr["index"] + 1
        spec = ARRAYS[arr["index"]]
        earlier = truth_persistence(out, first["filename"], ext)
        planted = truth_persistence(out, sky["filename"], ext)
        # the pixels the first frame left latent, and only those, carry persistence
        assert np.array_equal(planted["persist"], earlier["latent"])
        assert np.all(planted["from"] == 1)
        if not len(planted["persist"]):
            continue
        # a filled pixel: 3 e-/s * 180 s * (exp(-34/180) - exp(-94/180)) ~ 127 e-
        assert planted["charge"].max() == pytest.approx(
            PERSIST_RATE * PERSIST_TAU * (np.exp(-34 / PERSIST_TAU) - np.exp(-94 / PERSIST_TAU)),
            rel=1e-6)
        # the sky frame is a different field: the pixels are ordinary sky, a little brighter
        assert not np.isin(planted["persist"], planted["latent"]).any()
        data = linearize(fits.getdata(out / sky["filename"], ext), spec).reshape(-1)
        flat = truth_plane(out, "FLAT", ext).reshape(-1)
        idx = planted["persist"]
        ok = flat[idx] > 0.5
        excess = data[idx][ok] - sky["sky_rate"] * sky["exptime"] * flat[idx][ok]
        noise = np.sqrt(sky["sky_rate"] * sky["exptime"] + spec.read_noise[2] ** 2)
        diff = np.median(excess - planted["charge"][ok])
        assert abs(diff) < 4 * 1.25 * noise / np.sqrt(ok.sum())
        assert np.median(excess) > 10 * noise / np.sqrt(ok.sum())
        n_checked += 1
    assert n_checked >= 2
    # it decays: two frames on, the same first-frame pixels get less
    third = sci[2]
    for ext in range(1, 5):
        p2 = truth_persistence(out, sky["filename"], ext)
        p3 = truth_persistence(out, third["filename"], ext)
        from_first = (p3["from"] & 1) != 0
        common = np.isin(p3["persist"][from_first], p2["persist"])
        assert common.all()
        if common.any():
            assert p3["charge"][from_first].max() < 0.7 * p2["charge"].max()
