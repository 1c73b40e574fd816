"""Exception hierarchy: every message names the file (or object) and the problem."""


class GsaoiWatchError(Exception):
    """Base class of all errors raised by gsaoi_watch."""


class FrameError(GsaoiWatchError):
    """A file cannot be used as a GSAOI frame (not FITS, truncated, foreign, malformed)."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ExpressionError(GsaoiWatchError):
    """A dataselect expression is malformed or uses something that is not allowed."""


class ConfigError(GsaoiWatchError):
    """A configuration file or value is invalid."""


class ReductionError(GsaoiWatchError):
    """A frame cannot be reduced (wrong kind, missing keywords, no calibration, too few skies)."""
