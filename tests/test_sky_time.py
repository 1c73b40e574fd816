"""The sky level follows a night whose sky rises and falls: scored against the planted sky.

The simulated K-band sky drifts and varies by about a per cent over 10-40 minutes (random
per night).  With offset_sky off (dedicated offset skies: the target fills the field) the
background left in every on-target array must be within 0.1 sigma of zero and within 0.1 %
of the sky, measured on the pixels where the simulator planted nothing but sky.  DRAGONS'
choice (the level of the first associated sky) fails that on the same night.
"""

import numpy as np
import pytest
from skytruth import background_offsets

from gsaoi_watch.data.fitsio import load_bpm
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.sim import BPM_NAME, simulate_night

#: Arrays with fewer clean pixels than this (the galaxy fills them) are not scored.
MIN_PIXELS = 2000


def reduce_night(tmp_path_factory, size, seed, options):
    out = tmp_path_factory.mktemp(f"sky_time_{size}")
    truth = simulate_night(out, seed=seed, size=size, workers=2,
                           only=["flats", "science", "bpm"])
    bpm = load_bpm(out / BPM_NAME)
    flats = sorted(str(p) for p in out.glob("S20170505S00[3-7]*.fits"))
    flat = make_processed_flat(flats, bpm=bpm, bpm_name=BPM_NAME)
    science = sorted(str(out / f["filename"]) for f in truth["frames"]
                     if f["kind"] == "science")
    results = {}
    for option in options:
        res = reduce_images(science, flat=flat, flat_name="flat", bpm=bpm, bpm_name=BPM_NAME,
                            params={"skyCorrect": {"offset_sky": False,
                                                   "sky_interpolation": option}})
        results[option] = [r for r in background_offsets(truth, res["sky_corrected"])
                           if r["n"] >= MIN_PIXELS]
    return truth, results


@pytest.fixture(scope="module")
def night512(tmp_path_factory):
    return reduce_night(tmp_path_factory, 512, 42, ("time", "none", "nearest"))


#: Budget at the ends of the sequence, where the level is extrapolated (no sky on one side,
#: so no model can be sure): on 150 simulated nights the extrapolated level's error has a
#: median of 0.035 %, a 95th percentile of 0.21 % and a worst case of 0.38 %.
END_BUDGET = 5e-3


def assert_follows_the_sky(rows):
    assert len(rows) >= 9 * 2  # nine target frames, at least two arrays each scored
    inside = [r for r in rows if not r["extrapolated"]]
    assert len(inside) >= 6 * 2
    for r in inside:  # between two skies
        assert abs(r["median"]) < 0.1 * r["sigma"], r
        assert abs(r["median"]) < 1e-3 * r["sky"], r
    for r in rows:
        assert abs(r["median"]) < END_BUDGET * r["sky"], r


def test_the_sky_really_varies(night512):
    truth, _ = night512
    frames = [f for f in truth["frames"] if f["kind"] == "science"]
    t = np.array([np.datetime64(f["ut_start"]).astype("datetime64[ms]").astype(float)
                  for f in frames]) / 1e3
    rate = np.array([f["sky_rate"] for f in frames])
    line = np.polyval(np.polyfit(t - t.mean(), rate, 1), t - t.mean())
    # not a straight line: a fit through the sequence leaves more than the 0.1 % budget
    assert np.max(np.abs(rate / line - 1)) > 2e-3


def test_sky_level_follows_the_night_512(night512):
    _, results = night512
    assert_follows_the_sky(results["time"])


def test_the_ends_beat_the_nearest_sky(night512):
    _, results = night512
    nearest = {(r["file"], r["array"]): abs(r["median"]) for r in results["nearest"]}
    ends = [r for r in results["time"] if r["extrapolated"]]
    assert ends
    for r in ends:
        assert abs(r["median"]) < nearest[(r["file"], r["array"])], r


def test_dragons_level_leaves_the_larger_error(night512):
    _, results = night512
    ours = np.median([abs(r["median"]) / r["sky"] for r in results["time"]])
    dragons = [abs(r["median"]) / r["sky"] for r in results["none"]]
    nearest = np.median([abs(r["median"]) / r["sky"] for r in results["nearest"]])
    # DRAGONS' level (the earliest associated sky) fails the budget on this night ...
    assert max(dragons) > 1e-3
    assert np.median(dragons) > 3 * ours
    # ... and following the night is never worse than taking the nearest sky
    assert ours <= nearest


@pytest.mark.slow
def test_sky_level_follows_the_night_2048(tmp_path_factory):
    _, results = reduce_night(tmp_path_factory, 2048, 44, ("time",))
    assert_follows_the_sky(results["time"])
