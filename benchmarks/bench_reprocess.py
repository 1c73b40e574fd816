"""Benchmark: re-reducing N small simulated nights on a LocalCluster of 1 and of 2 workers.

Run:  python benchmarks/bench_reprocess.py [--nights 3] [--size 64] [--trivial 200]

N nights (seeds and dates apart, flats, science and the BPM; 64-128 px arrays) are
simulated once into a temporary directory, then reprocessed from scratch (new database and
output directory) by the ``reprocess`` machinery on 1 worker and on 2 workers.  Printed:
the wall time of each run (cluster start included, and without it), the speed-up ratio,
the job count, and the scheduler's overhead per job: the round trip of a trivial task
through the Client (submit, run, result) minus a direct call, over ``--trivial`` tasks.
"""

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsaoi_watch.archive.cluster import DaskExecutor, open_client  # noqa: E402
from gsaoi_watch.archive.plan import plan_archive  # noqa: E402
from gsaoi_watch.archive.run import reprocess  # noqa: E402
from gsaoi_watch.calibration import db  # noqa: E402
from gsaoi_watch.config import load_config  # noqa: E402
from gsaoi_watch.sim import simulate_night  # noqa: E402

SETTINGS = "[quicklook]\npictures = false\nsummary = false\n"


def trivial(x):
    return x + 1


def overhead(client, n):
    """Seconds per trivial task through the Client, and per direct call."""
    t0 = time.perf_counter()
    for k in range(n):
        trivial(k)
    direct = (time.perf_counter() - t0) / n
    client.submit(trivial, 0, pure=False).result()  # warm: the function shipped once
    rounds = []
    for k in range(n):
        t = time.perf_counter()
        client.submit(trivial, k, pure=False).result()
        rounds.append(time.perf_counter() - t)
    return statistics.median(rounds), direct


def run(raw, work, workers, trivial_n):
    out, database = work / f"out{workers}", work / f"gw{workers}.db"
    cfg = work / "settings.toml"
    cfg.write_text(SETTINGS)
    config = load_config(cfg).replace("paths", output_dir=str(out), raw_dir=str(raw)) \
        .replace("database", url=str(database))
    t0 = time.perf_counter()
    client, cluster = open_client(workers=workers, max_tries=3)
    started = time.perf_counter() - t0
    db.open_database(str(database), create=True)
    try:
        summary = reprocess(config, plan_archive([raw], exclude=[out]),
                            DaskExecutor(client, retries=2))
        wall = time.perf_counter() - t0
        per_task, direct = overhead(client, trivial_n) if workers == 2 else (None, None)
    finally:
        db.close_database()
        client.close()
        cluster.close()
    jobs = sum(summary.jobs.values())
    assert summary.failed == [] and set(summary.sequences) == {"DONE"}, summary
    return {"workers": workers, "wall_s": round(wall, 1),
            "reduce_s": round(summary.seconds, 1), "cluster_start_s": round(started, 1),
            "jobs": jobs, "products": summary.products,
            "trivial_task_s": per_task, "direct_call_s": direct}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="array size (64-128 px)")
    ap.add_argument("--trivial", type=int, default=200, help="trivial tasks timed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_reprocess_"))
    try:
        raw = work / "raw"
        t0 = time.perf_counter()
        for k in range(args.nights):
            day = dt.date(2017, 5, 5) + dt.timedelta(days=10 * k)
            simulate_night(raw / f"{day:%Y%m%d}", seed=100 + k, size=args.size, workers=2,
                           date=day, only=["flats", "science", "bpm"])
        print(f"simulated {args.nights} nights of {args.size} px in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        one = run(raw, work, 1, args.trivial)
        print(json.dumps(one), flush=True)
        two = run(raw, work, 2, args.trivial)
        print(json.dumps(two), flush=True)
        overhead_ms = (two["trivial_task_s"] - two["direct_call_s"]) * 1e3
        print(f"nights: {args.nights}; jobs: {two['jobs']}; wall on 1 worker: "
              f"{one['wall_s']:.1f} s; on 2 workers: {two['wall_s']:.1f} s; speed-up: "
              f"{one['wall_s'] / two['wall_s']:.2f} (reduction alone: "
              f"{one['reduce_s'] / two['reduce_s']:.2f}); scheduler overhead per job: "
              f"{overhead_ms:.2f} ms (trivial task round trip "
              f"{two['trivial_task_s'] * 1e3:.2f} ms vs direct call "
              f"{two['direct_call_s'] * 1e6:.2f} us)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
