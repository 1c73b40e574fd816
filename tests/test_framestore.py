"""The frame stores: round trips, read-only memory maps through the steps, a full disk."""

import errno

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from faultkit import tmpfs

from gsaoi_watch.data.fitsio import load_bpm, load_frame
from gsaoi_watch.pipeline.framestore import DiskStore, MemoryStore
from gsaoi_watch.reduction import detect, flat, sky
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.recipes import preprocess
from gsaoi_watch.reduction.source import FrameStore
from gsaoi_watch.sim import BPM_NAME, simulate_night

SIZE = 128
PLANES = ("sci", "var", "dq", "objmask")


def frame(size=64, *, seed=3, objmask=True):
    rng = np.random.default_rng(seed)
    arrays = tuple(Array(rng.normal(100, 5, (size, size)).astype(np.float32),
                         rng.uniform(20, 30, (size, size)).astype(np.float32),
                         rng.integers(0, 3, (size, size)).astype(np.uint16),
                         fits.Header({"EXTVER": i + 1, "GAIN": 2.4}),
                         (rng.random((size, size)) < 0.1).astype(np.uint8)
                         if objmask and i % 2 else None)
                   for i in range(4))
    return Frame(phu=fits.Header({"INSTRUME": "GSAOI", "OBJECT": "NGC 5128"}), arrays=arrays,
                 filename="S20170505S0096_flatCorrected.fits",
                 orig_filename="S20170505S0096.fits",
                 meta={"indices": (0, 1, 2, 3), "catalogs": [Table({"X_IMAGE": [1.0, 2.0]})]})


def assert_equal_frames(got, want):
    assert got.phu == want.phu and got.filename == want.filename
    assert got.orig_filename == want.orig_filename
    assert got.meta.keys() == want.meta.keys()
    for a, b in zip(got.arrays, want.arrays, strict=True):
        assert a.header == b.header
        for plane in PLANES:
            x, y = getattr(a, plane), getattr(b, plane)
            assert (x is None) == (y is None), plane
            if y is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y), plane


@pytest.fixture
def store(tmp_path):
    with DiskStore(tmp_path / "scratch") as s:
        yield s


def test_disk_store_round_trip_gives_read_only_memory_maps(store):
    original = frame()
    kept = store.put("S20170505S0096", original)
    assert_equal_frames(kept, original)
    got = store.get("S20170505S0096")
    assert_equal_frames(got, original)
    assert got.meta["catalogs"][0]["X_IMAGE"][1] == 2.0
    for a in got.arrays:
        for plane in PLANES:
            value = getattr(a, plane)
            if value is None:
                continue
            assert isinstance(value, np.memmap) and not value.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                value[0, 0] = 0
    # headers are the store's own: changing the ones got back changes nothing kept
    got.phu["NEW"] = 1
    got.arrays[0].header["NEW"] = 1
    again = store.get("S20170505S0096")
    assert "NEW" not in again.phu and "NEW" not in again.arrays[0].header
    assert "S20170505S0096" in store and len(store) == 1


def test_putting_a_frame_got_back_links_its_unchanged_planes(store):
    kept = store.put("sky", frame(objmask=False))
    size = store.nbytes()
    mask = np.ones((64, 64), np.uint8)
    with_mask = kept.with_(arrays=tuple(a.with_(objmask=mask) for a in kept.arrays))
    store.put("sky", with_mask)  # replaces the first: only the masks are new bytes
    assert store.nbytes() == size + 4 * (mask.nbytes + 128)
    got = store.get("sky")
    assert all(np.array_equal(a.objmask, mask) for a in got.arrays)
    assert_equal_frames(got.with_(arrays=tuple(a.with_(objmask=None) for a in got.arrays)),
                        frame(objmask=False))


def test_drop_and_close_remove_the_files(tmp_path):
    s = DiskStore(tmp_path)
    assert s.path.parent == tmp_path and s.path.is_dir()
    kept = s.put("a", frame())
    s.put("b", frame(seed=4))
    s.drop("a")
    assert "a" not in s and len(s) == 1
    with pytest.raises(KeyError):
        s.get("a")
    with pytest.raises(KeyError):
        s.drop("a")
    assert np.array_equal(kept.arrays[0].sci, frame().arrays[0].sci)  # maps outlive drop
    s.close()
    assert not s.path.exists() and s.closed
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        s.put("c", frame())
    s.close()  # twice is fine


def test_a_store_forgotten_removes_its_directory(tmp_path):
    s = DiskStore(tmp_path)
    s.put("a", frame())
    path = s.path
    del s
    assert not path.exists()


def test_a_full_disk_raises_enospc_naming_the_frame_and_keeps_what_was_there(tmp_path):
    with tmpfs(tmp_path / "full", "1m") as mnt, DiskStore(mnt) as s:
        small = frame(size=32)
        s.put("S20170505S0095", small)
        with pytest.raises(OSError) as info:
            s.put("S20170505S0096", frame(size=256))  # 4 x 704 KB: more than 1 MB
        exc = info.value
        assert exc.errno == errno.ENOSPC
        assert "No space left on device writing frame 'S20170505S0096'" in str(exc)
        assert exc.filename.startswith(str(s.path)) and exc.filename.endswith(".npy")
        assert sorted(p.name for p in s.path.iterdir()) == ["0"]  # no temporary left
        assert "S20170505S0096" not in s
        assert_equal_frames(s.get("S20170505S0095"), small)
        with pytest.raises(OSError) as info:  # replacing a kept frame: the old one stays
            s.put("S20170505S0095", frame(size=256))
        assert info.value.errno == errno.ENOSPC
        assert_equal_frames(s.get("S20170505S0095"), small)


def test_memory_store_has_the_same_interface():
    s: FrameStore = MemoryStore()
    original = frame()
    assert s.put("a", original) is original
    got = s.get("a")
    assert_equal_frames(got, original)
    got.arrays[0].header["NEW"] = 1
    assert "NEW" not in s.get("a").arrays[0].header
    assert got.arrays[0].sci is original.arrays[0].sci  # pixels shared
    s.drop("a")
    assert "a" not in s
    s.close()
    d: FrameStore = DiskStore.__new__(DiskStore)  # the disk store is a FrameStore too
    assert isinstance(d, DiskStore)


# --- read-only memory maps through the steps --------------------------------------------------
@pytest.fixture(scope="module")
def raw_night(tmp_path_factory):
    out = tmp_path_factory.mktemp("store_night")
    truth = simulate_night(out, seed=5, size=SIZE, workers=1, only=["science", "bpm"])
    names = [f["filename"] for f in truth["frames"] if f["kind"] == "science"]
    return out, names


def _unit_flat(frame_):
    """A flat of ones with the frame's headers: flat_correct runs, values stay."""
    arrays = tuple(a.with_(sci=np.ones(a.shape, np.float32), var=np.zeros(a.shape, np.float32),
                           dq=np.zeros(a.shape, np.uint16)) for a in frame_.arrays)
    return frame_.with_(arrays=arrays)


def _steps(raw_frames, bpm):
    """prepare ... flatCorrect, then the sky steps on array 0: mask_sky, combine_skies,
    subtract_sky, detect_array; the arrays made on the way, and the catalogue."""
    done = [preprocess(f, bpm=bpm) for f in raw_frames]
    done = [flat.flat_correct(f, _unit_flat(f)) for f in done]
    return [a for f in done for a in f.arrays] + _sky_steps([f.arrays[0] for f in done])


def _sky_steps(arrays):
    masks = [detect.detect_array(a, catalog=False)[0] for a in arrays]
    prepared = [sky.mask_sky(a, dilation=2.0)[0] for a in masks]
    stacked, _ = sky.combine_skies([sky.mask_sky(a, dilation=2.0) for a in masks[1:]])
    sub, _ = sky.subtract_sky(arrays[0], stacked)
    found, table = detect.detect_array(sub)
    return [*masks, *prepared, stacked, sub, found, table]


def assert_same_pixels(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if isinstance(b, Table):
            assert len(b) > 0 and all(np.array_equal(a[c], b[c], equal_nan=True)
                                       for c in b.colnames)
            continue
        for plane in PLANES:
            x, y = getattr(a, plane), getattr(b, plane)
            assert (x is None) == (y is None), plane
            if y is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), plane


def test_steps_take_read_only_memory_maps_and_give_the_same_results(raw_night, tmp_path):
    """Raw frames and preprocessed frames from the store (read-only memory maps: a step
    writing into its input would raise) give the same arrays as in memory."""
    out, names = raw_night
    bpm = load_bpm(out / BPM_NAME)
    raw = [load_frame(out / n) for n in names[:4]]
    want = _steps(raw, bpm)
    with DiskStore(tmp_path) as s:
        mapped = [s.put(f.filename, f) for f in raw]
        assert all(isinstance(a.sci, np.memmap) for f in mapped for a in f.arrays)
        assert_same_pixels(_steps(mapped, bpm), want)
        prepared = [flat.flat_correct(f, _unit_flat(f)) for f in
                    (preprocess(f, bpm=bpm) for f in raw)]
        kept = [s.put(f"{f.filename}_flatCorrected", f) for f in prepared]
        assert not kept[0].arrays[0].var.flags.writeable
        assert_same_pixels(_sky_steps([f.arrays[0] for f in kept]), want[16:])
