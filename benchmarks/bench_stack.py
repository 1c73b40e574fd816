"""Benchmark: stack the nine on-target frames of a full-size night and print time and memory.

Run:  python benchmarks/bench_stack.py [--raw DIR | --reduced DIR] [--refcat CAT] [--size 2048]
      [--keep]
The stack is made twice: aligned on the frames alone (relative astrometry), then solved on
the reference catalogue (absolute astrometry, every array's departure from the static
model solved too); the difference of the two times is what the catalogue costs
(``refcat_extra_s``; ``solve_s`` is the solution alone).  Without --raw a night is
simulated first, its arrays moved off the static model (``--perturb-geometry``) and with a
Gaia-like catalogue of its field (``--refcat``); its flats and science are reduced once (as
``gsaoi-watch reduce`` in child processes); then the stack of the ``_skyCorrected`` frames
runs in a child process of its own, which reports its wall time, CPU time and peak memory
(max RSS of the process, and of the largest forked strip worker: the workers share the
prepared inputs with it copy-on-write, so the sum overstates the memory); on a shared
machine the CPU time is the steadier number.
--reduced DIR skips straight to the stack with the _skyCorrected files found in DIR.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from gsaoi_watch.pipeline.stack_files import stack_files
refcat = None if sys.argv[2] == "-" else sys.argv[2]
paths = sys.argv[3:]
t0 = time.perf_counter()
path, result = stack_files(paths, sys.argv[1], reference_catalog=refcat)
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
grid = result.meta["grid"]
print(json.dumps({"stack_s": round(wall, 1),
                  "stack_cpu_s": round(usage.ru_utime + usage.ru_stime + kids.ru_utime
                                       + kids.ru_stime, 1),
                  "stack_peak_rss_mb": round(usage.ru_maxrss / 1024),
                  "strip_worker_peak_rss_mb": round(kids.ru_maxrss / 1024),
                  "frames": len(result.meta["used"]), "skipped": result.meta["skipped"],
                  "shape": list(grid.shape), "scale": grid.scale,
                  "astrometry": {k: result.meta["astrometry"].get(k) for k in
                                 ("kind", "n_stars", "n_matches", "rms", "seconds")},
                  "align_rms_arcsec": {k: round(v["rms"], 4)
                                       for k, v in result.meta["align"].items()}}))
"""


def run(args, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "--log-level", "WARNING",
                           *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return round(time.perf_counter() - t0, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=None, help="an existing simulated night")
    parser.add_argument("--reduced", default=None,
                        help="a directory of _skyCorrected files (skips the reduction)")
    parser.add_argument("--refcat", default=None,
                        help="reference catalogue (default: the simulated night's gaia.fits)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_stack_"))
    result = {"size": args.size}
    try:
        if args.reduced:
            out = Path(args.reduced)
        else:
            raw = Path(args.raw) if args.raw else work / "raw"
            if not args.raw:
                result["simulate_s"] = run(["simulate", str(raw), "--size", str(args.size),
                                            "--perturb-geometry", "--refcat", "gaia.fits"],
                                           work)
            files = sorted(raw.glob("S20170505*.fits"))
            flats = [f for f in files if 30 <= int(f.name[10:14]) < 75]
            science = [f for f in files if int(f.name[10:14]) >= 95]
            (work / "flats.list").write_text("\n".join(map(str, flats)) + "\n")
            (work / "science.list").write_text("\n".join(map(str, science)) + "\n")
            out = work / "out"
            out.mkdir()
            result["flats_s"] = run(["reduce", f"@{work / 'flats.list'}"], out)
            result["science_s"] = run(["reduce", f"@{work / 'science.list'}"], out)
        paths = sorted(str(p) for p in out.glob("*_skyCorrected.fits"))
        refcat = args.refcat
        if refcat is None and not args.reduced and (raw / "gaia.fits").exists():
            refcat = str(raw / "gaia.fits")
        for label, cat in (("relative", None), ("absolute", refcat)):
            if cat is None and label == "absolute":
                continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD,
                                   str(work / f"disco_stack_{label}.fits"), cat or "-", *paths],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"stack failed:\n{proc.stderr}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            child["stack_child_wall_s"] = round(time.perf_counter() - t0, 1)
            result[label] = child
        if "absolute" in result:
            result["refcat_extra_s"] = round(result["absolute"]["stack_s"]
                                             - result["relative"]["stack_s"], 1)
            result["refcat_extra_cpu_s"] = round(result["absolute"]["stack_cpu_s"]
                                                 - result["relative"]["stack_cpu_s"], 1)
            result["solve_s"] = result["absolute"]["astrometry"]["seconds"]
        print(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
