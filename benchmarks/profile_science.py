"""Profile the science reduction of a full-size night: time per step.

Run:  python benchmarks/profile_science.py [--data DIR] [--mode steps|cprofile] [--top N]

The 16 science frames are reduced with the night's master flat and BPM as
``gsaoi_watch.pipeline.recipes.reduce_images`` does it, writing every product (to a
temporary directory).  ``--mode steps`` (the default) runs the real threaded reduction
(2 workers) with a timer around each step and prints its total wall time and, per step, the
number of calls and the summed time in the threads (which add up to more than the wall
time when two threads work at once), and the process's CPU time (``cpu_user``,
``cpu_sys``: on a machine shared with other jobs the CPU time is the steadier number).
``--mode cprofile`` runs the same recipe in one thread (cProfile sees only its own
thread) and prints the steps' cumulative times and the top functions by internal time.
DIR (default /work/cache/night2048) is simulated first if it holds no night.
"""

import argparse
import cProfile
import functools
import json
import pstats
import resource
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from night_cache import bpm_file, ensure_flat, ensure_night, science_files

#: (module, function) pairs timed in --mode steps, and looked up in --mode cprofile
STEPS = [
    ("gsaoi_watch.pipeline.recipes", "load_frame"),
    ("gsaoi_watch.reduction.recipes", "preprocess"),
    ("gsaoi_watch.reduction.recipes", "flat_correct"),
    ("gsaoi_watch.reduction.recipes", "mask_sky"),
    ("gsaoi_watch.reduction.recipes", "combine_skies"),
    ("gsaoi_watch.reduction.recipes", "subtract_sky"),
    ("gsaoi_watch.reduction.recipes", "sky_level"),
    ("gsaoi_watch.reduction.recipes", "detect_array"),
    ("gsaoi_watch.reduction.sky", "dilate_mask"),
    ("gsaoi_watch.reduction.sky", "measure_background"),
    ("gsaoi_watch.reduction.detect", "Background2D"),
    ("gsaoi_watch.reduction.detect", "block_background"),
    ("gsaoi_watch.reduction.detect", "source_table"),
    ("gsaoi_watch.reduction.detect", "detect_sources"),
    ("gsaoi_watch.reduction.detect", "sigma_clipped_stats"),
    ("gsaoi_watch.reduction.detect", "gaussian_filter"),
    ("gsaoi_watch.reduction.detect", "smooth_gaussian"),
    ("gsaoi_watch.reduction.detect", "clipped_stats"),
]


def _setup(data):
    from gsaoi_watch.data.fitsio import load_bpm, load_frame
    flat_path = ensure_flat(data)
    bpm = bpm_file(data)
    return dict(flat=load_frame(flat_path), flat_name=flat_path.name, bpm=load_bpm(bpm),
                bpm_name=bpm.name)


def _writer(out):
    from gsaoi_watch.data.fitsio import write_frame
    return lambda frame: str(write_frame(frame, out))


def run_steps(data, out):
    """Threaded reduction with timers around the steps: {step: [calls, seconds]}."""
    import importlib

    from gsaoi_watch.data import fitsio
    from gsaoi_watch.pipeline.recipes import reduce_images
    totals = defaultdict(lambda: [0, 0.0])
    lock = threading.Lock()
    patched = []

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                with lock:
                    totals[name][0] += 1
                    totals[name][1] += dt
        return wrapper

    for mod_name, fn_name in STEPS + [("gsaoi_watch.data.fitsio", "write_frame")]:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, fn_name):
            patched.append((mod, fn_name, getattr(mod, fn_name)))
            setattr(mod, fn_name, timed(fn_name, getattr(mod, fn_name)))
    try:
        kw = _setup(data)
        t0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        res = reduce_images(science_files(data), workers=2,
                            on_product=lambda f: str(fitsio.write_frame(f, out)), **kw)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        totals["cpu_user"] = [1, r1.ru_utime - r0.ru_utime]
        totals["cpu_sys"] = [1, r1.ru_stime - r0.ru_stime]
    finally:
        for mod, fn_name, fn in patched:
            setattr(mod, fn_name, fn)
    return wall, res, dict(totals)


def run_cprofile(data, out, top):
    from gsaoi_watch.pipeline.recipes import FileSource
    from gsaoi_watch.reduction import recipes
    kw = _setup(data)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = recipes.reduce_images(FileSource(science_files(data)), on_product=_writer(out), **kw)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    names = {fn for _, fn in STEPS} | {"write_frame"}
    cum = {}
    for (path, _, fn), (_, ncalls, _, ct, _) in stats.stats.items():
        if fn in names and ("gsaoi_watch" in path or fn in ("Background2D", "detect_sources",
                                                            "gaussian_filter",
                                                            "sigma_clipped_stats")):
            prev = cum.get(fn, (0, 0.0))
            cum[fn] = (prev[0] + ncalls, prev[1] + ct)
    print(f"single-threaded reduce_images + writing: {wall:.1f} s "
          f"({len(res['sky_corrected'])} _skyCorrected)")
    print(f"{'step':24s} {'calls':>6s} {'cum s':>8s} {'% wall':>7s}")
    for fn, (n, ct) in sorted(cum.items(), key=lambda kv: -kv[1][1]):
        print(f"{fn:24s} {n:6d} {ct:8.2f} {100 * ct / wall:6.1f}%")
    print(f"\ntop {top} functions by internal time:")
    stats.sort_stats("tottime").print_stats(top)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/cache/night2048")
    parser.add_argument("--mode", choices=("steps", "cprofile"), default="steps")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    data = ensure_night(args.data)
    out = Path(tempfile.mkdtemp(prefix="profile_science_"))
    try:
        if args.mode == "cprofile":
            run_cprofile(data, out, args.top)
            return
        wall, res, totals = run_steps(data, out)
        print(json.dumps({"science_wall_s": round(wall, 1),
                          "sky_corrected": len(res["sky_corrected"]),
                          "steps_thread_s": {k: {"calls": n, "s": round(s, 2)}
                                             for k, (n, s) in sorted(
                                                 totals.items(), key=lambda kv: -kv[1][1])}},
                         indent=1))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
