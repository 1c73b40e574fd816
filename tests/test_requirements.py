"""Achieved against requested conditions: bands, probabilities, verdicts and physics."""

from __future__ import annotations

import math

import pytest
from astropy.io import fits

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.instrument.tables import AO_IQ_BANDS, BG_BANDS, CC_BANDS
from gsaoi_watch.reduction.qa import Background, CloudCover, FrameQA, ImageQuality, ZeroPoint
from gsaoi_watch.reduction.requirements import (
    band_name,
    band_probabilities,
    check_requirements,
    diffraction_fwhm,
    judge,
    parse_requested,
    requirement_warnings,
)


@pytest.mark.parametrize("value,expected", [
    ("70-percentile", 70), ("20-percentile", 20), ("Any", 100), ("ANY", 100),
    ("85%", 85), ("50", 50), (80, 80), ("UNKNOWN", None), ("", None), (None, None),
    ("0-percentile", None), ("150-percentile", None), (True, None), (float("nan"), None),
])
def test_parse_requested(value, expected):
    assert parse_requested(value) == expected


def test_band_names():
    assert band_name("iq", 70) == "IQ70"
    assert band_name("bg", 100) == "BGAny"
    assert band_name("cc", None) is None


def test_probabilities_sum_to_one_and_follow_the_normal():
    probs = band_probabilities(0.6, 0.1, AO_IQ_BANDS)
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
    # P(IQ20) = P(x <= 0.45) for N(0.6, 0.1) = Phi(-1.5)
    assert probs[20] == pytest.approx(0.0668072, abs=1e-6)
    assert probs[70] == pytest.approx(0.9772499 - 0.0668072, abs=1e-6)
    exact = band_probabilities(0.6, None, AO_IQ_BANDS)
    assert exact == {20: 0.0, 70: 1.0, 85: 0.0, 100: 0.0}


def test_flat_near_ir_bg_limits_collapse_to_two_bands():
    probs = band_probabilities(14.5, 0.1, BG_BANDS["Ks"], higher_is_better=True)
    assert probs[50] == probs[80] == 0.0
    assert probs[20] == pytest.approx(1 - 0.8413447, abs=1e-6)  # P(mag >= 14.6)
    assert probs[100] == pytest.approx(0.8413447, abs=1e-6)


def test_iq_verdicts_exact_and_at_95_percent():
    not_met = judge("iq", 0.63, None, 20, AO_IQ_BANDS, unit="arcsec")
    assert (not_met.band_name, not_met.requested_name, not_met.met) == ("IQ70", "IQ20", False)
    met = judge("iq", 0.63, None, 70, AO_IQ_BANDS, unit="arcsec")
    assert met.met is True and met.probability == 1.0
    assert judge("iq", 3.0, None, 100, AO_IQ_BANDS, unit="arcsec").met is True
    # 0.46 +- 0.05 against IQ20 (0.45): P = 42 %, not below 5 %: DRAGONS gives no warning
    close = judge("iq", 0.46, 0.05, 20, AO_IQ_BANDS, unit="arcsec")
    assert close.met is True and close.probability == pytest.approx(0.4207, abs=1e-3)
    assert close.band == 70  # the band the value falls in
    assert {b for b, _ in close.bands} == {20, 70}
    # 0.54 +- 0.05: P(<= 0.45) = 3.6 %: not met at the 95 % level
    far = judge("iq", 0.54, 0.05, 20, AO_IQ_BANDS, unit="arcsec")
    assert far.met is False and far.probability == pytest.approx(0.0359, abs=1e-3)


def test_cc_and_bg_verdicts():
    cloud = judge("cc", 0.5, 0.02, 50, CC_BANDS, unit="mag")
    assert (cloud.band_name, cloud.met) == ("CC80", False)
    clear = judge("cc", 0.02, 0.01, 50, CC_BANDS, unit="mag")
    assert (clear.band_name, clear.met) == ("CC50", True)
    bright = judge("bg", 13.6, 0.02, 80, BG_BANDS["Ks"], unit="mag/arcsec2",
                   higher_is_better=True)
    assert (bright.band_name, bright.met) == ("BGAny", False)
    dark = judge("bg", 14.9, 0.02, 20, BG_BANDS["Ks"], unit="mag/arcsec2",
                 higher_is_better=True)
    assert (dark.band_name, dark.met) == ("BG20", True)


def test_no_request_or_no_value_is_undetermined():
    v = judge("iq", 0.6, 0.1, None, AO_IQ_BANDS, unit="arcsec")
    assert v.met is None and v.band == 70 and "not recorded" in v.reason
    v = judge("iq", float("nan"), None, 70, AO_IQ_BANDS, unit="arcsec")
    assert v.met is None and v.band is None


# --- a frame's verdicts, physics included ------------------------------------------------
def _info(scale=0.0197, *, ao=True, req=("20-percentile", "50-percentile", "Any", "Any")):
    phu = fits.Header()
    phu["INSTRUME"] = "GSAOI"
    phu["FILTER1"], phu["FILTER2"] = "Kshort_G1105", "Clear"
    phu["AOFOLD"] = "IN" if ao else "OUT"
    phu["AIRMASS"] = 1.0
    for key, value in zip(("REQIQ", "REQCC", "REQBG", "REQWV"), req):
        phu[key] = value
    exts = []
    for _ in range(4):
        h = fits.Header()
        s = scale / 3600.0
        h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -s, 0.0, 0.0, s
        exts.append(h)
    return FrameInfo(phu, exts)


def _qa(fwhm=0.09, fwhm_std=0.004, strehl=0.2, n_stars=12, sky_mag=13.6, cc=None):
    seeing = 7 * fwhm
    iq = ImageQuality(fwhm, fwhm_std, fwhm, 0.05, 0.02, strehl, 0.03, n_stars, seeing, "")
    bg = Background(48.0, (48.0,) * 4, sky_mag, "", "recorded", 0.01)
    zps = (ZeroPoint(1, 26.0 - cc, 0.01, 26.0),) if cc is not None else ()
    cloud = CloudCover(cc, 0.01, "") if cc is not None else None
    return FrameQA("f.fits", iq, bg, "9132" if cc is not None else None, (), zps, cloud)


def test_frame_verdicts_at_the_instrument_scale():
    v = check_requirements(_info(), _qa(cc=0.5))
    assert v["iq"].value == pytest.approx(0.63)
    assert (v["iq"].band_name, v["iq"].met) == ("IQ70", False)
    assert (v["cc"].band_name, v["cc"].met) == ("CC80", False)
    assert (v["bg"].band_name, v["bg"].requested_name, v["bg"].met) == ("BGAny", "BGAny", True)
    assert v["wv"].met is None and v["wv"].requested_name == "WVAny"
    lines = requirement_warnings("f.fits", v)
    assert any(line.startswith("frame=f.fits IQ requirement not met") and "IQ70" in line
               and "requested IQ20" in line and "0.63" in line for line in lines)
    assert any("CC requirement not met" in line and "0.500" in line for line in lines)
    good = check_requirements(_info(req=("70-percentile", "50-percentile", "Any", "Any")),
                              _qa(cc=0.02))
    assert [good[m].met for m in ("iq", "cc", "bg")] == [True, True, True]
    assert requirement_warnings("f.fits", good) == []


def test_science_frame_without_standard_has_no_cloud_verdict():
    v = check_requirements(_info(), _qa())
    assert v["cc"].met is None and "no standard star" in v["cc"].reason


def test_coarse_pixels_are_not_physical():
    # the 256-pixel demo: 8x GSAOI's pixel scale, an "AO FWHM" of 0.72" and an 18 mag sky
    v = check_requirements(_info(scale=0.1576), _qa(fwhm=0.72, sky_mag=18.1))
    for metric in ("iq", "bg"):
        assert v[metric].met is None and v[metric].band is None
        assert "not physical" in v[metric].reason and "0.1576" in v[metric].reason


def test_other_unphysical_values():
    sky = check_requirements(_info(), _qa(sky_mag=18.1))["bg"]
    assert sky.met is None and "not physical" in sky.reason and "18.10" in sky.reason
    few = check_requirements(_info(), _qa(n_stars=2))["iq"]
    assert few.met is None and "too few" in few.reason
    standard = check_requirements(_info(), _qa(n_stars=1, cc=0.02))["iq"]  # the standard
    assert standard.band_name == "IQ70" and standard.met is False
    sharp = check_requirements(_info(), _qa(fwhm=0.3 * diffraction_fwhm(2.15)))["iq"]
    assert sharp.met is None and "diffraction" in sharp.reason
    bright_zp = check_requirements(_info(), _qa(cc=-0.5))["cc"]
    assert bright_zp.met is None and "brighter than nominal" in bright_zp.reason


def test_dragons_gsaoi_warnings():
    poor = check_requirements(_info(req=("Any",) * 4), _qa(fwhm=0.25, strehl=0.02))["iq"]
    assert poor.met is True
    assert any("very poor image quality" in w for w in poor.warnings)
    # a Strehl of 0.9 with a 0.25" FWHM is far off log10(S FWHM^1.5 / lambda^2.285) = -3
    odd = check_requirements(_info(req=("Any",) * 4), _qa(fwhm=0.25, strehl=0.9))["iq"]
    assert any("inconsistent" in w for w in odd.warnings)
    # what the simulator's diffraction-like AO PSF gives: consistent
    ok = check_requirements(_info(), _qa(fwhm=0.09, strehl=0.2))["iq"]
    assert not any("inconsistent" in w for w in ok.warnings)


def test_verdicts_serialise():
    v = check_requirements(_info(), _qa(cc=0.5))
    d = v["iq"].to_dict()
    assert d["band"] == "IQ70" and d["requested"] == "IQ20" and d["met"] is False
    assert d["state"] == "not met" and d["limits"] == {"20": 0.45, "70": 0.8, "85": 1.2}
    assert d["measured"]["fwhm"] == pytest.approx(0.09)
