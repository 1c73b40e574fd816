"""Frames prepared while a sequence is observed give the same products as the raw frames."""

import os

import numpy as np
import pytest

from gsaoi_watch.daemon.prepared import cache_path, fetch, prepare_ahead
from gsaoi_watch.data.fitsio import load_bpm, write_frame
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.sim import simulate_night

BPM = "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep_night")
    truth = simulate_night(out, seed=31, size=128, workers=2, only=["flats", "science", "bpm"])
    flat = make_processed_flat(sorted(str(p) for p in out.glob("S20170505S00[3-7]*.fits")),
                               bpm=load_bpm(out / BPM), bpm_name=BPM)
    flat_path = write_frame(flat, out / "cal")
    science = sorted(str(out / f["filename"]) for f in truth["frames"]
                     if f["kind"] == "science")
    return out, flat, flat_path, science


def _reduce(science, flat, flat_name, out, prepared=None):
    return reduce_images(science, flat=flat, flat_name=flat_name, bpm=load_bpm(out / BPM),
                         bpm_name=BPM, prepared=prepared)


def test_prepared_frames_give_identical_products(night, tmp_path):
    out, flat, flat_path, science = night
    cache = tmp_path / "cache"
    for path in science:
        res = prepare_ahead({"path": path, "cache_dir": str(cache), "flat": str(flat_path),
                             "bpm": str(out / BPM)})
        assert res["flat"] == flat_path.name
    used = []

    def prepared(path):
        frame = fetch(path, cache, flat=flat, flat_name=flat_path.name, bpm_name=BPM)
        used.append(frame is not None)
        return frame

    fresh = _reduce(science, flat, flat_path.name, out)
    cached = _reduce(science, flat, flat_path.name, out, prepared)
    assert used and all(used)
    assert [f.filename for f in cached["sky_corrected"]] == \
        [f.filename for f in fresh["sky_corrected"]]
    for a, b in zip(fresh["sky_corrected"] + fresh["flat_corrected"],
                    cached["sky_corrected"] + cached["flat_corrected"]):
        assert a.phu["FLATIM"] == b.phu["FLATIM"] and a.phu["BPMUSED"] == b.phu["BPMUSED"]
        assert "PREPRAW" not in b.phu
        for x, y in zip(a.arrays, b.arrays):
            np.testing.assert_array_equal(x.sci, y.sci)
            np.testing.assert_array_equal(x.var, y.var)
            np.testing.assert_array_equal(x.dq, y.dq)


def test_a_frame_prepared_before_its_flat_gets_the_flat_later(night, tmp_path):
    out, flat, flat_path, science = night
    cache = tmp_path / "cache"
    prepare_ahead({"path": science[0], "cache_dir": str(cache), "flat": None,
                   "bpm": str(out / BPM)})
    late = fetch(science[0], cache, flat=flat, flat_name=flat_path.name, bpm_name=BPM)
    prepare_ahead({"path": science[0], "cache_dir": str(tmp_path / "c2"),
                   "flat": str(flat_path), "bpm": str(out / BPM)})
    direct = fetch(science[0], tmp_path / "c2", flat=flat, flat_name=flat_path.name,
                   bpm_name=BPM)
    assert late.phu["FLATIM"] == direct.phu["FLATIM"] == flat_path.name
    for x, y in zip(late.arrays, direct.arrays):
        np.testing.assert_allclose(x.sci, y.sci, rtol=1e-6)


def test_stale_prepared_frames_are_not_used(night, tmp_path):
    out, flat, flat_path, science = night
    cache = tmp_path / "cache"
    prepare_ahead({"path": science[1], "cache_dir": str(cache), "flat": str(flat_path),
                   "bpm": str(out / BPM)})
    assert fetch(science[1], cache, flat=flat, flat_name=flat_path.name, bpm_name=BPM)
    # another flat, another BPM, no flat (quick-look), or a re-written raw file: recomputed
    assert fetch(science[1], cache, flat=flat, flat_name="other_flat.fits",
                 bpm_name=BPM) is None
    assert fetch(science[1], cache, flat=flat, flat_name=flat_path.name,
                 bpm_name="other_bpm.fits") is None
    assert fetch(science[1], cache, flat=None, bpm_name=BPM) is None
    st = os.stat(science[1])
    os.utime(science[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fetch(science[1], cache, flat=flat, flat_name=flat_path.name, bpm_name=BPM) is None
    cache_path(cache, science[2]).parent.mkdir(exist_ok=True)
    cache_path(cache, science[2]).write_bytes(b"not fits")
    assert fetch(science[2], cache, flat=flat, flat_name=flat_path.name, bpm_name=BPM) is None
