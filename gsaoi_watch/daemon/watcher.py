"""Watching the raw directory: watchdog handler, arrival gate, catch-up scan.

The watchdog handler only puts :class:`~gsaoi_watch.daemon.events.FileNoticed` events on a
queue and never raises (an exception in
a handler silently kills the observer thread).  The :class:`ArrivalGate`, owned by the
engine thread, decides when a file has completely arrived: closed after writing (inotify)
or with size and mtime unchanged for ``settle`` seconds, and then readable as a complete
GSAOI frame.  Temporary names (dot files, ``*.tmp``, rsync partials) wait for their rename.

Only regular files are taken.  A symbolic link in the raw directory is never followed
(wherever it points, inside the directory or out of it): it is ignored, with one line
naming the link, never its target.  A FIFO, device or directory is ignored as well.  A file
whose name is not valid UTF-8 or holds a control or other invisible character (a newline,
an escape sequence, a right-to-left override) is quarantined with the reason, its name
escaped in the log line (:func:`gsaoi_watch.logs.log_name`): such a name could forge or hide
log lines wherever it is written, so it is refused at the door; renamed, the file is taken.
Non-ASCII letters and spaces are fine: those frames are ingested, their products named
after the file's safe name (:func:`gsaoi_watch.data.names.safe_name`).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from gsaoi_watch.daemon.events import FileNoticed
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import FrameError
from gsaoi_watch.logs import log_name

__all__ = ["ArrivalGate", "QueueingHandler", "is_candidate", "is_network_mount",
           "make_observer", "name_problem", "scan_directory"]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.bz2", ".fits.fz")
NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "fuse.sshfs", "9p", "afs",
              "glusterfs", "lustre", "gpfs", "ceph"}


def is_candidate(path: str | bytes | os.PathLike[str]) -> bool:
    """True for a name that may be a raw frame; temporary names are not (yet) candidates."""
    name = os.path.basename(str(path))
    if name.startswith(".") or name.startswith("~") or name.endswith((".tmp", ".part",
                                                                       ".partial", "~")):
        return False
    return name.lower().endswith(FITS_SUFFIXES)


class QueueingHandler(FileSystemEventHandler):
    """watchdog handler that enqueues :class:`FileNoticed` events; never raises."""

    def __init__(self, events: queue.Queue[Any]) -> None:
        super().__init__()
        self.events = events

    def _put(self, path: str | bytes, *, closed: bool) -> None:
        try:
            if is_candidate(path):
                self.events.put(FileNoticed(os.fsdecode(path), closed=closed))
        except Exception:  # noqa: BLE001 -- a handler must never raise
            log.exception("watch handler failed on %s", path)

    def on_created(self, event: FileSystemEvent) -> None:  # noqa: D102
        if not event.is_directory:
            self._put(event.src_path, closed=False)

    def on_modified(self, event: FileSystemEvent) -> None:  # noqa: D102
        if not event.is_directory:
            self._put(event.src_path, closed=False)

    def on_closed(self, event: FileSystemEvent) -> None:  # noqa: D102
        if not event.is_directory:
            self._put(event.src_path, closed=True)

    def on_moved(self, event: FileSystemEvent) -> None:  # noqa: D102  (rsync and atomic writers rename into place)
        if not event.is_directory:
            self._put(event.dest_path, closed=True)


def is_network_mount(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is on a network file system (inotify misses remote writes there)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(
                        parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
    except OSError:
        return False
    return fstype in NETWORK_FS


def make_observer(directory: str | os.PathLike[str], events: queue.Queue[Any], *,
                  polling: bool = False,
                  poll_interval: float = 1.0) -> tuple[BaseObserver, bool]:
    """Build (not start) a watchdog observer on ``directory``.

    inotify by default; a polling observer when asked or when the directory is on a
    network mount.  Returns the observer and whether it polls.
    """
    use_polling = polling or is_network_mount(directory)
    observer = PollingObserver(timeout=poll_interval) if use_polling else Observer()
    observer.schedule(QueueingHandler(events), str(directory), recursive=False)
    return observer, use_polling


def name_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a raw file's name is refused, or None: not UTF-8, or not printable as it is."""
    name = os.path.basename(os.fspath(path))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename the file to have it reduced"
    if not name.isprintable():
        return ("file name holds a control or invisible character: rename the file to "
                "have it reduced")
    return None


def scan_directory(directory: str | os.PathLike[str]) -> list[str]:
    """Candidate files already in ``directory`` (start-up catch-up and periodic rescan).

    Symbolic links and anything but regular files are left out (never followed).
    """
    try:
        with os.scandir(directory) as it:
            entries = sorted((e for e in it if is_candidate(e.name)), key=lambda e: e.name)
            return [str(Path(directory) / e.name) for e in entries
                    if not e.is_symlink() and e.is_file(follow_symlinks=False)]
    except OSError as exc:
        log.error("cannot list %s: %s", log_name(directory), exc)
        return []


@dataclass
class _Pending:
    size: int
    mtime: float
    since: float
    closed: bool = False
    first: float = 0.0


@dataclass
class ArrivalGate:
    """Decides when files have completely arrived.

    Parameters
    ----------
    settle : float
        Seconds a file's size and mtime must stay unchanged (polling, or no close event).
    give_up : float
        Seconds after which a file that still does not parse is quarantined (truncated).
    clock : callable
        Time source (injected in tests).
    """

    settle: float = 2.0
    give_up: float = 120.0
    clock: Callable[[], float] = time.monotonic
    pending: dict[str, _Pending] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)  # links and other non-files, said once
    refused: set[str] = field(default_factory=set)  # names refused (quarantined once)

    def notice(self, path: str | os.PathLike[str], *, closed: bool = False) -> None:
        """Record an event for ``path`` (re-arms the settle timer if the file changed).

        A symbolic link or another non-regular file is ignored (one log line); a refused
        name (:func:`name_problem`) is examined once.
        """
        path = str(path)
        if path in self.refused:
            return
        st = self._regular(path)
        if st is None:
            self.pending.pop(path, None)  # deleted, renamed away, or not a regular file
            return
        key = (st.st_size, st.st_mtime)
        now = self.clock()
        old = self.pending.get(path)
        if path in self.done and old is None:
            if closed:  # re-written after being accepted: a new version
                self.done.discard(path)
            else:
                return
        if old is None or (old.size, old.mtime) != key:
            self.pending[path] = _Pending(st.st_size, st.st_mtime, now, closed,
                                          old.first if old else now)
        elif closed:
            old.closed = True

    def poll(self) -> tuple[list[tuple[str, FrameInfo]], list[tuple[str, str]]]:
        """Return ``(ready, rejected)``: arrived frames (path, FrameInfo) and (path, problem).

        A file is examined once it was closed after writing or has been stable for
        ``settle`` seconds; it must then read as a complete GSAOI frame.  A file that looks
        truncated keeps waiting until ``give_up`` seconds after it was first seen.
        """
        ready, rejected = [], []
        now = self.clock()
        for path, p in list(self.pending.items()):
            st = self._regular(path)  # lstat again: a file may be replaced by a link
            if st is None:
                del self.pending[path]
                continue
            if (st.st_size, st.st_mtime) != (p.size, p.mtime):
                self.pending[path] = _Pending(st.st_size, st.st_mtime, now, False, p.first)
                continue
            if not p.closed and now - p.since < self.settle:
                continue
            problem = name_problem(path)
            if problem is not None:
                del self.pending[path]
                self.refused.add(path)
                rejected.append((path, problem))
                continue
            try:
                info = read_frame_info(path)
            except FrameError as exc:
                if ("truncated" in exc.problem or "empty" in exc.problem) and \
                        now - p.first < self.give_up:
                    p.closed = False
                    p.since = now
                    continue
                del self.pending[path]
                self.done.add(path)
                rejected.append((path, exc.problem))
                continue
            del self.pending[path]
            self.done.add(path)
            ready.append((path, info))
        return ready, rejected

    def _regular(self, path: str) -> os.stat_result | None:
        """The file's own status (links not followed) if it is a regular file, else None.

        A symbolic link, FIFO, device or directory is logged once, by its own name (never
        a link's target), and ignored.
        """
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISREG(st.st_mode):
            return st
        if path not in self.ignored:
            self.ignored.add(path)
            what = "a symbolic link (not followed)" if stat.S_ISLNK(st.st_mode) else \
                "not a regular file"
            log.info("frame=%s ignored: %s", log_name(os.path.basename(path)), what)
        return None
