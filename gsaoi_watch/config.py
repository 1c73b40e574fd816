"""Configuration: frozen dataclasses loaded from TOML; unknown keys are an error naming them."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gsaoi_watch.errors import ConfigError

__all__ = ["DEFAULT_DATABASE", "Config", "DatabaseConfig", "load_config", "resolve_database"]

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


@dataclass(frozen=True)
class Config:
    """The whole configuration (sections as attributes)."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)


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
        sub = {"DatabaseConfig": DatabaseConfig}.get(ftype if isinstance(ftype, str)
                                                      else getattr(ftype, "__name__", ""))
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
