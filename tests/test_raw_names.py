"""The raw directory's edges: symbolic links, non-regular files and odd file names.

A symbolic link is never followed (ignored, logged by its own name); a FIFO never blocks
the gate; a name that is not UTF-8 or not printable is quarantined with an escaped reason;
non-ASCII letters and spaces are ingested.  Real files, a real engine and database.
"""

import logging
import os
import shutil

import pytest
from engine_harness import STD, Night

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon.events import FileNoticed
from gsaoi_watch.daemon.watcher import ArrivalGate, name_problem, scan_directory
from gsaoi_watch.sim import simulate_night


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("names_night")
    simulate_night(out, seed=9, size=64, workers=1, only=["standard"])
    return out


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


def test_name_problem():
    for fine in ("S20170504S0114.fits", "S20170504S0114 copy.fits", "S20170504S0115_Ω_é.fits"):
        assert name_problem(f"/raw/{fine}") is None
    for odd in ("S1\nFORGED.fits", "S1\x1b[2J.fits", "S1\u202egnp.fits", "S1\tx.fits"):
        assert "control or invisible" in name_problem(f"/raw/{odd}")
    assert "not valid UTF-8" in name_problem(os.fsdecode(b"/raw/S1\xff.fits"))


def test_scan_leaves_out_links_and_non_files(stage, tmp_path):
    raw, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    raw.mkdir()
    elsewhere.mkdir()
    shutil.copyfile(stage / STD[0], raw / STD[0])
    shutil.copyfile(stage / STD[1], raw / "S20170504S0115 copy Ω.fits")
    shutil.copyfile(stage / STD[2], elsewhere / "outside_target.fits")
    (raw / "link_out.fits").symlink_to(elsewhere / "outside_target.fits")
    (raw / "link_in.fits").symlink_to(raw / STD[0])
    os.mkfifo(raw / "pipe.fits")
    (raw / "dir.fits").mkdir()
    assert [os.path.basename(p) for p in scan_directory(raw)] == \
        ["S20170504S0114.fits", "S20170504S0115 copy Ω.fits"]


def test_the_gate_ignores_links_and_fifos_by_their_own_name(stage, tmp_path, caplog):
    raw, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    raw.mkdir()
    elsewhere.mkdir()
    shutil.copyfile(stage / STD[2], elsewhere / "outside_target.fits")
    link = raw / "link_out.fits"
    link.symlink_to(elsewhere / "outside_target.fits")
    os.mkfifo(raw / "pipe.fits")
    gate = ArrivalGate(settle=0.5, give_up=5.0, clock=Clock())
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # inotify events and rescans: said once
            gate.notice(link, closed=True)
            gate.notice(raw / "pipe.fits", closed=True)
        assert gate.poll() == ([], [])  # a FIFO opened here would block the engine
    said = [r.getMessage() for r in caplog.records]
    assert said == ["frame=link_out.fits ignored: a symbolic link (not followed)",
                    "frame=pipe.fits ignored: not a regular file"]
    # a file replaced by a link between notice and poll is not followed either
    real = raw / "S20170504S0114.fits"
    shutil.copyfile(stage / STD[0], real)
    gate.notice(real, closed=True)
    real.unlink()
    real.symlink_to(elsewhere / "outside_target.fits")
    assert gate.poll() == ([], [])


def test_odd_names_through_the_engine(stage, tmp_path, caplog):
    n = Night(tmp_path, stage)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(stage / STD[3], elsewhere / "outside_target.fits")
    names = {STD[0]: "S20170504S0114 copy.fits", STD[1]: "S20170504S0115_Ω_é.fits",
             STD[2]: "S20170504S0116\n2017-05-05 00:00:00,000 ERROR forged.fits"}
    undecodable = os.fsdecode(b"S20170504S0117_\xff.fits")
    with caplog.at_level(logging.INFO):
        for src, name in names.items():
            shutil.copyfile(stage / src, n.raw / name)
        shutil.copyfile(stage / STD[3], n.raw / undecodable)
        (n.raw / "link_out.fits").symlink_to(elsewhere / "outside_target.fits")
        for path in [*(n.raw / name for name in names.values()), n.raw / undecodable,
                     n.raw / "link_out.fits"]:
            n.engine.events.put(FileNoticed(str(path), closed=True))
        n.drain()
        n.engine.rescan()  # the catch-up scan finds nothing new to say
        n.drain()
    rows = {r.path: (r.state, r.error) for r in db.Frame.select()}
    assert rows[str((n.raw / names[STD[0]]).resolve())][0] == "ingested"
    assert rows[str((n.raw / names[STD[1]]).resolve())][0] == "ingested"
    forged = rows[str((n.raw / names[STD[2]]).resolve())]
    assert forged[0] == "quarantined" and "control or invisible" in forged[1]
    stored = str(n.raw.resolve() / "S20170504S0117_\\xff.fits")
    assert rows[stored][0] == "quarantined" and "UTF-8" in rows[stored][1]
    assert len(rows) == 4, sorted(rows)  # the link has no row, nor its target
    assert db.Sequence.get().frames.count() == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "outside_target" not in text and STD[3][:-5] + "." not in text
    assert "\nforged" not in text.lower() and "\n2017" not in text
    quarantined = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert quarantined == [
        "frame=S20170504S0116\\n2017-05-05 00:00:00,000 ERROR forged.fits quarantined: file "
        "name holds a control or invisible character: rename the file to have it reduced",
        "frame=S20170504S0117_\\xff.fits quarantined: file name is not valid UTF-8: "
        "rename the file to have it reduced"]
