"""Benchmark: memory and time of the sky median (combine_skies) at full size.

Run:  python benchmarks/bench_combine.py [--size 2048] [--skies 3,5,7] [--memmap]
For each number of skies, N masked sky arrays (noise, 10 % of pixels flagged as objects) are
median-combined as the science recipe does (min/max rejection of one low and one high value,
additive offsets); prints the peak memory traced by tracemalloc during the call above what
was allocated before it (numpy reports its buffers to tracemalloc), the size of the result,
and the best wall and CPU times of ``--repeat`` calls (on a shared machine the CPU time is
the steadier number).  ``--memmap`` gives the skies as read-only
memory maps of .npy files (the frame store's form), where the inputs take no traced memory.
"""

import argparse
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.reduction.container import Array
from gsaoi_watch.reduction.sky import combine_skies


def skies(n, size, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        sci = rng.normal(5000.0 + 10 * k, 70.0, (size, size)).astype(np.float32)
        var = np.full((size, size), 4900.0, np.float32)
        dq = np.where(rng.random((size, size)) < 0.1, np.uint16(DQ["cosmic_ray"]),
                      np.uint16(0))
        out.append((Array(sci, var, dq, {"EXTVER": 1}), 5000.0 + 10 * k))
    return out


def mapped(prepared, directory):
    out = []
    for k, (a, level) in enumerate(prepared):
        planes = {}
        for plane in ("sci", "var", "dq"):
            path = Path(directory) / f"{plane}{k}.npy"
            np.save(path, getattr(a, plane))
            planes[plane] = np.load(path, mmap_mode="r")
        out.append((a.with_(**planes), level))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--skies", default="3,5,7")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memmap", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_combine_"))
    result = {"size": args.size, "memmap": args.memmap}
    try:
        for n in (int(s) for s in args.skies.split(",")):
            prepared = skies(n, args.size)
            if args.memmap:
                prepared = mapped(prepared, work)
            times, cpu = [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                combine_skies(prepared)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            stacked, _ = combine_skies(prepared)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            out_mb = sum(p.nbytes for p in (stacked.sci, stacked.var, stacked.dq)) / 2**20
            result[f"n{n}"] = {"peak_extra_mb": round(peak / 2**20, 1),
                               "result_mb": round(out_mb, 1),
                               "best_s": round(min(times), 3),
                               "best_cpu_s": round(min(cpu), 3)}
            del prepared, stacked
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
