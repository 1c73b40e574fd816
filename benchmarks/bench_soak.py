"""Soak benchmark: five different nights through one daemon; its memory and idle CPU.

Run:  python benchmarks/bench_soak.py [--size 256] [--nights 5] [--idle 30] [--keep DIR]

Five nights are simulated with different seeds (``gsaoi-watch simulate``) and made into
five consecutive nights: night k is moved k days later (file names, DATE, DATE-OBS,
MJD-OBS, observation IDs and data labels), so that every frame is new to the database.
One ``gsaoi-watch run`` daemon is started; each night is copied into its raw directory in
observing order (temporary name, then rename) and the next one only once the night's
products are all written and nothing is left to do.  Printed, per night: the wall time
from its first frame to its last product, the daemon's RSS (VmRSS from /proc) when the
night is done and its peak over the night (sampled every 0.2 s), and the daemon's
processes; after the last night, the daemon's CPU use while idle over ``--idle`` seconds
(the daemon alone, and with its pool processes).
"""

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
[paths]
raw_dir = "{raw}"
output_dir = "{out}"
log_file = "{log}"
[database]
url = "{db}"
[watch]
settle_seconds = 0.5
rescan_seconds = 30
[sequences]
idle_timeout = 3
min_quiet = 1
[jobs]
workers = 1
[service]
heartbeat_seconds = 5
"""

PRODUCTS = (["S{d5}S0030_flat.fits"]
            + [f"S{{d4}}S{n:04d}_skyCorrected.fits" for n in range(114, 118)]
            + [f"S{{d5}}S{n:04d}_skyCorrected.fits" for n in range(95, 111, 2)]
            + ["S{d5}S0110_skyCorrected.fits"]
            + [f"S{{d5}}S{n:04d}_flatCorrected.fits" for n in range(96, 110, 2)]
            + ["S{d5}S0095_stack.fits"])
BPM = "bpm_20121104_gsaoi_gsaoi_11_full_4amp.fits"


def environment(**extra):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def _stat(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(pid):
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parent[int(entry)] = st[0]
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids):
    return sum((_stat(p) or (0, 0))[1] for p in pids) / os.sysconf("SC_CLK_TCK")


def make_night(src, dst, k):
    """Night ``k`` days after the simulated one: new names, dates, observation IDs, labels."""
    dst.mkdir(parents=True, exist_ok=True)
    shift = dt.timedelta(days=k)
    dates = {d: (dt.date(2017, 5, int(d[-2:])) + shift).strftime("%Y%m%d")
             for d in ("20170504", "20170505")}
    pattern = re.compile("|".join(dates))

    def redate(text):  # one pass: 20170504 -> 20170505 must not then become 20170506
        return pattern.sub(lambda m: dates[m.group(0)], text)

    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(src.glob("S2017050*.fits")):
            name = redate(path.name)
            with fits.open(path) as hdul:
                h = hdul[0].header
                for key in ("DATE", "DATE-OBS"):
                    day = dt.date.fromisoformat(h[key]) + shift
                    h[key] = day.isoformat()
                h["MJD-OBS"] = h["MJD-OBS"] + k
                obsid, label = h["OBSID"], h["DATALAB"]
                frame_no = label[len(obsid) + 1:]
                new_id = redate(obsid)
                if new_id == obsid and k:  # a programme observation: another number
                    head, _, number = obsid.rpartition("-")
                    new_id = f"{head}-{int(number) + 100 * k}"
                h["OBSID"], h["DATALAB"] = new_id, f"{new_id}-{frame_no}"
                hdul.writeto(dst / name, output_verify="silentfix")
            names.append(name)
    if k == 0:
        shutil.copyfile(src / BPM, dst / BPM)
        names.append(BPM)
    expected = [p.format(d4=dates["20170504"], d5=dates["20170505"]) for p in PRODUCTS]
    return sorted(names, key=_observing_order), expected


def _observing_order(name):
    return ("1" if name.startswith("bpm") else "0") + name


def query(db, sql):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def quiet(db):
    busy = query(db, "select count(*) from sequence where state not in "
                     "('DONE','FAILED','QUICKLOOK')")[0][0]
    jobs = query(db, "select count(*) from job where state not in ('DONE','FAILED')")[0][0]
    return busy == 0 and jobs == 0


class Sampler(threading.Thread):
    """The daemon's VmRSS every 0.2 s; ``peak()`` since the last ``reset()``."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self._peak, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            self._peak = max(self._peak, rss_mb(self.pid))
            time.sleep(0.2)

    def reset(self):
        self._peak = rss_mb(self.pid)

    def peak(self):
        return self._peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--nights", type=int, default=5)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per night, seconds")
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gw_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, out, log, db = work / "raw", work / "reduced", work / "gw.log", work / "gw.db"
    raw.mkdir(exist_ok=True)
    cfg = work / "gw.toml"
    cfg.write_text(CONFIG.format(raw=raw, out=out, log=log, db=db))
    nights = []
    t0 = time.perf_counter()
    for k in range(args.nights):
        sim = work / f"sim{k}"
        subprocess.run([sys.executable, "-m", "gsaoi_watch", "simulate", str(sim), "--seed",
                        str(1000 + k), "--size", str(args.size)], env=environment(),
                       check=True, capture_output=True)
        nights.append(make_night(sim, work / f"night{k}", k))
        shutil.rmtree(sim)
    print(f"simulated {args.nights} nights at size {args.size} in "
          f"{time.perf_counter() - t0:.0f} s; work directory {work}", flush=True)
    with open(work / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                                env=environment(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and " ready: " in log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not start; see {work / 'stderr.txt'}")
            time.sleep(0.2)
        sampler = Sampler(proc.pid)
        sampler.start()
        print(f"daemon pid {proc.pid}: RSS {rss_mb(proc.pid):.0f} MB at start")
        print("night  wall_s  rss_after_MB  rss_peak_MB  pool_rss_MB  processes", flush=True)
        for k, (names, expected) in enumerate(nights):
            sampler.reset()
            start = time.perf_counter()
            for name in names:
                tmp = raw / f".{name}.tmp"
                shutil.copyfile(work / f"night{k}" / name, tmp)
                tmp.rename(raw / name)
                time.sleep(0.02)
            deadline = time.monotonic() + args.timeout
            while not (all((out / n).exists() for n in expected) and quiet(db)):
                if proc.poll() is not None:
                    sys.exit(f"the daemon exited ({proc.returncode}) during night {k}")
                if time.monotonic() > deadline:
                    missing = [n for n in expected if not (out / n).exists()]
                    sys.exit(f"night {k} not reduced in {args.timeout:.0f} s: {missing}")
                time.sleep(0.2)
            wall = time.perf_counter() - start
            kids = descendants(proc.pid)
            pool = sum(rss_mb(p) for p in kids)
            print(f"{k:5d}  {wall:6.1f}  {rss_mb(proc.pid):12.0f}  {sampler.peak():11.0f}  "
                  f"{pool:11.0f}  {1 + len(kids)}", flush=True)
        kids = descendants(proc.pid)
        c0, ca0 = cpu_seconds([proc.pid]), cpu_seconds([proc.pid, *kids])
        time.sleep(args.idle)
        c1, ca1 = cpu_seconds([proc.pid]), cpu_seconds([proc.pid, *kids])
        sampler.running = False
        print(f"idle over {args.idle:.0f} s after the last night: daemon "
              f"{100 * (c1 - c0) / args.idle:.2f} % of a core, with its pool "
              f"{100 * (ca1 - ca0) / args.idle:.2f} %; RSS {rss_mb(proc.pid):.0f} MB")
        frames = query(db, "select state, count(*) from frame group by state")
        products = query(db, "select count(*) from product")[0][0]
        print(f"frames by state {dict(frames)}; products {products}")
        proc.send_signal(signal.SIGTERM)
        print(f"SIGTERM: exit {proc.wait(timeout=60)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
