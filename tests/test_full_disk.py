"""A full file system: the writer says ENOSPC with the path and leaves nothing behind.

On a small tmpfs when the test may mount one (root), else with ENOSPC injected into the
writes; then through the engine: the job waits and resumes by itself (test_failures).
"""

import errno

import numpy as np
import pytest
from astropy.io import fits
from faultkit import tmpfs

from gsaoi_watch.data import fitsio
from gsaoi_watch.data.fitsio import copy_product, write_frame
from gsaoi_watch.reduction.container import Array, Frame


def frame(size=256):
    rng = np.random.default_rng(3)
    arrays = tuple(Array(rng.random((size, size), np.float32),
                         np.ones((size, size), np.float32),
                         np.zeros((size, size), np.uint16), fits.Header())
                   for _ in range(4))
    return Frame(phu=fits.Header(), arrays=arrays, filename="S20170505S0095_skyCorrected.fits",
                 orig_filename="S20170505S0095.fits", meta={})


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MB tmpfs (root only), unmounted at teardown."""
    with tmpfs(tmp_path / "full", "1m") as mnt:
        yield mnt


def assert_no_space(info, target):
    exc = info.value
    assert type(exc) is OSError and exc.errno == errno.ENOSPC, repr(exc)
    assert exc.filename == str(target)
    assert str(exc).startswith("[Errno 28] No space left on device: ")
    assert "_file" not in str(exc)


def test_write_frame_on_a_full_file_system(tiny_fs):
    with pytest.raises(OSError) as info:
        write_frame(frame(), tiny_fs)  # 4 x 3 x 256 KB: more than 1 MB
    assert_no_space(info, tiny_fs / "S20170505S0095_skyCorrected.fits")
    assert list(tiny_fs.iterdir()) == []  # no product, no temporary file
    small = write_frame(frame(size=32), tiny_fs)  # what fits is written whole
    assert fits.getdata(small, ("SCI", 4)).shape == (32, 32)


def test_copy_product_on_a_full_file_system(tmp_path, tiny_fs):
    product = write_frame(frame(), tmp_path)
    with pytest.raises(OSError) as info:
        copy_product(product, tiny_fs / "calibrations")
    assert_no_space(info, tiny_fs / "calibrations" / product.name)
    assert list((tiny_fs / "calibrations").iterdir()) == []


def test_injected_enospc_gives_the_same_error(tmp_path, monkeypatch):
    written = {"n": 0}
    real_write = fitsio._Sink.write

    def write(self, data):
        written["n"] += len(memoryview(data).cast("B"))
        if written["n"] > 500_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(fitsio._Sink, "write", write)
    with pytest.raises(OSError) as info:
        write_frame(frame(), tmp_path)
    assert_no_space(info, tmp_path / "S20170505S0095_skyCorrected.fits")
    assert list(tmp_path.iterdir()) == []


def test_products_are_the_same_bytes_as_astropy_writes(tmp_path):
    made = write_frame(frame(size=64), tmp_path)
    with fits.open(made) as hdul:
        again = tmp_path / "again.fits"
        hdul.writeto(again, output_verify="silentfix")
    assert made.read_bytes() == again.read_bytes()
