"""A simulated full-size night kept in a cache directory, shared by the science benchmarks.

``ensure_night(DIR)`` simulates the night into DIR once (about 90 s at 2048 x 2048 on two
cores, 3 GB) and reuses it afterwards; ``ensure_flat(DIR)`` makes the master flat from its
30 flat frames once (about 40 s) into ``DIR/flat``.
"""

from pathlib import Path

FLAT_NUMBERS = {f"{n:04d}" for n in list(range(30, 45)) + list(range(60, 75))}


def ensure_night(data, size=2048):
    """The raw directory ``data``, simulated there first if it holds no night yet."""
    data = Path(data)
    if not (data / "truth.json").exists():
        from gsaoi_watch.sim import simulate_night
        print(f"simulating a {size} x {size} night into {data} ...", flush=True)
        simulate_night(data, size=size, workers=2)
    return data


def science_files(data):
    """The 16 raw frames of the science sequence (S20170505S0095 onwards)."""
    return [f for f in sorted(Path(data).glob("S20170505S*.fits")) if int(f.name[10:14]) >= 95]


def flat_files(data):
    """The 30 lamp-on and lamp-off flats."""
    return [f for f in sorted(Path(data).glob("S2017*.fits")) if f.name[10:14] in FLAT_NUMBERS]


def bpm_file(data):
    """The static bad-pixel mask of the night."""
    return next(Path(data).glob("bpm_*.fits"))


def ensure_flat(data):
    """Path of the night's processed flat (made into ``data/flat`` the first time)."""
    out = Path(data) / "flat"
    found = sorted(out.glob("*_flat.fits"))
    if found:
        return found[0]
    from gsaoi_watch.data.fitsio import load_bpm, write_frame
    from gsaoi_watch.pipeline.recipes import make_processed_flat
    print(f"making the processed flat into {out} ...", flush=True)
    bpm = bpm_file(data)
    flat = make_processed_flat(flat_files(data), bpm=load_bpm(bpm), bpm_name=bpm.name)
    return write_frame(flat, out)
