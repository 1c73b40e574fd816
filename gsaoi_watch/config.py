"""Configuration: frozen dataclasses loaded from TOML, every value checked when it is loaded.

An unknown section or key, a value of the wrong type, a number that is not finite or lies
outside its documented range, an unsupported database URL scheme: each is a
:class:`~gsaoi_watch.errors.ConfigError` with one line naming the file, the section and the
key (``bad.toml: [sequences] idle_timeout must be a finite number ..., not inf``).  The same
checks apply to command-line overrides (:meth:`Config.replace`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsaoi_watch.errors import ConfigError

__all__ = ["DATABASE_SCHEMES", "DEFAULT_DATABASE", "LOG_LEVELS", "Config", "DatabaseConfig",
           "HttpConfig", "JobsConfig", "PathsConfig", "QuicklookConfig", "SequencesConfig",
           "ServiceConfig", "WatchConfig", "load_config", "parse_address", "resolve_database"]

#: Where the calibration database lives when neither -d nor a config file says: the working
#: directory, as DRAGONS' local calibration manager does.
DEFAULT_DATABASE = "cal_manager.db"

#: Database URL schemes gsaoi_watch supports (a plain path is a SQLite file).
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")

#: Log level names accepted by ``[service] log_level`` (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_DAY = 86400.0


def _range(lo: float, hi: float, *, open_low: bool = False) -> dict[str, Any]:
    """Field metadata: the value must lie in [lo, hi] (or (lo, hi] with ``open_low``)."""
    return {"range": (lo, hi, open_low)}


def _type_name(value: Any) -> str:
    return type(value).__name__


class _Section:
    """Checks every field of a section against its annotation and ``range`` metadata."""

    _section = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            checked = _check_value(self._section, f.name, str(f.type), value,
                                   f.metadata.get("range"))
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self._check()

    def _check(self) -> None:
        """Checks between keys of a section (overridden where there are any)."""

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"[{self._section}] {key} {problem}")


def _check_value(section: str, key: str, kind: str, value: Any,
                 bounds: tuple[float, float, bool] | None) -> Any:
    """The value converted to its field type, or a ConfigError naming section and key."""
    where = f"[{section}] {key}"
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {_type_name(value)} {value!r}")
        if "\0" in value:
            raise ConfigError(f"{where} must not contain a NUL character")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {_type_name(value)} {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, not {_type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        value = float(value)
    if bounds is not None:
        lo, hi, open_low = bounds
        low_ok = value > lo if open_low else value >= lo
        if not (low_ok and value <= hi):
            interval = f"{'(' if open_low else '['}{lo:g}, {hi:g}]"
            raise ConfigError(f"{where} must be in {interval}, not {value!r}")
    return value


def _check_database_url(url: str) -> None:
    """A non-empty SQLite path, or a URL whose scheme is one of :data:`DATABASE_SCHEMES`."""
    if not url.strip():
        raise ConfigError("[database] url must not be empty")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in DATABASE_SCHEMES:
            raise ConfigError(f"[database] url: scheme {scheme!r} is not supported; use a "
                              f"SQLite file path or one of "
                              f"{', '.join(s + '://' for s in DATABASE_SCHEMES)}")


@dataclass(frozen=True)
class DatabaseConfig(_Section):
    """``[database]``: where the calibration database is.

    Attributes
    ----------
    url : str
        A SQLite file path (relative to the working directory) or a database URL whose scheme
        is ``sqlite``, ``postgresql`` or ``postgres`` (e.g. ``postgresql://user@host/gsaoi``).
    """

    _section = "database"
    url: str = DEFAULT_DATABASE

    def _check(self) -> None:
        _check_database_url(self.url)


@dataclass(frozen=True)
class PathsConfig(_Section):
    """``[paths]``: where raw frames arrive, where products go, where the log is written."""

    _section = "paths"
    raw_dir: str = "raw"
    output_dir: str = "reduced"
    log_file: str = ""

    def _check(self) -> None:
        for key in ("raw_dir", "output_dir"):
            if not getattr(self, key).strip():
                raise self._fail(key, "must not be empty")
        if os.path.normpath(self.raw_dir) == os.path.normpath(self.output_dir):
            raise self._fail("output_dir", f"must differ from raw_dir ({self.raw_dir!r}): "
                                           "products written there would be ingested as frames")


@dataclass(frozen=True)
class WatchConfig(_Section):
    """``[watch]``: how new files are noticed and judged complete."""

    _section = "watch"
    polling: bool = False
    poll_interval: float = field(default=1.0, metadata=_range(0.05, 3600.0))
    settle_seconds: float = field(default=2.0, metadata=_range(0.0, 3600.0, open_low=True))
    give_up_seconds: float = field(default=120.0, metadata=_range(0.0, 7 * _DAY, open_low=True))
    rescan_seconds: float = field(default=60.0, metadata=_range(0.1, _DAY))

    def _check(self) -> None:
        if self.give_up_seconds <= self.settle_seconds:
            raise self._fail("give_up_seconds", f"({self.give_up_seconds:g}) must be longer "
                                                f"than settle_seconds ({self.settle_seconds:g})")


@dataclass(frozen=True)
class SequencesConfig(_Section):
    """``[sequences]``: when a sequence is complete, how long science waits for a flat."""

    _section = "sequences"
    idle_timeout: float = field(default=900.0, metadata=_range(0.0, 7 * _DAY, open_low=True))
    flat_wait: float = field(default=1800.0, metadata=_range(0.0, 7 * _DAY, open_low=True))
    tick_seconds: float = field(default=1.0, metadata=_range(0.05, 60.0))
    min_quiet: float = field(default=10.0, metadata=_range(0.0, _DAY, open_low=True))


@dataclass(frozen=True)
class JobsConfig(_Section):
    """``[jobs]``: the reduction worker pool."""

    _section = "jobs"
    workers: int = field(default=1, metadata=_range(1, 256))
    max_tries: int = field(default=3, metadata=_range(1, 100))
    max_crashes: int = field(default=3, metadata=_range(1, 100))
    prepare_ahead: bool = True
    streaming: bool = True


@dataclass(frozen=True)
class ServiceConfig(_Section):
    """``[service]``: heartbeat (systemd watchdog and status line) and log level."""

    _section = "service"
    heartbeat_seconds: float = field(default=10.0, metadata=_range(0.1, 3600.0))
    log_level: str = "INFO"

    def _check(self) -> None:
        level = self.log_level.strip().upper()
        if level not in LOG_LEVELS:
            raise self._fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}, "
                                          f"not {self.log_level!r}")
        object.__setattr__(self, "log_level", level)


@dataclass(frozen=True)
class QuicklookConfig(_Section):
    """``[quicklook]``: QA measurements, pictures and the night summary page."""

    _section = "quicklook"
    qa: bool = True
    pictures: bool = True
    summary: bool = True


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8777`` for an IPv6 host) as (host, port).

    Raises
    ------
    ConfigError
        No colon, an empty host, a port that is not an integer in [0, 65535].
    """
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ConfigError(f"[http] address must be HOST:PORT (e.g. 127.0.0.1:8777), "
                          f"not {address!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[http] address: the port must be an integer in [0, 65535], "
                          f"not {port!r}")
    return host, int(port)


@dataclass(frozen=True)
class HttpConfig(_Section):
    """``[http]``: the live night page the daemon serves (off by default)."""

    _section = "http"
    enabled: bool = False
    address: str = "127.0.0.1:8777"

    def _check(self) -> None:
        parse_address(self.address)


@dataclass(frozen=True)
class StackConfig(_Section):
    """``[stack]``: the distortion-corrected stack of every science sequence."""

    _section = "stack"
    reference_catalog: str = ""

    def _check(self) -> None:
        if self.reference_catalog and not self.reference_catalog.strip():
            raise self._fail("reference_catalog", "must be a file name or empty")


_SECTIONS: dict[str, type] = {
    "database": DatabaseConfig, "paths": PathsConfig, "watch": WatchConfig,
    "sequences": SequencesConfig, "jobs": JobsConfig, "service": ServiceConfig,
    "quicklook": QuicklookConfig, "http": HttpConfig, "stack": StackConfig}


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
    http: HttpConfig = field(default_factory=HttpConfig)
    stack: StackConfig = field(default_factory=StackConfig)

    def replace(self, section: str, **values: Any) -> Config:
        """Return a copy with some keys of one section replaced (command-line overrides).

        Raises
        ------
        ConfigError
            Unknown section or key, or an invalid value (the same checks as at load).
        """
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"unknown section [{section}]; valid: {', '.join(_SECTIONS)}")
        _reject_unknown(cls, values, f"[{section}]")
        return dataclasses.replace(self, **{section: dataclasses.replace(
            getattr(self, section), **values)})


def _reject_unknown(cls: type, data: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(names))}")


def _build(data: Any, source: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(_SECTIONS))}")
    sections = {}
    for name, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table, not "
                              f"{_type_name(values)} {values!r}")
        cls = _SECTIONS[name]
        _reject_unknown(cls, values, f"{source}[{name}]")
        try:
            sections[name] = cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return Config(**sections)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a TOML configuration file (None gives the defaults).

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown sections or keys, or an invalid value:
        one line naming the file, the section and the key.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _build(data, str(path))


def resolve_database(database: str | os.PathLike[str] | None = None,
                     config: str | os.PathLike[str] | None = None) -> str:
    """Where the calibration database is: ``-d`` first, then the config file, then the default.

    Raises
    ------
    ConfigError
        An invalid configuration file, or a ``-d`` value that is not a supported database.
    """
    if database:
        return DatabaseConfig(url=os.fspath(database)).url
    return load_config(config).database.url
