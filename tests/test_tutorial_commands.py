"""Every typewalk / dataselect / showd command of the DRAGONS tutorial, on a simulated night."""

import io
import sys
from pathlib import Path

import pytest

from gsaoi_watch.cli.main import main
from gsaoi_watch.sim import BPM_NAME, simulate_night

STANDARD = [f"S20170504S{n:04d}.fits" for n in range(114, 118)]
FLATS = ([f"S20170505S{n:04d}.fits" for n in range(30, 45)]
         + [f"S20170505S{n:04d}.fits" for n in range(60, 75)])
SCIENCE = [f"S20170505S{n:04d}.fits" for n in range(95, 111)]


@pytest.fixture(scope="module")
def playdata(tmp_path_factory):
    out = tmp_path_factory.mktemp("playdata")
    simulate_night(out, seed=5, size=64, workers=1)
    return out


def all_fits(d):
    """What the shell makes of ``../playdata/*.fits``."""
    return sorted(str(p) for p in Path(d).glob("*.fits"))


def names(text):
    return [Path(line).name for line in text.splitlines() if line and not line.startswith("#")]


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_typewalk_shows_the_tutorial_tags(playdata, capsys):
    status, out, err = run(capsys, "typewalk", "-d", playdata)
    assert status == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("     S")}
    assert len(lines) == 50
    assert lines["S20170504S0114.fits"].endswith(
        "(GEMINI) (GSAOI) (IMAGE) (RAW) (SIDEREAL) (SOUTH) (UNPREPARED)")
    assert lines["S20170505S0030.fits"].endswith(
        "(AZEL_TARGET) (CAL) (DOMEFLAT) (FLAT) (GEMINI) (GSAOI) (IMAGE) (LAMPON) "
        "(NON_SIDEREAL) (RAW) (SOUTH) (UNPREPARED)")
    assert "(LAMPOFF)" in lines["S20170505S0060.fits"]
    assert lines["S20170505S0110.fits"].endswith("(SOUTH) (UNPREPARED)")
    assert BPM_NAME in out
    order = [line.split()[0] for line in out.splitlines() if line.startswith("     S")]
    assert order == sorted(order)


def test_flat_lists(playdata, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "dataselect", "--tags", "FLAT", *all_fits(playdata),
                         "-o", "flats_Kshort.list")
    assert status == 0, err
    text = Path("flats_Kshort.list").read_text()
    assert text.startswith("# Includes tags")
    assert names(text) == FLATS
    status, _, _ = run(capsys, "dataselect", "--tags", "FLAT", "--expr", "filter_name=='Kshort'",
                       *all_fits(playdata), "-o", "flats_Kshort.list")
    assert status == 0 and names(Path("flats_Kshort.list").read_text()) == FLATS


def test_showd_filter_name(playdata, capsys):
    status, out, _ = run(capsys, "showd", *all_fits(playdata), "-d", "filter_name")
    assert status == 0
    rows = [line.split() for line in out.splitlines() if ".fits" in line]
    values = {Path(r[0]).name: r[1] for r in rows}
    assert all(values[n] == "Kshort_G1105&Clear" for n in STANDARD + FLATS + SCIENCE)


def test_standard_star_selection_piped_into_showd(playdata, capsys, monkeypatch):
    status, out, _ = run(capsys, "dataselect", "--expr", 'observation_class=="partnerCal"',
                         *all_fits(playdata))
    assert status == 0 and names(out) == STANDARD
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    status, table, _ = run(capsys, "showd", "-d", "object")
    assert status == 0
    rows = [line.split() for line in table.splitlines() if ".fits" in line]
    assert [Path(r[0]).name for r in rows] == STANDARD
    assert {r[1] for r in rows} == {"9132"}


def test_standard_list_by_object(playdata, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, _ = run(capsys, "dataselect", "--expr", 'object=="9132"', *all_fits(playdata),
                       "-o", "std_9132.list")
    assert status == 0 and names(Path("std_9132.list").read_text()) == STANDARD


def test_science_selection(playdata, tmp_path, capsys, monkeypatch):
    status, out, _ = run(capsys, "dataselect", "--expr", 'observation_class=="science"',
                         *all_fits(playdata))
    assert status == 0 and names(out) == SCIENCE
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    status, table, _ = run(capsys, "showd", "-d", "object,exposure_time")
    rows = [line.split() for line in table.splitlines() if ".fits" in line]
    assert [(r[1], float(r[2])) for r in rows] == [("NGC5128", 60.0)] * 16
    monkeypatch.chdir(tmp_path)
    status, _, _ = run(capsys, "dataselect", "--expr",
                       '(observation_class=="science" and exposure_time==60.)',
                       *all_fits(playdata), "-o", "science.list")
    assert status == 0 and names(Path("science.list").read_text()) == SCIENCE
