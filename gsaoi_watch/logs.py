"""Log handlers and format for the daemon, the command line and the workers."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

__all__ = ['setup_logging']

log = logging.getLogger("gsaoi_watch")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def setup_logging(level="INFO", log_file=""):
    """Log to standard error (journald) and, if given, a WatchedFileHandler (logrotate)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)

