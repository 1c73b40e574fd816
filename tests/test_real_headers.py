"""Classification and descriptors of seven real GSAOI headers, against DRAGONS' rules.

The expected tag sets are derived from DRAGONS' current tag rules (gsaoi_facts.md §1.3); the
"AstroData Types" line inside each dump comes from an old AstroData and is not the answer.
"""

import datetime as dt

import pytest
from conftest import write_fits_from_dump

from gsaoi_watch.data.fitsio import read_frame_info

SCIENCE = {"GEMINI", "GSAOI", "IMAGE", "RAW", "SIDEREAL", "SOUTH", "UNPREPARED"}
EXPECTED_TAGS = {
    "S20130126S0134": SCIENCE,
    "S20130201S0246": {"CAL", "FLAT", "GCALFLAT", "GEMINI", "GSAOI", "IMAGE", "RAW",
                       "SIDEREAL", "SOUTH", "UNPREPARED"},
    "S20140109S0210": {"AZEL_TARGET", "CAL", "DOMEFLAT", "FLAT", "GEMINI", "GSAOI", "IMAGE",
                       "LAMPON", "NON_SIDEREAL", "RAW", "SOUTH", "UNPREPARED"},
    "S20140113S0002": SCIENCE | {"ACQUISITION"},
    "S20140113S0167": SCIENCE,
    "S20140122S0227": {"AT_ZENITH", "AZEL_TARGET", "CAL", "DARK", "GEMINI", "GSAOI",
                       "NON_SIDEREAL", "RAW", "SOUTH", "UNPREPARED"},
    "S20181023S0087": SCIENCE,
}
ARRAY_IDS = ["H2RG-032-074", "H2RG-032-064", "H2RG-032-071", "H2RG-032-061"]
GAINS = [2.434, 2.010, 2.411, 2.644]


@pytest.fixture(scope="module")
def frames(real_header_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    result = {}
    for name in EXPECTED_TAGS:
        path = write_fits_from_dump(real_header_dir / f"{name}.fits.header", out / f"{name}.fits")
        result[name] = read_frame_info(path)
    return result


@pytest.mark.parametrize("name", sorted(EXPECTED_TAGS))
def test_tags_are_exactly_dragons(frames, name):
    assert frames[name].tags == EXPECTED_TAGS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_TAGS))
def test_common_descriptors(frames, name):
    f = frames[name]
    assert f.instrument() == "GSAOI"
    assert f.array_name() == ARRAY_IDS
    assert f.gain() == GAINS  # the lookup table, not the raw GAIN keyword
    assert 0.0195 < f.pixel_scale() < 0.0198
    assert f.read_mode() == "FOWLER"
    assert f.data_label().startswith(f.observation_id())
    assert f.observation_id().startswith(f.program_id())
    assert f.ut_datetime().date().isoformat() == f.phu["DATE-OBS"]


def test_filters_and_wavelengths(frames):
    assert frames["S20130126S0134"].filter_name() == "Kshort_G1105&Clear"
    assert frames["S20130126S0134"].filter_name(pretty=True) == "Kshort"
    assert frames["S20130126S0134"].effective_wavelength() == 2.15
    assert frames["S20140113S0167"].filter_name(pretty=True) == "Z"
    assert frames["S20140113S0167"].effective_wavelength() == 1.015
    assert frames["S20130201S0246"].filter_name(pretty=True) == "J"
    assert frames["S20130201S0246"].effective_wavelength() == 1.25
    dark = frames["S20140122S0227"]
    assert dark.filter_name() == "Blocked1_G1114&Clear"
    assert dark.filter_name(pretty=True) == "Blocked1&blank"
    assert dark.effective_wavelength() is None
    assert frames["S20130126S0134"].central_wavelength(asMicrometers=True) == \
        pytest.approx(2.15)


def test_exposure_readout_and_noise(frames):
    sci = frames["S20140113S0167"]
    assert sci.exposure_time() == 30.0 and sci.coadds() == 1
    assert sci.read_speed_setting() == "Faint Objects"
    assert sci.read_noise() == [13.63, 9.85, 14.22, 16.78]
    dark = frames["S20140122S0227"]
    assert dark.coadds() == 3 and dark.exposure_time() == 120.0
    # read noise / sqrt(coadds), rounded to 2 decimals
    assert dark.read_noise() == [round(r / 3**0.5, 2) for r in (13.63, 9.85, 14.22, 16.78)]
    bright = frames["S20130126S0134"]
    assert bright.read_speed_setting() == "Bright Objects"
    assert bright.saturation_level() == [52400.0, 50250.0, 53700.0, 52300.0]
    assert bright.non_linear_level() == pytest.approx([38252, 32160, 40812, 39225])


def test_observation_identity(frames):
    flat = frames["S20140109S0210"]
    assert flat.observation_class() == "dayCal" and flat.object() == "Domeflat"
    assert flat.observation_type() == "OBJECT"
    assert frames["S20140113S0002"].observation_class() == "acq"
    std = frames["S20181023S0087"]
    assert std.observation_class() == "partnerCal"
    assert frames["S20140122S0227"].observation_type() == "DARK"


def test_offsets_follow_the_port_and_gsaoi_signs(frames):
    sci = frames["S20140113S0167"]  # QOFFSET -5"
    scale = sci.pixel_scale()
    assert sci.detector_y_offset() == pytest.approx(5.0 / scale)
    assert abs(sci.detector_x_offset()) < 1e-6
    std = frames["S20181023S0087"]  # POFFSET -16", QOFFSET 27", INPORT 1
    assert std.detector_x_offset() == pytest.approx(16.0 / std.pixel_scale())
    assert std.detector_y_offset() == pytest.approx(-27.0 / std.pixel_scale())


def test_roi_standard(frames):
    std = frames["S20181023S0087"]
    assert std.is_roi()
    assert std.array_section(pretty=True) == ["[513:1536,513:1536]"] * 4
    assert std.data_section(pretty=True) == ["[1:1024,1:1024]"] * 4
    assert std.detector_section(pretty=True)[:3] == [
        "[2561:3584,513:1536]", "[513:1536,513:1536]", "[513:1536,2561:3584]"]
    assert std.array_section()[0].shape == (1024, 1024)
    assert not frames["S20130126S0134"].is_roi()


def test_guiding_quality_pointing(frames):
    assert frames["S20130126S0134"].wavefront_sensor() == "GEMS"
    assert frames["S20181023S0087"].wavefront_sensor() == "PWFS1"
    assert frames["S20140109S0210"].wavefront_sensor() is None
    assert frames["S20130126S0134"].qa_state() == "Undefined"   # UNKNOWN
    assert frames["S20140113S0167"].qa_state() == "Pass"        # YES + USABLE
    sci = frames["S20140113S0167"]
    assert sci.ra() == sci.ext_headers[0]["CRVAL1"]
    assert sci.target_ra() == sci.phu["RA"]
    assert sci.target_dec(offset=True) == pytest.approx(sci.phu["DEC"] - 5.0 / 3600, abs=1e-7)
    assert sci.position_angle() == 180.0
    assert sci.airmass() == 1.056
    assert frames["S20140122S0227"].airmass() == 1.0
    assert sci.ut_datetime() == dt.datetime(2014, 1, 13, 8, 18, 16)


def test_group_ids(frames):
    sci = frames["S20140113S0167"].group_id()
    assert sci.startswith("GS-2013B-Q-61-8_Z_30.0_FOWLER_")
    flat = frames["S20140109S0210"].group_id()
    assert flat.startswith("Z_8.0_GS-CAL20140109_FOWLER_")
