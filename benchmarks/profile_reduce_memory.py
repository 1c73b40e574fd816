"""Profile: where the science reduction's memory goes, step by step (tracemalloc).

Run:  python benchmarks/profile_reduce_memory.py --raw DIR --flat FLAT [--workers 1]
          [--write DIR] [--json FILE]
Reduces the 16 science frames of a simulated night (``S20170505S0095`` ... ``0110``; simulate
one with ``gsaoi-watch simulate DIR``, reduce its flats for FLAT) with the steps of the
recipe wrapped: each call records the memory traced when it starts (what is held), the
peak above that during the call (its temporaries) and what it leaves.  numpy reports its
buffers to tracemalloc, so the traced memory is the pixel memory; RSS also counts the
interpreter, the libraries and the allocator's slack.  With ``--workers 1`` the arrays are
processed one after the other, so each peak belongs to one step; with 2 (the daemon's),
two steps' temporaries add up.  Snapshots at the start of the object pass and at the
overall peak's step list the biggest holders by the line that allocated them.
"""

import argparse
import collections
import functools
import json
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from gsaoi_watch.data.fitsio import load_bpm, load_frame, write_frame
from gsaoi_watch.pipeline.recipes import reduce_images
from gsaoi_watch.reduction import detect, recipes, sky

MB = 2**20
_local = threading.local()
_lock = threading.Lock()
calls: dict[str, dict] = collections.defaultdict(
    lambda: {"n": 0, "held_mb": 0.0, "temp_mb": 0.0, "left_mb": 0.0, "s": 0.0})
peaks: list[tuple[float, str, float]] = []  # (absolute peak MB, step path, held at start)
snapshots: dict[str, list[tuple[str, float]]] = {}


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def traced(name, fn):
    """``fn`` recording its held / peak / left traced memory under ``name``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack = _stack()
        with _lock:
            current, peak = tracemalloc.get_traced_memory()
            if stack:  # the caller's peak so far, before it is reset for this call
                stack[-1]["peak"] = max(stack[-1]["peak"], peak)
            tracemalloc.reset_peak()
        frame = {"name": name, "start": current, "peak": current}
        stack.append(frame)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            stack.pop()
            with _lock:
                end, peak = tracemalloc.get_traced_memory()
                peak = max(peak, frame["peak"])
                c = calls[name]
                c["n"] += 1
                c["held_mb"] = max(c["held_mb"], current / MB)
                c["temp_mb"] = max(c["temp_mb"], (peak - current) / MB)
                c["left_mb"] = max(c["left_mb"], (end - current) / MB)
                c["s"] += elapsed
                path = "/".join([f["name"] for f in stack] + [name])
                peaks.append((peak / MB, path, current / MB))
                if stack:
                    stack[-1]["peak"] = max(stack[-1]["peak"], peak)
                tracemalloc.reset_peak()

    return wrapper


def snapshot(label, top=12):
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    snapshots[label] = [(f"{s.traceback[0].filename.split('gsaoi_watch/')[-1]}:"
                         f"{s.traceback[0].lineno}", round(s.size / MB, 1)) for s in stats[:top]]


def install():
    for name in ("preprocess", "flat_correct", "mask_sky", "combine_skies", "subtract_sky",
                 "detect_array", "sky_level", "level_at"):
        setattr(recipes, name, traced(name, getattr(recipes, name)))
    for name in ("dilate_mask", "measure_background", "stack_arrays"):
        setattr(sky, name, traced(f"{name}", getattr(sky, name)))
    for name in ("Background2D", "detect_sources", "source_table", "sigma_clipped_stats"):
        setattr(detect, name, traced(f"detect.{name}", getattr(detect, name)))
    detect.ndimage = type("nd", (), {"gaussian_filter": staticmethod(
        traced("detect.gaussian_filter", detect.ndimage.gaussian_filter))})
    passes = recipes._SkyPasses
    passes.sky_pass = traced("sky_pass", passes.sky_pass)
    real_object_pass = passes.object_pass
    seen = {"n": 0}

    def object_pass(self, o, frame):
        seen["n"] += 1
        if seen["n"] in (1, 5):
            snapshot(f"object pass {seen['n']} starts ({o})")
        return real_object_pass(self, o, frame)

    passes.object_pass = traced("object_pass", object_pass)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, help="a simulated night")
    parser.add_argument("--flat", required=True, help="its processed flat")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--write", default=None, help="write the products here")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    raw = Path(args.raw)
    paths = [raw / f"S20170505S{n:04d}.fits" for n in range(95, 111)]
    bpm_path = next(raw.glob("bpm_*.fits"))
    flat = load_frame(args.flat)
    bpm = load_bpm(bpm_path)
    out = Path(args.write) if args.write else Path(tempfile.mkdtemp(prefix="profile_"))
    write = traced("write_frame", write_frame)

    def on_product(frame):
        if args.write:
            return str(write(frame, out))
        return frame.filename

    install()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    reduce_images(paths, flat=flat, flat_name=Path(args.flat).name, bpm=bpm,
                  bpm_name=bpm_path.name, on_product=on_product, workers=args.workers)
    wall = time.perf_counter() - t0
    top = sorted(peaks, reverse=True)
    result = {
        "workers": args.workers, "wall_s_traced": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "traced_before_mb": round(base / MB, 1),
        "traced_peak_mb": round(top[0][0], 1) if top else None,
        "peak_steps": [{"peak_mb": round(p, 1), "step": s, "held_at_start_mb": round(h, 1)}
                       for p, s, h in _distinct(top, 8)],
        "steps": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in calls.items()},
        "snapshots": snapshots,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


def _distinct(top, n):
    """The ``n`` highest peaks, one per step path."""
    seen, out = set(), []
    for p, s, h in top:
        if s not in seen:
            seen.add(s)
            out.append((p, s, h))
        if len(out) == n:
            break
    return out


if __name__ == "__main__":
    sys.exit(main())
