"""Shared fixtures: real GSAOI header dumps and small simulated nights."""

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_HEADERS = SHARED / "reference" / "real_headers"


def load_header_dump(path):
    """Parse a header dump (``--- HDU n ---`` blocks of 80-character cards) into Headers."""
    text = Path(path).read_text()
    blocks = re.split(r"^--- HDU \d+ ---\n", text, flags=re.M)[1:]
    headers = []
    for block in blocks:
        cards = [line[:80] for line in block.split("\n") if line.strip()]
        cards = [c for c in cards if not c.startswith("END")]
        headers.append(fits.Header.fromstring("\n".join(cards), sep="\n"))
    return headers


def write_fits_from_dump(dump, out_path):
    """Write a FITS file with the dump's headers and zero arrays of the declared shapes."""
    phu, *exts = load_header_dump(dump)
    hdus = [fits.PrimaryHDU(header=phu)]
    for h in exts:
        shape = (h["NAXIS2"], h["NAXIS1"])
        hdus.append(fits.ImageHDU(data=np.zeros(shape, dtype=np.float32), header=h))
    fits.HDUList(hdus).writeto(out_path, overwrite=True, output_verify="silentfix")
    return out_path


@pytest.fixture(scope="session")
def real_header_dir():
    if not REAL_HEADERS.is_dir():
        pytest.fail(f"real GSAOI headers not found at {REAL_HEADERS}")
    return REAL_HEADERS
