"""Log handlers and format for the daemon, the command line and the workers.

The daemon logs to standard error (journald) and to a log file (:func:`setup_logging`;
``<output_dir>/gsaoi-watch.log`` unless configured: :func:`default_log_file`).  Lines logged
in worker processes reach the same handlers through a queue: :func:`start_worker_logging` in
the daemon starts a :class:`logging.handlers.QueueListener` on the root handlers, and
:func:`worker_log_initializer` (the pool's ``initializer``) sends every record of a worker
to that queue.  It works with the fork and forkserver start methods alike.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.context
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsaoi_watch.malloc import limit_arenas

__all__ = ['DEFAULT_LOG_NAME', 'LOG_FORMAT', 'WorkerLogging', 'default_log_file', 'log_name',
           'setup_logging', 'start_worker_logging', 'worker_log_initializer']

#: The log file's name in the output directory when none is configured.
DEFAULT_LOG_NAME = "gsaoi-watch.log"


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


def default_log_file(log_file: str, output_dir: str | os.PathLike[str]) -> str:
    """The log file to write: ``log_file`` if set, else ``<output_dir>/gsaoi-watch.log``."""
    return log_file or str(Path(output_dir) / DEFAULT_LOG_NAME)


def setup_logging(level: str = "INFO", log_file: str | os.PathLike[str] = "") -> None:
    """Log to standard error (journald) and, if given, a WatchedFileHandler (logrotate).

    The file is UTF-8 (undecodable characters backslash-escaped, never a logging error) and
    created with the mode the process umask gives, its directory too.
    """
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(
            log_file, encoding="utf-8", errors="backslashreplace"))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)


@dataclass
class WorkerLogging:
    """The daemon's side of worker logging: the queue and the listener draining it.

    Attributes
    ----------
    queue : multiprocessing.Queue
        Where workers put their records.
    listener : logging.handlers.QueueListener
        Hands every record to the daemon's handlers (those of the root logger when started).
    level : int
        The level workers log at.
    """

    queue: Any
    listener: logging.handlers.QueueListener
    level: int

    @property
    def initargs(self) -> tuple[Any, int]:
        """``initargs`` of the pool whose ``initializer`` is :func:`worker_log_initializer`."""
        return (self.queue, self.level)

    def stop(self) -> None:
        """Drain what workers sent, then stop the listener (after the pool is shut down)."""
        self.listener.stop()


def start_worker_logging(context: multiprocessing.context.BaseContext | None = None,
                         level: int | None = None) -> WorkerLogging:
    """Start relaying the log records of worker processes to this process's handlers.

    Call it after :func:`setup_logging`, before the pool is made::

        relay = start_worker_logging(ctx)
        pool = ProcessPoolExecutor(workers, mp_context=ctx,
                                   initializer=worker_log_initializer,
                                   initargs=relay.initargs)
        ...
        pool.shutdown(); relay.stop()

    Parameters
    ----------
    context : multiprocessing context, optional
        The pool's (its queue is made from it); default the default context.
    level : int, optional
        The level workers log at (default: the root logger's).
    """
    ctx = context or multiprocessing.get_context()
    queue = ctx.Queue()
    root = logging.getLogger()
    listener = logging.handlers.QueueListener(queue, *root.handlers,
                                              respect_handler_level=True)
    listener.start()
    return WorkerLogging(queue, listener, root.level if level is None else level)


def worker_log_initializer(queue: Any, level: int = logging.INFO) -> None:
    """The pool's ``initializer``: this worker's records go to the daemon through ``queue``.

    Handlers inherited from the parent (a forked worker has the daemon's stream and file
    handlers) are removed, so that every line is written once, by the daemon.
    """
    limit_arenas()  # a worker reduces full-size frames with threads: see gsaoi_watch.malloc
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(queue))
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
