"""Watching the raw directory: watchdog handler, arrival gate, catch-up scan.

The watchdog handler only puts :class:`~gsaoi_watch.daemon.events.FileNoticed` events on a
queue and never raises (an exception in
a handler silently kills the observer thread).  The :class:`ArrivalGate`, owned by the
engine thread, decides when a file has completely arrived: closed after writing (inotify)
or with size and mtime unchanged for ``settle`` seconds, and then readable as a complete
GSAOI frame.  Temporary names (dot files, ``*.tmp``, rsync partials) wait for their rename.
"""

from __future__ import annotations

import logging
import os
import queue
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

__all__ = ["ArrivalGate", "QueueingHandler", "is_candidate", "is_network_mount",
           "make_observer", "scan_directory"]

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


def scan_directory(directory: str | os.PathLike[str]) -> list[str]:
    """Candidate files already in ``directory`` (start-up catch-up and periodic rescan)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        log.error("cannot list %s: %s", directory, exc)
        return []
    return [str(Path(directory) / n) for n in names
            if is_candidate(n) and (Path(directory) / n).is_file()]


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

    def notice(self, path: str | os.PathLike[str], *, closed: bool = False) -> None:
        """Record an event for ``path`` (re-arms the settle timer if the file changed)."""
        path = str(path)
        try:
            st = os.stat(path)
        except OSError:
            self.pending.pop(path, None)  # deleted or renamed away
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
            try:
                st = os.stat(path)
            except OSError:
                del self.pending[path]
                continue
            if (st.st_size, st.st_mtime) != (p.size, p.mtime):
                self.pending[path] = _Pending(st.st_size, st.st_mtime, now, False, p.first)
                continue
            if not p.closed and now - p.since < self.settle:
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
