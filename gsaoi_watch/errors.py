"""Exception hierarchy: every message names the file (or object) and the problem."""

from __future__ import annotations

import os

from gsaoi_watch.logs import log_name


class GsaoiWatchError(Exception):
    """Base class of all errors raised by gsaoi_watch."""


class FrameError(GsaoiWatchError):
    """A file cannot be used as a GSAOI frame (not FITS, truncated, foreign, malformed).

    The message shows the path escaped (:func:`gsaoi_watch.logs.log_name`): a newline or a
    control character in a file name cannot forge a log line.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{log_name(self.path)}: {problem}")

    def __reduce__(self):
        # raised in worker processes: pickled with both arguments, not the message alone
        return (type(self), (self.path, self.problem))


class ExpressionError(GsaoiWatchError):
    """A dataselect expression is malformed or uses something that is not allowed."""


class ConfigError(GsaoiWatchError):
    """A configuration file or value is invalid."""


class ReductionError(GsaoiWatchError):
    """A frame cannot be reduced (wrong kind, missing keywords, no calibration, too few skies)."""


class UnsafePathError(GsaoiWatchError):
    """An output path would lie outside its directory, or a name cannot be made safe."""


class CatalogError(FrameError):
    """An OBJCAT table in a file cannot be used (missing or malformed columns).

    A :class:`FrameError` (the message names the file); callers that can measure the
    frame themselves detect its sources instead.
    """
