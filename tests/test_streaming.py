"""Science while it is observed: provisional products during the sequence, final = batch."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from test_daemon import CONFIG, Daemon, drop

from gsaoi_watch.data.fitsio import load_bpm, load_frame
from gsaoi_watch.pipeline.recipes import reduce_images
from gsaoi_watch.sim import BPM_NAME, simulate_night

pytestmark = pytest.mark.slow

SCIENCE = [f"S20170505S{n:04d}.fits" for n in range(95, 111)]
OBJECTS = [n for k, n in enumerate(SCIENCE) if "OSOSOSOSOSOSOSOO"[k] == "O"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream_stage")
    simulate_night(out, seed=31, size=128, workers=2, only=["flats", "science", "bpm"])
    return out


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    # sequences close only when the operator says so (the frames land slowly here)
    d.cfg.write_text(CONFIG.format(raw=d.raw, out=d.out, log=d.log, db=d.db)
                     .replace("idle_timeout = 3", "idle_timeout = 3600"))
    yield d
    d.close()


def close_all(daemon):
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "close", "--all", "-c",
                           str(daemon.cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def provisional(daemon, name):
    return daemon.out / "provisional" / name.replace(".fits", "_skyCorrected.fits")


def test_provisional_during_the_sequence_and_final_equals_batch(stage, daemon):
    daemon.start()
    drop(stage / BPM_NAME, daemon.raw)
    for f in sorted(stage.glob("S20170505S00[3-7]*.fits")):
        drop(f, daemon.raw)
    flat = daemon.out / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits"
    daemon.wait_for(lambda: daemon.query("select count(*) from frame")[0][0] == 31,
                    what="the flat frames and the BPM")
    close_all(daemon)
    daemon.wait_for(flat.exists, what="the master flat")
    seen_during = {}
    for k, name in enumerate(SCIENCE):
        drop(stage / name, daemon.raw)
        # every on-target frame a later frame has followed gets its provisional product
        # while the sequence is still open
        expected = [o for o in OBJECTS if SCIENCE.index(o) < k]
        if expected:
            daemon.wait_for(lambda e=expected: all(provisional(daemon, o).exists() for o in e),
                            what=f"provisional products after {name}")
            states = daemon.query("select state from sequence where kind='science'")
            assert states == [("OPEN",)]
            for o in expected:
                seen_during.setdefault(o, fits.getheader(provisional(daemon, o)))
    assert set(seen_during) == set(OBJECTS[:-1])
    for o, header in seen_during.items():
        assert header["PROVISNL"] is True and "SKYIM001" in header
        assert not (daemon.out / o.replace(".fits", "_skyCorrected.fits")).exists() or \
            "PROVISNL" not in fits.getheader(daemon.out / o.replace(".fits",
                                                                    "_skyCorrected.fits"))
    close_all(daemon)
    finals = [daemon.out / o.replace(".fits", "_skyCorrected.fits") for o in OBJECTS]
    daemon.wait_for(lambda: daemon.settled(3) and all(p.exists() for p in finals),
                    what="the final products")
    assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert log.count("PROVISIONAL") == len(OBJECTS) - 1
    # the sky frames got their pass-1 masks as the sequence went on, not at its end
    assert log.count("pass-1 object mask made") >= 5
    assert log.index("pass-1 object mask made") < log.rindex("command close --all")
    assert not list((daemon.out / "provisional").glob("*.fits"))
    assert daemon.query("select count(*) from product where kind like 'provisional%'") == \
        [(0,)]
    # the final products are those of a batch reduction of the whole sequence
    batch = reduce_images([stage / n for n in SCIENCE], flat=load_frame(flat),
                          flat_name=flat.name, bpm=load_bpm(stage / BPM_NAME),
                          bpm_name=BPM_NAME)
    by_name = {f.orig_filename: f for f in batch["sky_corrected"]}
    assert set(by_name) == set(OBJECTS)
    for path in finals:
        final = load_frame(path)
        assert "PROVISNL" not in final.phu
        ref = by_name[final.orig_filename]
        for a, b in zip(final.arrays, ref.arrays):
            assert np.array_equal(a.dq, b.dq)
            np.testing.assert_allclose(a.sci, b.sci, rtol=1e-6, atol=1e-3)
            np.testing.assert_allclose(a.var, b.var, rtol=1e-6)
            assert np.array_equal(a.objmask, b.objmask)


def test_streaming_off_makes_no_provisional_products(stage, daemon):
    daemon.cfg.write_text(daemon.cfg.read_text().replace("[jobs]\n",
                                                         "[jobs]\nstreaming = false\n"))
    daemon.start()
    for name in SCIENCE[:4]:
        drop(stage / name, daemon.raw)
    daemon.wait_for(lambda: daemon.log.read_text().count(" prepared in ") == 4,
                    what="four frames prepared")
    assert daemon.stop() == 0
    assert not (daemon.out / "provisional").exists()
    assert "PROVISIONAL" not in daemon.log.read_text()


def test_science_streamed_before_its_flat_ends_as_the_batch_with_the_flat(stage, daemon):
    """Pass-1 masks made while there was no flat are not the final reduction's: the final
    products do not depend on whether the flat came before or after the science."""
    daemon.start()
    drop(stage / BPM_NAME, daemon.raw)
    for k, name in enumerate(SCIENCE):
        drop(stage / name, daemon.raw)
        if k in (5, 9):  # quick-look streaming (no flat yet) has made masks and products
            daemon.wait_for(lambda k=k: all(provisional(daemon, o).exists()
                                            for o in OBJECTS if SCIENCE.index(o) < k),
                            what=f"provisional products after {name}")
    daemon.wait_for(lambda: daemon.query("select count(*) from frame")[0][0] == 17,
                    what="the science frames and the BPM")
    close_all(daemon)  # the science waits for a flat (flat_wait 600 s)
    for f in sorted(stage.glob("S20170505S00[3-7]*.fits")):
        drop(f, daemon.raw)
    daemon.wait_for(lambda: daemon.query("select count(*) from frame")[0][0] == 47,
                    what="the flat frames")
    close_all(daemon)
    flat = daemon.out / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits"
    finals = [daemon.out / o.replace(".fits", "_skyCorrected.fits") for o in OBJECTS]
    daemon.wait_for(lambda: daemon.settled(3) and all(p.exists() for p in finals),
                    timeout=240, what="the final products with the flat")
    assert daemon.stop() == 0
    assert "pass-1 object mask made" in daemon.log.read_text()
    batch = reduce_images([stage / n for n in SCIENCE], flat=load_frame(flat),
                          flat_name=flat.name, bpm=load_bpm(stage / BPM_NAME),
                          bpm_name=BPM_NAME)
    by_name = {f.orig_filename: f for f in batch["sky_corrected"]}
    for path in finals:
        final = load_frame(path)
        assert final.phu["FLATIM"] == flat.name and "QUICKLK" not in final.phu
        ref = by_name[final.orig_filename]
        for a, b in zip(final.arrays, ref.arrays):
            assert np.array_equal(a.dq, b.dq)
            np.testing.assert_allclose(a.sci, b.sci, rtol=1e-6, atol=1e-3)
            assert np.array_equal(a.objmask, b.objmask)
