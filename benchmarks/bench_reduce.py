"""Benchmark: reduce a simulated full-size night (flat, standard, science) and print times.

Run:  python benchmarks/bench_reduce.py [--raw DIR] [--size 2048]
Each reduction runs as ``gsaoi-watch reduce`` in a child process, so its wall time and peak
memory (max RSS) are measured separately.  Without --raw a night is simulated first.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_step(args, cwd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "--log-level", "WARNING",
                           *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(wall, 1), round(max(after, before) / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=None, help="an existing simulated night")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_reduce_"))
    try:
        raw = Path(args.raw) if args.raw else work / "raw"
        result = {"size": args.size}
        if not args.raw:
            result["simulate_s"], _ = run_step(["simulate", str(raw), "--size",
                                                str(args.size)], work)
        files = sorted(raw.glob("S2017*.fits"))
        lists = {
            "flats": [f for f in files if f.name[10:14] in
                      {f"{n:04d}" for n in list(range(30, 45)) + list(range(60, 75))}],
            "standard": [f for f in files if f.name.startswith("S20170504")],
            "science": [f for f in files if f.name.startswith("S20170505")
                        and int(f.name[10:14]) >= 95],
        }
        for name, group in lists.items():
            (work / f"{name}.list").write_text("\n".join(str(f) for f in group) + "\n")
        out = work / "out"
        out.mkdir()
        for name in ("flats", "standard", "science"):
            wall, rss = run_step(["reduce", f"@{work / (name + '.list')}"], out)
            result[f"{name}_s"] = wall
            result[f"{name}_peak_rss_mb_so_far"] = rss
        result["night_s"] = round(sum(result[f"{n}_s"] for n in ("flats", "standard",
                                                                  "science")), 1)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
