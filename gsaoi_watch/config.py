"""Configuration: frozen dataclasses loaded from TOML; unknown keys are an error naming them."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gsaoi_watch.errors import ConfigError

__all__ = ["DEFAULT_DATABASE", "Config", "DatabaseConfig", "JobsConfig", "PathsConfig",
           "QuicklookConfig", "SequencesConfig", "ServiceConfig", "WatchConfig", "load_config",
           "resolve_database"]

#: Where the calibration database lives when neither -d nor a config file says: the working
#: directory, as DRAGONS' local calibration manager does.
DEFAULT_DATABASE = "cal_manager.db"


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: where the calibration database is.

    Attributes
    ----------
    url : str
        A SQLite file path (relative to the working directory) or a database URL such as
        ``postgresql://user@host/gsaoi``.
    """

    url: str = DEFAULT_DATABASE

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url.strip():
            raise ConfigError("[database] url must be a non-empty string")


def _positive(section, **values):
    for name, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"[{section}] {name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class PathsConfig:
    """``[paths]``: where raw frames arrive, where products go, where the log is written."""

    raw_dir: str = "raw"
    output_dir: str = "reduced"
    log_file: str = ""

    def __post_init__(self):
        for name in ("raw_dir", "output_dir", "log_file"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"[paths] {name} must be a string")
        if not self.raw_dir or not self.output_dir:
            raise ConfigError("[paths] raw_dir and output_dir must not be empty")


@dataclass(frozen=True)
class WatchConfig:
    """``[watch]``: how new files are noticed and judged complete."""

    polling: bool = False
    poll_interval: float = 1.0
    settle_seconds: float = 2.0
    give_up_seconds: float = 120.0
    rescan_seconds: float = 60.0

    def __post_init__(self):
        if not isinstance(self.polling, bool):
            raise ConfigError("[watch] polling must be true or false")
        _positive("watch", poll_interval=self.poll_interval,
                  settle_seconds=self.settle_seconds, give_up_seconds=self.give_up_seconds,
                  rescan_seconds=self.rescan_seconds)


@dataclass(frozen=True)
class SequencesConfig:
    """``[sequences]``: when a sequence is complete, how long science waits for a flat."""

    idle_timeout: float = 900.0
    flat_wait: float = 1800.0
    tick_seconds: float = 1.0
    min_quiet: float = 10.0

    def __post_init__(self):
        _positive("sequences", idle_timeout=self.idle_timeout, flat_wait=self.flat_wait,
                  tick_seconds=self.tick_seconds, min_quiet=self.min_quiet)


@dataclass(frozen=True)
class JobsConfig:
    """``[jobs]``: the reduction worker pool."""

    workers: int = 1
    max_tries: int = 3
    prepare_ahead: bool = True

    def __post_init__(self):
        if not isinstance(self.prepare_ahead, bool):
            raise ConfigError("[jobs] prepare_ahead must be true or false")
        for name in ("workers", "max_tries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"[jobs] {name} must be an integer >= 1, not {v!r}")


@dataclass(frozen=True)
class ServiceConfig:
    """``[service]``: heartbeat (systemd watchdog and status line) and log level."""

    heartbeat_seconds: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self):
        _positive("service", heartbeat_seconds=self.heartbeat_seconds)
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"[service] log_level must be DEBUG, INFO, WARNING or ERROR, "
                              f"not {self.log_level!r}")


@dataclass(frozen=True)
class QuicklookConfig:
    """``[quicklook]``: QA measurements, pictures and the night summary page."""

    qa: bool = True
    pictures: bool = True
    summary: bool = True

    def __post_init__(self):
        for name in ("qa", "pictures", "summary"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"[quicklook] {name} must be true or false")


_SECTIONS = {"DatabaseConfig": DatabaseConfig, "PathsConfig": PathsConfig,
             "WatchConfig": WatchConfig, "SequencesConfig": SequencesConfig,
             "JobsConfig": JobsConfig, "ServiceConfig": ServiceConfig,
             "QuicklookConfig": QuicklookConfig}


@dataclass(frozen=True)
class Config:
    """The whole configuration (sections as attributes)."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    sequences: SequencesConfig = field(default_factory=SequencesConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    quicklook: QuicklookConfig = field(default_factory=QuicklookConfig)

    def replace(self, section: str, **values) -> Config:
        """Return a copy with some keys of one section replaced (command-line overrides)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(
            getattr(self, section), **values)})


def _build(cls, data, where):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _SECTIONS.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = _build(sub, value, f"{where}[{name}]") if sub else value
    return cls(**kwargs)


def load_config(path=None) -> Config:
    """Load and validate a TOML configuration file (None gives the defaults).

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown keys or invalid values.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _build(Config, data, str(path))


def resolve_database(database=None, config=None) -> str:
    """Where the calibration database is: ``-d`` first, then the config file, then the default."""
    if database:
        return str(database)
    return load_config(config).database.url
