"""Log handlers and format for the daemon, the command line and the workers."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

__all__ = ['log_name', 'setup_logging']

log = logging.getLogger("gsaoi_watch")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def log_name(text: object) -> str:
    r"""A file name (or any text) safe to put in one log line.

    Newlines, carriage returns, tabs, other control characters, undecodable bytes (lone
    surrogates from the file system) and other non-printable characters are written as
    backslash escapes (``\n``, ``\x1b``, ``\udce9``, ``\u202e``), so a file name cannot
    forge or hide a log line; printable text, non-ASCII letters included, is kept.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


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

