"""Files follow the process umask: products, pictures, the summary page, lists, the database."""

import json
import os
import stat
import subprocess
import sys

import pytest

from gsaoi_watch.sim import simulate_night


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, seed=9, size=64, workers=1, only=["flats", "standard", "bpm"])
    return out


def _run(args, cwd, umask):
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


SUMMARY = """
import sys
from gsaoi_watch.quicklook.summary import write_summary
products = [{"path": p} for p in sys.argv[2:]]
write_summary(sys.argv[1], [{"name": "standard", "state": "DONE", "products": products}])
"""


def _modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("umask", "expected"), [
    (0o022, 0o644), pytest.param(0o027, 0o640, marks=pytest.mark.slow)])
def test_everything_written_follows_the_umask(night, tmp_path, umask, expected):
    work = tmp_path / "work"
    work.mkdir()
    flats = sorted(night.glob("S20170505S*.fits"))
    std = sorted(night.glob("S20170504S*.fits"))
    _run(["caldb", "init"], work, umask)
    _run(["dataselect", *std, "--expr", "object=='9132'", "-o", "std.list"], work, umask)
    _run(["reduce", *flats, "-o", "out"], work, umask)
    _run(["reduce", "@std.list", "-o", "out"], work, umask)
    products = sorted((work / "out").glob("*_skyCorrected.fits"))
    assert len(products) == 4
    _run(["qa", "--png", *products, work / "out" / "S20170505S0030_flat.fits"], work, umask)
    proc = subprocess.run([sys.executable, "-c", SUMMARY, work / "out", *products],
                          capture_output=True, text=True, timeout=300, umask=umask)
    assert proc.returncode == 0, proc.stderr
    modes = _modes(work)
    assert "out/index.html" in modes and "std.list" in modes and "cal_manager.db" in modes
    assert "out/calibrations/processed_flat/S20170505S0030_flat.fits" in modes
    assert len([n for n in modes if n.endswith(".png")]) == 5
    wrong = {n: oct(m) for n, m in modes.items() if m != expected}
    assert not wrong, json.dumps(wrong)
    dirs = {p for p in work.rglob("*") if p.is_dir()}
    assert all(stat.S_IMODE(d.stat().st_mode) == expected | 0o111 & ~umask for d in dirs)


def test_the_umask_is_read_without_changing_it():
    code = ("import os; os.umask(0o037); from gsaoi_watch.data import fitsio; "
            "print(oct(fitsio.process_umask()), oct(os.umask(0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ), check=True).stdout.split()
    assert out == ["0o37", "0o37"]
