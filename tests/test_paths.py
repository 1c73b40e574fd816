"""Names and paths at the I/O edge: products are named from the file read, never a header.

Hostile raw directories: ORIGNAME pointing outside the output directory or at another
frame, non-ASCII, space and newline file names.  Everything ``gsaoi-watch reduce`` writes
lies in its output directory under a safe name, and no name forges a log line.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
from astropy.io import fits

from gsaoi_watch.data.fitsio import (
    frame_names,
    load_frame,
    log_name,
    safe_name,
    safe_output_path,
    write_frame,
)
from gsaoi_watch.errors import FrameError, UnsafePathError
from gsaoi_watch.sim import BPM_NAME, simulate_night

SAFE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")


@pytest.mark.parametrize("name", [
    "../../x.fits", "/abs/x.fits", "a\nb.fits", ".hidden.fits", "..", ".", "S é.fits",
    "S\udce9.fits", "x" * 400 + ".fits", "a\x1b[2Jb.fits", "\u202eexe.stif"])
def test_safe_name_is_safe_bounded_and_distinct(name):
    safe = safe_name(name)
    assert SAFE.match(safe) and len(safe) <= 200
    assert safe_name(safe) == safe  # idempotent: written names are never renamed again
    assert safe_name(name + "2") != safe


def test_safe_names_keep_safe_names_and_extensions():
    for name in ("S20170505S0095.fits", "S20170505S0095_skyCorrected.fits", "a+b-c.fits.gz",
                 "index.html", "S20170505S0030_flat.png"):
        assert safe_name(name) == name
    assert safe_name("S é.fits").endswith(".fits")
    assert safe_name("x" * 400 + ".fits", limit=160).endswith(".fits")
    assert len(safe_name("x" * 400 + ".fits", limit=160)) == 160
    with pytest.raises(UnsafePathError):
        safe_name("")


def test_safe_output_path_stays_in_its_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("../../x.fits", "/etc/passwd", "..", "sub/../../y.fits"):
        target = safe_output_path(out, name)
        assert target.parent == out
        assert os.path.realpath(target).startswith(str(out.resolve()) + os.sep)
    # a symbolic link planted at a product's name is replaced, its target left alone
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "S1_flat.png").symlink_to(victim)
    from gsaoi_watch.data.fitsio import atomic_output
    with atomic_output(safe_output_path(out, "S1_flat.png")) as fh:
        fh.write(b"png")
    assert victim.read_text() == "keep me"
    assert (out / "S1_flat.png").read_bytes() == b"png"


def test_log_name_escapes_what_could_forge_a_line():
    assert log_name("S20170505S0095.fits") == "S20170505S0095.fits"
    assert log_name("S é.fits") == "S é.fits"
    assert log_name("a\n2017-05-05 INFO forged") == "a\\n2017-05-05 INFO forged"
    assert log_name("a\rb\tc\x1b\x00") == "a\\rb\\tc\\x1b\\x00"
    assert log_name("S\udce9.fits") == "S\\udce9.fits"
    assert log_name("\u202eexe") == "\\u202eexe"
    err = FrameError("bad\nname.fits", "not a FITS file")
    assert "\n" not in str(err) and err.path == "bad\nname.fits"


def test_frame_names_come_from_the_file_not_orignames(tmp_path):
    raw = {"ORIGNAME": "../../x.fits", "INSTRUME": "GSAOI"}
    assert frame_names(tmp_path / "S1.fits", fits.Header(raw)) == ("S1.fits", "S1.fits")
    prepared = fits.Header({"ORIGNAME": "S1.fits", "PREPARE": "2017-05-05T00:00:00"})
    assert frame_names(tmp_path / "S1_prepared.fits", prepared) == (
        "S1_prepared.fits", "S1.fits")
    for hostile in ("../S1.fits", "/abs/S1.fits", "S2.fits", "S1_prepared_x.fits", ""):
        prepared["ORIGNAME"] = hostile
        name, orig = frame_names(tmp_path / "S1_prepared.fits", prepared)
        assert name == "S1_prepared.fits" and orig in ("S1_prepared.fits",)


@pytest.fixture(scope="module")
def hostile_night(tmp_path_factory):
    """A small night whose raw headers and file names try to escape or collide."""
    root = tmp_path_factory.mktemp("hostile")
    stage = root / "stage"
    simulate_night(stage, seed=8, size=64, workers=1, only=["flats", "standard", "bpm"])
    raw = root / "raw"
    raw.mkdir()
    shutil.copy(stage / BPM_NAME, raw / BPM_NAME)
    outside = root / "outside"
    hostile = {"S20170504S0114.fits": "S20170504S0115.fits",       # another frame's name
               "S20170504S0115.fits": str(outside / "abs.fits"),     # an absolute path
               "S20170504S0116.fits": "../../escape.fits",
               "S20170504S0117.fits": "../../escape.fits"}
    renamed = {"S20170504S0116.fits": "S20170504S0116 é.fits",
               "S20170504S0117.fits": "S20170504S0117\n2017-05-05 INFO forged.fits"}
    for i, src in enumerate(sorted(stage.glob("S2017050*.fits"))):
        target = raw / renamed.get(src.name, src.name)
        shutil.copy(src, target)
        with fits.open(target, mode="update") as hdul:
            hdul[0].header["ORIGNAME"] = hostile.get(
                src.name, "../../escape.fits" if i % 2 else str(outside / "abs.fits"))
    return root, raw, outside


def _files(root):
    return {p for p in root.rglob("*") if p.is_file()}


def test_reduce_writes_only_inside_its_output_directory(hostile_night, tmp_path):
    root, raw, outside = hostile_night
    before = _files(root)
    out = tmp_path / "work" / "out"
    db = tmp_path / "cal.db"
    flats = sorted(str(p) for p in raw.glob("S20170505S*.fits"))
    std = sorted(str(p) for p in raw.glob("S20170504S*"))
    for inputs in (flats, std):
        proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "reduce", *inputs,
                               "-o", str(out), "-d", str(db)], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert not any(line.startswith("2017-05-05 INFO forged")
                       for line in proc.stderr.splitlines())
    assert _files(root) == before  # nothing written beside the raw data or outside
    assert not outside.exists()
    assert not list(tmp_path.rglob("escape*")) and not list(tmp_path.rglob("abs*"))
    written = _files(tmp_path / "work")
    assert all(p.is_relative_to(out) for p in written)
    assert all(SAFE.match(p.name) for p in written)
    sky = sorted(p.name for p in out.glob("*_skyCorrected.fits"))
    assert sky == sorted([
        "S20170504S0114_skyCorrected.fits", "S20170504S0115_skyCorrected.fits",
        safe_name("S20170504S0116 é.fits").removesuffix(".fits") + "_skyCorrected.fits",
        safe_name("S20170504S0117\n2017-05-05 INFO forged.fits").removesuffix(".fits")
        + "_skyCorrected.fits"])
    assert (out / "S20170505S0030_flat.fits").exists()
    assert (out / "calibrations" / "processed_flat" / "S20170505S0030_flat.fits").exists()
    # the products say which raw file they come from: its (safe) name
    assert fits.getval(out / "S20170504S0114_skyCorrected.fits", "ORIGNAME") == \
        "S20170504S0114.fits"


def test_non_ascii_names_read_and_write(hostile_night, tmp_path):
    _, raw, _ = hostile_night
    path = raw / "S20170504S0116 é.fits"
    frame = load_frame(path)
    assert frame.filename == frame.orig_filename == safe_name(path.name)
    assert frame.phu["ORIGNAME"] == "../../escape.fits"  # kept as data
    written = write_frame(frame.with_(filename="../../" + path.name), tmp_path)
    assert written.parent == tmp_path and SAFE.match(written.name)
