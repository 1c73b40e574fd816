"""Benchmark: the daemon on a full-size night arriving at a compressed cadence.

Run:  python benchmarks/bench_daemon.py [--raw DIR] [--size 2048] [--cadence 4] [--workers 1]

The night (simulated first unless --raw names one) is copied into a watched directory in
observing order, one frame every --cadence seconds and --gap more between observations
(temporary name, then rename), while
``gsaoi-watch run`` reduces it.  Right after the last science frame lands the operator's
``close --all`` is issued (as the next observation starting would).  Printed:

- ``last_science_to_products_s``: from the last science frame landing to the science job
  done (every final ``_skyCorrected`` frame written) -- the number the daemon is judged on;
- ``provisional_after_trigger_s``: for each provisional ``_skyCorrected`` frame, the time
  from the landing of the frame that followed its target frame (the sky after it) to the
  provisional product appearing in ``provisional/`` (``first_provisional_s``: the first);
- per-job run times from the log, the whole night's wall time;
- the daemon's CPU use while idle (30 s after the night, from /proc), and the peak memory
  (VmHWM) of the daemon and of its worker processes.
"""

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
[paths]
raw_dir = "{raw}"
output_dir = "{out}"
log_file = "{log}"
[database]
url = "{db}"
[watch]
settle_seconds = 1.0
rescan_seconds = 30
[sequences]
idle_timeout = 600
min_quiet = 2
[jobs]
workers = {workers}
[service]
heartbeat_seconds = 5
"""


def _query(db, sql):
    with sqlite3.connect(db, timeout=10) as con:
        return con.execute(sql).fetchall()


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid):
    """Every process below ``pid`` (the pool's workers are the forkserver's children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _hwm_gb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    return 0.0


def _wait(seconds, out, seen):
    """Sleep ``seconds`` while noting when each provisional product appears."""
    end = time.monotonic() + seconds
    while True:
        for p in (out / "provisional").glob("*_skyCorrected.fits"):
            seen.setdefault(p.name, time.monotonic())
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.2, left))


def _drop(src, raw):
    tmp = raw / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    tmp.rename(raw / src.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=None, help="an existing simulated night")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cadence", type=float, default=4.0,
                        help="seconds between frames landing (default 4)")
    parser.add_argument("--gap", type=float, default=60.0,
                        help="extra seconds between observations: slew and acquisition "
                             "(default 60; at the telescope it is several minutes)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of idleness over which CPU use is measured")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_daemon_"))
    proc = None
    try:
        stage = Path(args.raw) if args.raw else work / "stage"
        if not args.raw:
            subprocess.run([sys.executable, "-m", "gsaoi_watch", "--log-level", "WARNING",
                            "simulate", str(stage), "--size", str(args.size)], check=True)
        truth = json.loads((stage / "truth.json").read_text())
        order = [f["filename"] for f in truth["frames"]]
        obsid = {f["filename"]: f["obsid"] for f in truth["frames"]}
        last_science = [f["filename"] for f in truth["frames"] if f["kind"] == "science"][-1]
        raw, out, db, logf = work / "raw", work / "reduced", work / "gw.db", work / "gw.log"
        raw.mkdir()
        cfg = work / "gw.toml"
        cfg.write_text(CONFIG.format(raw=raw, out=out, log=logf, db=db, workers=args.workers))
        for bpm in stage.glob("bpm_*.fits"):
            shutil.copyfile(bpm, raw / bpm.name)
        proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not db.exists():
            time.sleep(0.1)
        time.sleep(1.0)
        t0 = time.monotonic()
        landed, seen = {}, {}
        for k, name in enumerate(order):
            _drop(stage / name, raw)
            landed[name] = time.monotonic()
            if name == last_science:
                t_last = time.monotonic()
                t_last_wall = time.strftime("%H:%M:%S", time.localtime())
                subprocess.run([sys.executable, "-m", "gsaoi_watch", "close", "--all", "-c",
                                str(cfg)], check=True, capture_output=True)
            if k + 1 < len(order):
                change = obsid[name] != obsid[order[k + 1]]
                _wait(args.cadence + (args.gap if change else 0.0), out, seen)
        t_science = None
        while True:
            rows = _query(db, "select s.kind, j.state from job j join sequence s on "
                              "j.sequence_id = s.id")
            states = _query(db, "select state from sequence")
            if t_science is None and ("science", "DONE") in rows:
                t_science = time.monotonic()
            if t_science and states and all(s == "DONE" for (s,) in states) and not _query(
                    db, "select 1 from job where state in ('SUBMITTED','RUNNING','RETRY')"):
                break
            if proc.poll() is not None:
                raise SystemExit("the daemon exited early; see " + str(logf))
            _wait(0.2, out, seen)
        t_done = time.monotonic()
        pids = [proc.pid] + _descendants(proc.pid)
        cpu0 = sum(_cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
        time.sleep(args.idle)
        cpu1 = sum(_cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
        hwm = {("daemon" if p == proc.pid else f"worker {p}"): _hwm_gb(p) for p in pids
               if Path(f"/proc/{p}").exists()}
        log = logf.read_text()
        science = [line[11:23] + " " + line.split("INFO", 1)[-1].strip()[:110]
                   for line in log.splitlines()
                   if " done in " in line or ("science" in line and (
                       ": OPEN→COMPLETE" in line or " started " in line))]
        jobs = re.findall(r"job=\d+ (\w+) done in ([\d.]+) s", log)
        prepared = [float(x) for x in re.findall(r"prepared in ([\d.]+) s", log)]
        science_names = [f["filename"] for f in truth["frames"] if f["kind"] == "science"]
        after = {}
        for name, t_seen in seen.items():
            raw_name = name.replace("_skyCorrected", "")
            k = science_names.index(raw_name)
            if k + 1 < len(science_names):
                after[raw_name] = round(t_seen - landed[science_names[k + 1]], 1)
        result = {
            "size": truth["size"], "frames": len(order), "cadence_s": args.cadence,
            "gap_s": args.gap,
            "workers": args.workers,
            "last_science_to_products_s": round(t_science - t_last, 1),
            "provisional_after_trigger_s": dict(sorted(after.items())),
            "first_provisional_s": next(iter(dict(sorted(after.items())).values()), None),
            "night_wall_s": round(t_done - t0, 1),
            "job_seconds": [(r, float(s)) for r, s in jobs],
            "prepared_frames": len(prepared),
            "prepare_s_median": sorted(prepared)[len(prepared) // 2] if prepared else None,
            "idle_cpu_percent": round(100 * (cpu1 - cpu0) / args.idle, 2),
            "peak_memory_gb": hwm,
            "products": len(list(out.glob("*.fits"))),
            "timeline": [f"{t_last_wall} last science frame landed"] + science,
        }
        print(json.dumps(result, indent=1))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
