"""Configuration validation: every value checked at load, one line naming section and key."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gsaoi_watch.cli.main import main
from gsaoi_watch.config import Config, load_config, resolve_database
from gsaoi_watch.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "gsaoi-watch.toml"

BAD = [
    ("sequences", "idle_timeout", "inf", "must be a finite number"),
    ("sequences", "idle_timeout", "nan", "must be a finite number"),
    ("sequences", "idle_timeout", "-5.0", "must be in (0, 604800]"),
    ("sequences", "idle_timeout", "0", "must be in (0, 604800]"),
    ("sequences", "flat_wait", "1e30", "must be in (0, 604800]"),
    ("sequences", "tick_seconds", "0.0", "must be in [0.05, 60]"),
    ("sequences", "min_quiet", "-inf", "must be a finite number"),
    ("sequences", "min_quiet", '"10"', "must be a number, not str"),
    ("jobs", "workers", "1e11", "must be an integer, not float"),
    ("jobs", "workers", "100000000000", "must be in [1, 256]"),
    ("jobs", "workers", "0", "must be in [1, 256]"),
    ("jobs", "workers", "true", "must be an integer, not bool"),
    ("jobs", "max_tries", "2.5", "must be an integer"),
    ("jobs", "max_crashes", "0", "must be in [1, 100]"),
    ("jobs", "max_crashes", "inf", "must be an integer, not float"),
    ("jobs", "max_crashes", "1e3", "must be an integer, not float"),
    ("jobs", "prepare_ahead", "1", "must be true or false"),
    ("watch", "poll_interval", "-1", "must be in [0.05, 3600]"),
    ("watch", "settle_seconds", "nan", "must be a finite number"),
    ("watch", "give_up_seconds", "1.0", "must be longer than settle_seconds"),
    ("watch", "rescan_seconds", "inf", "must be a finite number"),
    ("watch", "polling", '"yes"', "must be true or false"),
    ("service", "heartbeat_seconds", "0", "must be in [0.1, 3600]"),
    ("service", "heartbeat_seconds", "1979-05-27", "must be a number, not date"),
    ("service", "log_level", '"LOUD"', "must be one of DEBUG, INFO, WARNING, ERROR"),
    ("service", "log_level", "10", "must be a string, not int"),
    ("database", "url", '"mysql://gsaoi@db/cal"', "scheme 'mysql' is not supported"),
    ("database", "url", '"mongodb://x"', "scheme 'mongodb' is not supported"),
    ("database", "url", '""', "must not be empty"),
    ("database", "url", "5", "must be a string, not int"),
    ("paths", "raw_dir", "[1, 2]", "must be a string, not list"),
    ("paths", "output_dir", '"raw/"', "must differ from raw_dir"),
    ("paths", "log_file", "false", "must be a string, not bool"),
    ("paths", "raw_dir", '""', "must not be empty"),
    ("quicklook", "pictures", '"no"', "must be true or false"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD,
                         ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD])
def test_bad_values_are_one_line_naming_section_and_key(tmp_path, section, key, value,
                                                        message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{cfg}: [{section}] {key}")
    assert message in text


def test_run_with_a_bad_value_exits_2_with_the_line_and_no_traceback(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[sequences]\nidle_timeout = inf\n")
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"gsaoi-watch run: {cfg}: [sequences] idle_timeout must "
                                   "be a finite number, not inf")
    assert not (tmp_path / "raw").exists()  # nothing was started


@pytest.mark.parametrize("verb", [["status"], ["close", "--all"], ["caldb", "list"],
                                  ["reduce", "x.fits"]])
def test_every_verb_taking_a_config_reports_it(tmp_path, capsys, verb):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[database]\nurl = "mysql://u@h/db"\n')
    assert main([*verb, "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[database] url: scheme 'mysql'" in err


def test_command_line_overrides_are_checked_too(tmp_path, capsys):
    assert main(["caldb", "list", "-d", "mysql://u@h/db"]) == 2
    assert "scheme 'mysql' is not supported" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[jobs\] workers must be in"):
        Config().replace("jobs", workers=10**6)
    with pytest.raises(ConfigError, match="unknown key"):
        Config().replace("jobs", speed=3)
    with pytest.raises(ConfigError, match="unknown section"):
        Config().replace("job", workers=2)
    assert resolve_database("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def test_structural_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("jobs = 3\n")
    with pytest.raises(ConfigError, match=r"jobs must be a \[jobs\] table"):
        load_config(cfg)
    cfg.write_text("[jobz]\nworkers = 2\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) jobz"):
        load_config(cfg)
    cfg.write_bytes(b"[jobs]\nworkers = \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(cfg)
    cfg.write_text("[jobs\n")
    with pytest.raises(ConfigError, match=str(cfg)):
        load_config(cfg)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_good_values_are_kept_and_normalised(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[jobs]\nworkers = 2\n[sequences]\nidle_timeout = 60\n'
                   '[service]\nlog_level = "debug"\n[database]\n'
                   'url = "postgresql://gsaoi@dbhost/gsaoi_watch"\n')
    config = load_config(cfg)
    assert config.jobs.workers == 2
    assert config.sequences.idle_timeout == 60.0
    assert isinstance(config.sequences.idle_timeout, float)
    assert config.service.log_level == "DEBUG"
    assert config.database.url.startswith("postgresql://")


def test_the_shipped_file_documents_every_option_with_its_default():
    text = SHIPPED.read_text()
    data = tomllib.loads(text)
    assert load_config(SHIPPED) == Config()
    defaults = Config()
    for section, values in data.items():
        for key, value in values.items():
            assert getattr(getattr(defaults, section), key) == value
    import dataclasses
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        assert set(data[f.name]) == {g.name for g in dataclasses.fields(section)}
        lines = text.splitlines()
        for key in data[f.name]:
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
            assert lines[at - 1].startswith("#"), f"[{f.name}] {key} has no comment"
