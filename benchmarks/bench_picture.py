"""Benchmark: time the PNG quick-look of a full-size (4 x 2048^2 SCI/VAR/DQ) product.

Run:  python benchmarks/bench_picture.py [PRODUCT]
Without PRODUCT a synthetic full-size reduced frame (noise, a few stars, the real array
layout) is written to a temporary directory first.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from gsaoi_watch.instrument.tables import ARRAYS, FULL_SIZE
from gsaoi_watch.quicklook.pictures import write_picture


def synthetic_product(directory):
    rng = np.random.default_rng(1)
    n = FULL_SIZE
    hdus = [fits.PrimaryHDU(header=fits.Header({"OBJECT": "bench", "PA": 0.0}))]
    yy, xx = np.mgrid[0:n, 0:n]
    for spec in ARRAYS:
        ox, oy = spec.detsec_origin(n)
        h = fits.Header()
        h.update({"ARRAYID": spec.array_id, "CCDSIZE": f"[1:{n},1:{n}]",
                  "DETSEC": f"[{ox + 1}:{ox + n},{oy + 1}:{oy + n}]", "EXTVER": spec.index + 1,
                  "CD1_1": 0.0197 / 3600, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0197 / 3600})
        sci = rng.normal(0.0, 40.0, (n, n)).astype(np.float32)
        for x, y in rng.uniform(50, n - 50, (20, 2)):
            sci[int(y) - 10:int(y) + 11, int(x) - 10:int(x) + 11] += 5000 * np.exp(
                -((xx[:21, :21] - 10) ** 2 + (yy[:21, :21] - 10) ** 2) / 8.0)
        hdus.append(fits.ImageHDU(sci, header=h, name="SCI"))
        hdus.append(fits.ImageHDU(np.full((n, n), 1600, np.float32), header=h, name="VAR"))
        hdus.append(fits.ImageHDU(np.zeros((n, n), np.uint16), header=h, name="DQ"))
    path = Path(directory) / "S20170505S0095_skyCorrected.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def main():
    with tempfile.TemporaryDirectory(prefix="bench_picture_") as tmp:
        product = Path(sys.argv[1]) if len(sys.argv) > 1 else synthetic_product(tmp)
        out = Path(tmp) / "picture.png"
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            write_picture(product, out=out)
            times.append(time.perf_counter() - t0)
        print(f"{product.name}: picture in {min(times):.2f} s (best of 3; "
              f"{', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
