"""Benchmark: the floor of the science reduction at full size: reading, plain arithmetic, writing.

Run:  python benchmarks/bench_floor.py [--data DIR] [--repeat N] [--no-write]

What no reduction of the 16-frame science sequence can avoid, timed with the plainest
numpy/scipy/astropy code, single-threaded and with 2 threads:

* ``read``: the 16 raw frames read as gsaoi_watch.data.fitsio reads them
  (``fits.open(memmap=False)``, each array to native float32), from the page cache;
* ``pass``: for each of the 9 object frames x 4 arrays, the median of its associated skies
  (a min/max sorting network over cache-sized strips; with min/max 1/1 rejection the
  median is the same; ``--median-numpy`` also times np.median along the stack), the
  subtraction, and a minimal detection (a 256-pixel block-median background, a Gaussian
  smoothing, a threshold and 8-connected labels), and each part alone;
* ``detect_array``: gsaoi_watch's own detection on the same 36 arrays, for comparison;
* ``write``: the 9 products (SCI, VAR, DQ, OBJMASK per array) written with astropy.

Each number is the best of ``--repeat`` runs, in seconds: wall times with 1 and 2 threads,
and the CPU time of the 1-thread run (the steadier number on a machine shared with other
jobs).  The detect_array line runs on raw frames minus their sky median (no flat field),
so its sources differ a little from a reduction's.  DIR (default
/work/cache/night2048) is simulated first if it holds no night.
"""

import argparse
import json
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits
from night_cache import ensure_night, science_files
from scipy import ndimage


def read_frame(path):
    """The four arrays of a raw frame, as gsaoi_watch.data.fitsio.load_frame reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            phu = hdul[0].header.copy()
            arrays = [(np.asarray(h.data, dtype=np.float32), h.header.copy())
                      for h in hdul[1:] if isinstance(h, fits.ImageHDU)]
    return phu, arrays


def _network_median(rows):
    """Median along axis 0 of a few rows: odd-even transposition sort (elementwise min/max)."""
    rows = list(rows)
    n = len(rows)
    for p in range(n):
        for i in range(p % 2, n - 1, 2):
            a, b = rows[i], rows[i + 1]
            rows[i], rows[i + 1] = np.minimum(a, b), np.maximum(a, b)
    if n % 2:
        return rows[n // 2]
    return 0.5 * (rows[n // 2 - 1] + rows[n // 2])


def sky_median(stack, strip=64):
    """Per-pixel median of a (n, ny, nx) stack, ``strip`` rows at a time (in the cache).

    np.median along axis 0 partitions every pixel's values one strided column at a time
    (0.38 s for 6 x 2048 x 2048); a min/max sorting network over cache-sized strips is the
    fastest plain-numpy way we know (see --median-numpy for numpy's).
    """
    out = np.empty(stack.shape[1:], np.float32)
    for y0 in range(0, stack.shape[1], strip):
        out[y0:y0 + strip] = _network_median(stack[:, y0:y0 + strip])
    return out


def minimal_detection(sub, box=256, sigma=3.0 / 2.3548, k=1.5):
    ny, nx = sub.shape
    blocks = sub.reshape(ny // box, box, nx // box, box)
    mesh = np.median(blocks.transpose(0, 2, 1, 3).reshape(ny // box, nx // box, -1), axis=-1)
    data = (blocks - mesh[:, None, :, None]).reshape(ny, nx)
    smooth = ndimage.gaussian_filter(data, sigma)
    noise = np.std(smooth[::7, ::7])
    labels, n = ndimage.label(smooth > k * noise, structure=np.ones((3, 3), bool))
    return labels, n


def best(fn, repeat):
    """Best wall time and best CPU time (all threads) of ``repeat`` runs."""
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return round(min(times), 2), round(min(cpu), 2)


def timings(fn1, fn2, repeat):
    """{1_thread, 2_threads} wall times and the CPU time of the 1-thread run."""
    one, one_cpu = best(fn1, repeat)
    two, _ = best(fn2, repeat)
    return {"1_thread": one, "2_threads": two, "1_thread_cpu": one_cpu}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/cache/night2048")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="skip the writing test")
    parser.add_argument("--median-numpy", action="store_true",
                        help="also time np.median(stack, axis=0) for the sky median")
    args = parser.parse_args()
    data = ensure_night(args.data)
    files = science_files(data)
    from gsaoi_watch.data.fitsio import read_frame_info
    from gsaoi_watch.reduction import recipes
    from gsaoi_watch.reduction.container import Array
    from gsaoi_watch.reduction.detect import detect_array
    plan = recipes.plan_sky([read_frame_info(f) for f in files], recipes.merge_parameters())
    r = args.repeat
    out = {"frames": len(files), "objects": len(plan["objects"]),
           "skies_per_object": [len(plan["obj_skies"][o]) for o in plan["objects"]]}
    frames = {}

    def read_all(workers):
        with ThreadPoolExecutor(workers) as pool:
            frames.update(zip((f.name for f in files), pool.map(read_frame, files)))

    read_all(1)  # into the page cache
    out["read_mb"] = round(sum(f.stat().st_size for f in files) / 2**20)
    out["read_s"] = timings(lambda: read_all(1), lambda: read_all(2), r)
    units = [(o, i) for o in plan["objects"] for i in range(4)]
    subs = {}

    def stack(o, i):
        return np.stack([frames[s][1][i][0] for s in plan["obj_skies"][o]])

    def median_unit(u):
        return sky_median(stack(*u))

    def subtract_unit(u):
        subs[u] = frames[u[0]][1][u[1]][0] - median_unit(u)

    def detect_unit(u):
        return minimal_detection(subs[u])

    def full_unit(u):
        sub = frames[u[0]][1][u[1]][0] - median_unit(u)
        return minimal_detection(sub)

    def ours_unit(u):
        sub = subs[u]
        dq = np.zeros(sub.shape, np.uint16)
        return detect_array(Array(sub, np.abs(sub) + 100.0, dq, frames[u[0]][1][u[1]][1]))

    def run(fn, workers):
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, units))

    for w in (1, 2):
        run(subtract_unit, w)
    parts = {"sky_median": median_unit,
             **({"sky_median_np.median": lambda u: np.median(stack(*u), axis=0)}
                if args.median_numpy else {}), "sky_median_and_subtract": subtract_unit,
             "minimal_detection": detect_unit, "pass (median + subtract + detection)": full_unit,
             "gsaoi_watch detect_array": ours_unit}
    out["pass_s"] = {name: timings(lambda fn=fn: run(fn, 1), lambda fn=fn: run(fn, 2), r)
                     for name, fn in parts.items()}
    if not args.no_write:
        tmp = Path(tempfile.mkdtemp(prefix="bench_floor_", dir=data))

        def write(o):
            hdus = [fits.PrimaryHDU(header=frames[o][0])]
            for i in range(4):
                sub = subs[(o, i)]
                hdus += [fits.ImageHDU(sub, name="SCI", ver=i + 1),
                         fits.ImageHDU(np.abs(sub), name="VAR", ver=i + 1),
                         fits.ImageHDU(np.zeros(sub.shape, np.uint16), name="DQ", ver=i + 1),
                         fits.ImageHDU(np.zeros(sub.shape, np.uint8), name="OBJMASK",
                                       ver=i + 1)]
            fits.HDUList(hdus).writeto(tmp / o, overwrite=True)

        def write_all(workers):
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(write, plan["objects"]))

        try:
            out["write_mb"] = round(9 * 4 * 2048 * 2048 * 11 / 2**20)
            out["write_s"] = timings(lambda: write_all(1), lambda: write_all(2), r)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    two = out["pass_s"]["pass (median + subtract + detection)"]["2_threads"]
    out["floor_2_threads_s"] = round(out["read_s"]["2_threads"] + two
                                     + out.get("write_s", {}).get("2_threads", 0.0), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
