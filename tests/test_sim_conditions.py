"""Requested and delivered conditions: the simulator plants what its truth and headers say."""

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from scipy.optimize import least_squares

from gsaoi_watch.cli.main import main
from gsaoi_watch.instrument.tables import ARRAYS
from gsaoi_watch.sim import Conditions, Delivered, plan_night, simulate_night, truth_plane
from gsaoi_watch.sim.conditions import parse_band
from gsaoi_watch.sim.headers import primary_header, roi_origin
from gsaoi_watch.sim.scene import MOFFAT_BETA

SIZE = 256
SEED = 11
ONLY = ["standard", "science"]
PASSING = (0.0, 0.8, 0.0)  # a cloud passing over the science sequence
CLOUD = Conditions(standard=Delivered(extinction=0.5), science=Delivered(extinction=PASSING))
BAD = Conditions(iq=20, cc=50, bg=50, wv="Any",
                 standard=Delivered(iq_factor=2.5, extinction=0.5, sky_factor=3.0),
                 science=Delivered(iq_factor=2.5, extinction=PASSING, sky_factor=3.0))


def _night(tmp_path_factory, name, conditions=None):
    out = tmp_path_factory.mktemp(name)
    kwargs = {} if conditions is None else {"conditions": conditions}
    truth = simulate_night(out, seed=SEED, size=SIZE, workers=2, only=ONLY, **kwargs)
    return out, truth


@pytest.fixture(scope="module")
def nominal(tmp_path_factory):
    return _night(tmp_path_factory, "nominal")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    return _night(tmp_path_factory, "cloud", CLOUD)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return _night(tmp_path_factory, "bad", BAD)


def frame_truth(truth, name):
    return next(f for f in truth["frames"] if f["filename"] == name)


def on_sky(truth, kind, sky=None):
    return [f for f in truth["frames"]
            if f["kind"] == kind and (sky is None or f["is_sky"] == sky)]


def electrons(out, name, index):
    """One extension of a raw frame, linearised (DRAGONS' correction) in electrons."""
    spec = ARRAYS[index]
    c = fits.getdata(out / name, index + 1).astype(np.float64) * spec.gain
    a0, a1, a2 = spec.coeffs[2]
    return a0 * c + a1 * c**2 + a2 * c**3


def flat_fielded(out, truth, f, index):
    """(electrons / planted flat, good pixels): dead, hot and cosmic-ray pixels left out."""
    flat = truth_plane(out, "FLAT", index + 1)
    good = flat > 0.3
    for a, x, y in (h[:3] for h in truth["bad_pixels"]["hot"]):
        if a == index:
            good[y, x] = False
    if f["roi"]:
        x0, y0 = roi_origin(SIZE)
        y0 += f["arrays"][index]["roi_row_shift"]
        flat, good = (p[y0:y0 + SIZE // 2, x0:x0 + SIZE // 2] for p in (flat, good))
    good = good.copy()
    for a, x, y, _ in f["cosmic_rays"]:
        if a == index:
            good[max(y - 4, 0):y + 5, max(x - 4, 0):x + 5] = False
    image = electrons(out, f["filename"], index)
    return np.where(good, image / np.where(good, flat, 1.0), 0.0), good


def standard_star(truth, f):
    """(array index, x, y) of the standard star in one frame (1-based pixels)."""
    std_id = next(i for i, field in zip(truth["catalogue"]["id"], truth["catalogue"]["field"])
                  if field == 2)
    for a in f["arrays"]:
        for s in a["stars"]:
            if s[0] == std_id:
                return a["index"], s[1], s[2]
    raise AssertionError(f"{f['filename']}: standard not planted")


def moffat_fwhm(image, good, x, y, radius):
    """FWHM (pixels) of a Moffat (beta of the simulator) + plane fitted around (x, y)."""
    ny, nx = image.shape
    cx, cy = x - 1.0, y - 1.0
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, nx)
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, ny)
    cut = image[y0:y1, x0:x1]
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(float)
    sigma = np.where(good[y0:y1, x0:x1], np.sqrt(np.maximum(cut, 1.0) + 100.0), np.inf)

    def model(p):
        flux, mx, my, alpha, b0, bx, by = p
        rr = (gx - mx) ** 2 + (gy - my) ** 2
        star = flux * (MOFFAT_BETA - 1) / (math.pi * alpha**2) * (1 + rr / alpha**2) ** (
            -MOFFAT_BETA)
        return star + b0 + bx * (gx - cx) + by * (gy - cy)

    edge = np.concatenate([cut[0], cut[-1], cut[:, 0], cut[:, -1]])
    p0 = [cut.sum() - np.median(edge) * cut.size, cx, cy, 3.0, np.median(edge), 0.0, 0.0]
    fit = least_squares(lambda p: ((cut - model(p)) / sigma).ravel(), p0, x_scale="jac")
    assert fit.success and math.hypot(fit.x[1] - cx, fit.x[2] - cy) < 1.0
    return 2 * abs(fit.x[3]) * math.sqrt(2 ** (1 / MOFFAT_BETA) - 1)


def aperture_flux(image, good, x, y, r, annulus):
    """Sum over the good pixels of an aperture minus the median of a sky annulus (radii in
    pixels, 1-based x, y)."""
    gy, gx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    rr = np.hypot(gx - (x - 1), gy - (y - 1))
    sky = np.median(image[good & (rr >= annulus[0]) & (rr < annulus[1])])
    inside = good & (rr < r)
    return float(image[inside].sum() - sky * inside.sum())


# --- headers ----------------------------------------------------------------------------------
def test_headers_carry_the_request_on_standard_and_science(nominal, bad):
    for (out, truth), want in ((nominal, ("70-percentile", "50-percentile", "Any", "Any")),
                               (bad, ("20-percentile", "50-percentile", "50-percentile",
                                      "Any"))):
        for f in truth["frames"]:
            h = fits.getheader(out / f["filename"])
            assert (h["REQIQ"], h["REQCC"], h["REQBG"], h["REQWV"]) == want
            assert f["conditions"]["requested"] == {
                q: parse_band(v, q) for q, v in zip(("iq", "cc", "bg", "wv"), want)}


def test_flats_request_any_as_real_daycal_flats():
    night = plan_night(SEED, 64, conditions=BAD)
    flats = [p for p in night.frames if p.kind.startswith("flat")]
    assert len(flats) == 30
    for p in flats:
        h = primary_header(p, size=64)
        assert [h[k] for k in ("REQIQ", "REQCC", "REQBG", "REQWV")] == ["Any"] * 4
        assert h["RAWPIREQ"] == "YES"


def test_raw_conditions_follow_what_was_delivered(nominal, bad):
    out, truth = nominal
    for f in truth["frames"]:
        h = fits.getheader(out / f["filename"])
        # the nominal night meets the tutorial's request: IQ70, CC50, BG and WV Any
        assert (h["RAWIQ"], h["RAWCC"], h["RAWBG"], h["RAWWV"], h["RAWPIREQ"]) == (
            "70-percentile", "50-percentile", "Any", "Any", "YES")
        assert f["conditions"]["pi_requirements_met"]
    out, truth = bad
    for f in truth["frames"]:
        h = fits.getheader(out / f["filename"])
        c = f["conditions"]
        assert h["RAWIQ"] == "Any"      # 7 x 0.23" = 1.6" > 1.2"
        assert c["seeing_arcsec"] > 1.2
        cc = {50: "50-percentile", 70: "70-percentile", 80: "80-percentile"}
        assert h["RAWCC"] == cc[50 if c["extinction"] <= 0.08 else 70 if c["extinction"] <= 0.3
                                else 80]
        assert h["RAWBG"] == "Any" and h["RAWPIREQ"] == "NO"
    # a dark sky (x 0.3: fainter than 14.60 mag/arcsec^2) is BG20
    dark = plan_night(SEED, 64, conditions=Conditions.uniform(sky_factor=0.3, bg=20))
    for p in dark.frames:
        if p.kind in ("standard", "science"):
            assert p.conditions["sky_mag_arcsec2"] > 14.60
            h = primary_header(p, size=64)
            assert h["RAWBG"] == "20-percentile" and h["RAWPIREQ"] == "YES"


# --- defaults ---------------------------------------------------------------------------------
def _pixels(out, name):
    with fits.open(out / name) as hdul:
        return [h.data.tobytes() for h in hdul[1:]]


def test_default_conditions_leave_the_night_unchanged(nominal, tmp_path_factory):
    out, truth = nominal
    explicit, truth2 = _night(tmp_path_factory, "explicit", Conditions())
    for f in truth["frames"]:
        assert (out / f["filename"]).read_bytes() == (explicit / f["filename"]).read_bytes()
    for n in ("flat.npz", "persistence.npz"):
        assert (out / "truth" / n).read_bytes() == (explicit / "truth" / n).read_bytes()
    # a different request alone changes the headers, never a pixel or a random draw
    asked, truth3 = _night(tmp_path_factory, "asked", Conditions(iq=20, cc=80, bg=20, wv=50))
    for f, f3 in zip(truth["frames"], truth3["frames"]):
        assert _pixels(out, f["filename"]) == _pixels(asked, f["filename"])
        assert fits.getheader(asked / f["filename"])["REQCC"] == "80-percentile"
        assert {k: v for k, v in f.items() if k not in ("render_seconds", "conditions")} == {
            k: v for k, v in f3.items() if k not in ("render_seconds", "conditions")}


# --- image quality ----------------------------------------------------------------------------
def isolated_star(f, low, high, margin=25, clear=40):
    """(array index, star) of the brightest star of flux in [low, high] e-/s with no star
    brighter than 1 % of it within ``clear`` pixels, ``margin`` pixels inside its array."""
    n = SIZE // 2 if f["roi"] else SIZE
    best = None
    for a in f["arrays"]:
        for s in a["stars"]:
            if not (low < s[3] < high and margin < s[1] < n - margin
                    and margin < s[2] < n - margin):
                continue
            if any(o is not s and o[3] > 0.01 * s[3]
                   and math.hypot(o[1] - s[1], o[2] - s[2]) < clear for o in a["stars"]):
                continue
            if best is None or s[3] > best[1][3]:
                best = (a["index"], s)
    assert best is not None, f"{f['filename']}: no isolated star"
    return best


def test_iq_factor_widens_the_on_target_psf(nominal, bad):
    # the standard: fitted FWHM within 2 % of the planted one, nominal and 2.5 x wider
    ratios = []
    for f in on_sky(nominal[1], "standard"):
        widths = []
        for out, truth in (nominal, bad):
            t = frame_truth(truth, f["filename"])
            index, x, y = standard_star(truth, t)
            fwhm = moffat_fwhm(*flat_fielded(out, truth, t, index), x, y, 30)
            assert fwhm == pytest.approx(t["fwhm_px"], rel=0.02)
            widths.append(fwhm)
        ratios.append(widths[1] / widths[0])
    assert np.allclose(ratios, 2.5, rtol=0.02), ratios
    # the guided science frames: an isolated field star, through sky x 3 and the cloud
    ratios = []
    for f in on_sky(bad[1], "science", sky=False):
        n = frame_truth(nominal[1], f["filename"])
        index, star = isolated_star(n, 5000.0, 30000.0)
        widths = [moffat_fwhm(*flat_fielded(out, truth, frame_truth(truth, f["filename"]),
                                            index), star[1], star[2], 25)
                  for out, truth in (nominal, bad)]
        assert widths[0] == pytest.approx(n["fwhm_px"], rel=0.02)
        ratios.append(widths[1] / widths[0])
        assert f["fwhm_px"] == pytest.approx(2.5 * n["fwhm_px"], rel=1e-12)
        assert f["conditions"]["fwhm_arcsec"] == pytest.approx(
            f["fwhm_px"] * bad[1]["params"]["pixel_scale"])
    assert len(ratios) == 9 and np.allclose(ratios, 2.5, rtol=0.04), ratios
    for f in on_sky(bad[1], "science", sky=True):  # unguided: the seeing PSF is left alone
        assert f["fwhm_px"] == frame_truth(nominal[1], f["filename"])["fwhm_px"]


def test_planted_strehl_agrees_with_dragons_fwhm_relation(nominal, bad):
    # measureIQ: log10(Strehl * FWHM**1.5 / lambda**2.285) = -3.0, sigma >= 0.15 dex
    for _, truth in (nominal, bad):
        for f in on_sky(truth, "standard") + on_sky(truth, "science", sky=False):
            c = f["conditions"]
            value = math.log10(c["strehl"] * c["fwhm_arcsec_physical"] ** 1.5 / 2.15 ** 2.285)
            assert abs(value + 3.0) < 3 * 0.15, (f["filename"], value)
    s_nom = [f["conditions"]["strehl"] for f in on_sky(nominal[1], "standard")]
    s_bad = [f["conditions"]["strehl"] for f in on_sky(bad[1], "standard")]
    assert 0.2 < min(s_nom) and max(s_nom) < 0.4           # GeMS Kshort
    assert np.allclose(np.array(s_bad) * 2.5**2, s_nom)    # poorer correction: lower Strehl


# --- cloud ------------------------------------------------------------------------------------
def test_extinction_dims_the_standard_by_the_planted_magnitude(nominal, cloud):
    for f in on_sky(nominal[1], "standard"):
        index, x, y = standard_star(nominal[1], f)
        fluxes = [aperture_flux(*flat_fielded(out, truth, frame_truth(truth, f["filename"]),
                                              index), x, y, 20, (25, 35))
                  for out, truth in (nominal, cloud)]
        dimming = -2.5 * math.log10(fluxes[1] / fluxes[0])
        assert dimming == pytest.approx(0.5, abs=0.01)
        t = frame_truth(cloud[1], f["filename"])
        assert t["conditions"]["extinction"] == 0.5
        assert standard_star(cloud[1], t) == (index, x, y)
    # the sky is not dimmed: the offset skies (no galaxy, faint stars) keep their level
    for f in on_sky(cloud[1], "science", sky=True):
        for index in range(4):
            levels = [np.median(electrons(out, f["filename"], index))
                      for out, _ in (nominal, cloud)]
            assert levels[1] / levels[0] == pytest.approx(1.0, abs=0.001)


def test_a_passing_cloud_dims_the_science_frames_along_its_profile(nominal, cloud, bad):
    profile = np.interp(np.arange(16) / 15, [0, 0.5, 1], PASSING)
    for _, truth in (cloud, bad):
        frames = on_sky(truth, "science")
        assert [f["conditions"]["extinction"] for f in frames] == pytest.approx(profile)
    # guided frames: an isolated field star, same PSF and sky in both nights
    measured = []
    for k, f in enumerate(on_sky(cloud[1], "science")):
        if f["is_sky"]:
            continue
        index, star = isolated_star(frame_truth(nominal[1], f["filename"]), 2000.0, 30000.0)
        got = [aperture_flux(*flat_fielded(out, truth, frame_truth(truth, f["filename"]),
                                           index), star[1], star[2], 10, (12, 20))
               for out, truth in (nominal, cloud)]
        measured.append(-2.5 * math.log10(got[1] / got[0]))
        assert measured[-1] == pytest.approx(profile[k], abs=0.01), f["filename"]
    assert len(measured) == 9 and max(measured) > 0.7


# --- sky --------------------------------------------------------------------------------------
def test_sky_factor_scales_the_sky(nominal, bad):
    for f in on_sky(bad[1], "standard") + on_sky(bad[1], "science"):
        n = frame_truth(nominal[1], f["filename"])
        assert f["sky_rate"] == pytest.approx(3.0 * n["sky_rate"], rel=1e-12)
        assert f["conditions"]["sky_mag_arcsec2"] == pytest.approx(
            n["conditions"]["sky_mag_arcsec2"] - 2.5 * math.log10(3.0))
    for f in on_sky(bad[1], "science", sky=True):  # no galaxy on the offset skies
        for index in range(4):
            levels = [np.median(electrons(out, f["filename"], index))
                      for out in (nominal[0], bad[0])]
            assert levels[1] / levels[0] == pytest.approx(3.0, rel=0.005)
            assert levels[1] == pytest.approx(f["sky_rate"] * f["exptime"], rel=0.10)


# --- command line -----------------------------------------------------------------------------
def test_cli_plants_the_conditions(tmp_path, capsys):
    out = tmp_path / "night"
    status = main(["simulate", str(out), "--size", "64", "--only", "standard", "--seed", "3",
                   "--req-iq", "20", "--req-bg", "50", "--iq-factor", "2.5",
                   "--extinction", "0.5", "--sky-factor", "3", "--standard-extinction", "0:1"])
    assert status == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["params"]["conditions"]["requested"] == {"iq": 20, "cc": 50, "bg": 50,
                                                         "wv": 100}
    frames = on_sky(truth, "standard")
    assert [f["conditions"]["extinction"] for f in frames] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert {f["conditions"]["iq_factor"] for f in frames} == {2.5}
    assert {f["conditions"]["sky_factor"] for f in frames} == {3.0}
    assert truth["params"]["conditions"]["science"]["extinction"] == 0.5
    assert fits.getheader(out / frames[0]["filename"])["REQIQ"] == "20-percentile"


@pytest.mark.parametrize("flags, message", [
    (["--req-iq", "50"], "--req-iq: requested IQ '50': must be 20, 70, 85 or Any"),
    (["--req-cc", "best"], "--req-cc: requested CC 'best': must be 50, 70, 80 or Any"),
    (["--iq-factor", "0"], "--iq-factor: iq_factor 0: must be finite and > 0"),
    (["--science-extinction", "-0.2"], "--science-extinction: extinction -0.2: must be"),
    (["--standard-sky-factor", "1:x"], "--standard-sky-factor: '1:x' is not a number"),
])
def test_cli_rejects_bad_values_in_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "night"
    assert main(["simulate", str(out), "--size", "64", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gsaoi-watch simulate: {message}")
    assert err.count("\n") == 1 and not out.exists()


def test_conditions_validate():
    with pytest.raises(ValueError, match="requested WV 'x'"):
        Conditions(wv="x")
    with pytest.raises(ValueError, match="sky_factor -1: must be finite and > 0"):
        Delivered(sky_factor=(1.0, -1.0))
    assert Conditions(iq="70-percentile", cc="Any").requested == {"iq": 70, "cc": 100,
                                                                  "bg": 100, "wv": 100}
    assert Delivered(extinction=(0.0, 0.8, 0.0)).at(0.25) == (1.0, pytest.approx(0.4), 1.0)
