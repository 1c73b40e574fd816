"""Benchmark: the live page's answers for a full night, over a real socket.

Run:  python benchmarks/bench_live_page.py [--frames 400] [--requests 50]

A SQLite database in a temporary directory is filled with a night: 40 sequences, 1000 raw
frame rows (some quarantined, some unusable), one job per sequence, 400 reduced frames
with a QA record carrying requirements (half of them with a PNG beside them), 40 master
flats.  The page's server (the daemon's, on 127.0.0.1 port 0) is then asked for ``/``,
``/api/frames``, ``/api/sequences``, ``/api/files`` and ``/api/status`` ``--requests`` times
each; the median and the largest time of each is printed (target: 200 ms or less).
"""

import argparse
import datetime as dt
import json
import random
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon.engine import BUSY_WAIT
from gsaoi_watch.web.server import LivePage

PATHS = ["/", "/api/frames", "/api/sequences", "/api/files", "/api/status"]


def qa(rng, standard):
    seeing = rng.uniform(0.3, 1.3)
    req = {"iq": {"value": seeing, "error": 0.03, "unit": "arcsec", "band": "IQ70",
                  "requested": "IQ70", "met": seeing <= 0.8, "probability": 0.7,
                  "reason": None, "limits": {"20": 0.45, "70": 0.8, "85": 1.2}},
           "bg": {"value": 17.5, "error": 0.1, "unit": "mag/arcsec2", "band": "BG20",
                  "requested": "BGAny", "met": True, "probability": 1.0, "reason": None,
                  "limits": {"20": 14.6, "50": 14.6, "80": 14.6}},
           "cc": {"value": 0.1 if standard else None, "error": None, "unit": "mag",
                  "band": "CC70" if standard else None, "requested": "CC70",
                  "met": True if standard else None, "probability": None,
                  "reason": None if standard else "no standard star",
                  "limits": {"50": 0.08, "70": 0.3, "80": 1.0}}}
    return json.dumps({
        "filename": "x", "iq": {"fwhm": seeing / 7, "fwhm_zenith": seeing / 7.3,
                                "strehl": rng.uniform(0.05, 0.4), "ellipticity": 0.05,
                                "n_stars": 9, "seeing": seeing, "band": "IQ70"},
        "bg": {"rate": 40.0, "mag": 17.5, "band": "BG20", "source": "recorded"},
        "standard": "9132" if standard else None,
        "zeropoints": [{"array": k, "zp": 26.1, "zp_err": 0.01, "nominal": 26.2}
                       for k in range(4)] if standard else [],
        "cc": {"extinction": 0.1, "extinction_err": 0.01, "band": "CC70"} if standard else None,
        "notes": [], "requirements": req})


def fill(directory, n_frames):
    rng = random.Random(5)
    out = Path(directory) / "reduced"
    out.mkdir()
    db.open_database(Path(directory) / "night.db", create=True)
    t0 = dt.datetime(2017, 5, 5, 23, 0)
    with db.writing():
        seqs = []
        for k in range(40):
            kind = ["flat_on", "flat_off", "standard", "science"][k % 4]
            seqs.append(db.Sequence.create(
                key=f"seq{k}", kind=kind, observation_id=f"GS-2017A-Q-29-{k}",
                object="NGC5128", filter_name="Kshort_G1106", exposure_time=60.0,
                state="DONE", opened=t0 + dt.timedelta(minutes=10 * k)))
        for k in range(1000):
            state = "quarantined" if k % 50 == 0 else "unusable" if k % 97 == 0 else "used"
            db.Frame.create(path=f"/raw/S20170505S{k:04d}.fits", state=state,
                            error=None if state == "used" else "not a FITS file",
                            sequence=seqs[k % 40], data_label=f"GS-2017A-Q-29-{k % 40}-{k:03d}",
                            ut_datetime=t0 + dt.timedelta(seconds=30 * k))
        jobs = [db.Job.create(sequence=s, recipe="images", state="DONE") for s in seqs]
        for k, job in enumerate(jobs):
            if k % 4 == 0:
                db.Product.create(path=str(out / "calibrations" / f"S{k:04d}_flat.fits"),
                                  filename=f"S{k:04d}_flat.fits", kind="processed_flat",
                                  job=job, is_calibration=True)
        for k in range(n_frames):
            seq = 2 + (k % 20) // 2 * 4 + (k % 2)  # standards (k % 4 == 2) and science
            name = f"S20170505S{k:04d}_skyCorrected.fits"
            db.Product.create(path=str(out / name), filename=name, kind="sky_corrected",
                              job=jobs[seq], qa=qa(rng, seq % 4 == 2),
                              ut_datetime=t0 + dt.timedelta(seconds=60 * k),
                              data_label=f"GS-2017A-Q-29-{seq}-{k:03d}",
                              filter_name="Kshort_G1106", checksum=f"{k:032x}")
            if k % 2:
                (out / name.replace(".fits", ".png")).write_bytes(b"\x89PNG\r\n\x1a\n")
    db.close_database()
    db.open_database(Path(directory) / "night.db", lock_timeout=BUSY_WAIT)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = fill(tmp, args.frames)
        page = LivePage(out, "127.0.0.1", 0)
        page.start()
        try:
            print(f"{args.frames} reduced frames, 40 sequences, 1000 raw frames; "
                  f"{args.requests} requests each over {page.url}")
            for path in PATHS:
                times, size = [], 0
                for _ in range(args.requests):
                    t = time.perf_counter()
                    with urllib.request.urlopen(page.url.rstrip("/") + path) as response:
                        size = len(response.read())
                    times.append(1000 * (time.perf_counter() - t))
                print(f"  GET {path:15s} median {statistics.median(times):6.1f} ms  "
                      f"max {max(times):6.1f} ms  ({size / 1024:.0f} KiB)")
        finally:
            page.stop()
            db.close_database()


if __name__ == "__main__":
    main()
