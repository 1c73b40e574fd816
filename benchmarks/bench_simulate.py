"""Benchmark: simulate the full-size tutorial night and print wall time and peak memory.

Run:  python benchmarks/bench_simulate.py [--size 2048] [--workers N] [--keep DIR]
"""

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from gsaoi_watch.sim import simulate_night


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", default=None, help="write the night here and keep it")
    args = parser.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        t0 = time.perf_counter()
        truth = simulate_night(out, size=args.size, workers=args.workers)
        wall = time.perf_counter() - t0
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size_mb = sum(p.stat().st_size for p in out.glob("*.fits")) / 2**20
        per_kind = {}
        for f in truth["frames"]:
            per_kind.setdefault(f["kind"], []).append(f["render_seconds"])
        result = {
            "size": args.size,
            "frames": len(truth["frames"]),
            "wall_seconds": round(wall, 1),
            "peak_rss_mb_main": round(self_rss),
            "peak_rss_mb_worker": round(child_rss),
            "raw_data_mb": round(size_mb),
            "mean_render_seconds": {k: round(sum(v) / len(v), 2) for k, v in per_kind.items()},
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
