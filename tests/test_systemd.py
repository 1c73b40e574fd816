"""The systemd unit: systemd-analyze verify accepts it without a word; directives in place."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "gsaoi-watch.service"
EXEC = "/opt/gsaoi-watch/bin/gsaoi-watch"


def _sections():
    parser = configparser.ConfigParser(strict=True, interpolation=None,
                                       comment_prefixes=("#",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_directives_sit_in_the_sections_that_read_them():
    unit = _sections()
    assert unit["Unit"]["StartLimitIntervalSec"] == "600"
    assert unit["Unit"]["StartLimitBurst"] == "5"
    for key in ("StartLimitIntervalSec", "StartLimitBurst", "StartLimitInterval"):
        assert key not in unit["Service"]
    service = unit["Service"]
    assert service["KillMode"] == "mixed"
    assert service["UMask"] == "0022"
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert int(service["WatchdogSec"]) >= 3 * 10  # several default heartbeats
    assert service["ExecStart"].startswith(EXEC + " run -c ")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu package: systemd)")
    # verify also checks that ExecStart= is executable: point it at a stand-in
    stand_in = tmp_path / "gsaoi-watch"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "gsaoi-watch.service"
    unit.write_text(UNIT.read_text().replace(EXEC, str(stand_in)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr
