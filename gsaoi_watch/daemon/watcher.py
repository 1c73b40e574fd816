"""Watching the raw directory: watchdog handler, arrival gate, catch-up scan.

The watchdog handler only puts ``(kind, path)`` on a queue and never raises (an exception in
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
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import FrameError

__all__ = ["ArrivalGate", "QueueingHandler", "is_candidate", "is_network_mount",
           "make_observer", "scan_directory"]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.bz2", ".fits.fz")
NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "fuse.sshfs", "9p", "afs",
              "glusterfs", "lustre", "gpfs", "ceph"}


def is_candidate(path) -> bool:
    """True for a name that may be a raw frame; temporary names are not (yet) candidates."""
    name = os.path.basename(str(path))
    if name.startswith(".") or name.startswith("~") or name.endswith((".tmp", ".part",
                                                                       ".partial", "~")):
        return False
    return name.lower().endswith(FITS_SUFFIXES)


class QueueingHandler(FileSystemEventHandler):
    """watchdog handler that enqueues ``("seen", path)`` or ``("closed", path)``; never raises."""

    def __init__(self, events: queue.Queue):
        super().__init__()
        self.events = events

    def _put(self, kind, path):
        try:
            if is_candidate(path):
                self.events.put((kind, str(path)))
        except Exception:  # noqa: BLE001 -- a handler must never raise
            log.exception("watch handler failed on %s", path)

    def on_created(self, event):  # noqa: D102
        if not event.is_directory:
            self._put("seen", event.src_path)

    def on_modified(self, event):  # noqa: D102
        if not event.is_directory:
            self._put("seen", event.src_path)

    def on_closed(self, event):  # noqa: D102
        if not event.is_directory:
            self._put("closed", event.src_path)

    def on_moved(self, event):  # noqa: D102  (rsync and atomic writers rename into place)
        if not event.is_directory:
            self._put("closed", event.dest_path)


def is_network_mount(path) -> bool:
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


def make_observer(directory, events, *, polling=False, poll_interval=1.0):
    """Build (not start) a watchdog observer on ``directory``.

    inotify by default; a polling observer when asked or when the directory is on a
    network mount.  Returns the observer and whether it polls.
    """
    use_polling = polling or is_network_mount(directory)
    observer = PollingObserver(timeout=poll_interval) if use_polling else Observer()
    observer.schedule(QueueingHandler(events), str(directory), recursive=False)
    return observer, use_polling


def scan_directory(directory):
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
    clock: object = time.monotonic
    pending: dict = field(default_factory=dict)
    done: set = field(default_factory=set)

    def notice(self, path, *, closed=False):
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

    def poll(self):
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
