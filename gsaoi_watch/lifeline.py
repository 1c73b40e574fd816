"""Processes that die with their parent: worker processes never outlive the daemon.

A reduction worker whose daemon was killed (``kill -9``, the OOM killer, a crash) would go
on reducing and writing products nobody records.  Two guards end it:

- :func:`die_with_parent` asks the Linux kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to
  kill this process the moment its parent exits.  The parent of a pool worker started by
  the forkserver is the forkserver process, which itself exits when the daemon dies (its
  pipe to the daemon reaches end of file); the parent of a forked strip worker is the pool
  worker that forked it.  So the whole tree goes within a moment of the daemon.
- :func:`watch_parent` starts a daemon thread that ends the process (``os._exit``) when its
  parent changes (it was re-parented: the parent died) or a named ancestor (the daemon) is
  gone.  It covers systems without ``prctl`` and a parent thread that exits (the kernel
  signal follows the parent *thread*).

Call :func:`die_with_parent` first thing in a freshly forked or spawned child, e.g. in a
pool's ``initializer`` or at the top of the function a forked child runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading

__all__ = ["EXIT_STATUS", "die_with_parent", "set_parent_death_signal", "watch_parent"]

log = logging.getLogger(__name__)

#: The exit status of a process ended by :func:`watch_parent` (128 + SIGKILL, as a kill).
EXIT_STATUS = 128 + signal.SIGKILL

#: linux/prctl.h
_PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux).

    Returns
    -------
    bool
        True if the kernel accepted it; False where ``prctl`` is not available.
    """
    libc = _load_libc()
    if libc is None:
        return False
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    return True


def _gone(pid: int) -> bool:
    """True if process ``pid`` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
        return text[text.rindex(b")") + 2:][:1] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def watch_parent(parent: int | None = None, *, ancestor: int | None = None,
                 interval: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process once its parent or ``ancestor`` is gone.

    Parameters
    ----------
    parent : int, optional
        The parent process id expected (default: the current one, ``os.getppid()``); the
        process exits as soon as ``os.getppid()`` differs from it.
    ancestor : int, optional
        Another process (e.g. the daemon, when the parent is the forkserver) whose end
        also ends this process.
    interval : float
        Seconds between checks.

    Returns
    -------
    threading.Thread
        The started watcher thread.
    """
    expected = os.getppid() if parent is None else parent

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if os.getppid() != expected or (ancestor is not None and _gone(ancestor)):
                os._exit(EXIT_STATUS)

    thread = threading.Thread(target=watch, name="gsaoi-watch-lifeline", daemon=True)
    thread.start()
    return thread


def die_with_parent(parent: int | None = None, *, ancestor: int | None = None,
                    watch: bool = True) -> None:
    """End this process when its parent (or ``ancestor``) dies: kernel signal and watcher.

    Call it first thing in a child process.  If the parent is already gone (it died
    between the fork and this call, so the kernel signal would never come) the process
    exits at once.

    Parameters
    ----------
    parent : int, optional
        The pid of the process that started this one, taken before the fork (default:
        ``os.getppid()`` now).
    ancestor : int, optional
        A further process whose end ends this one (the daemon, seen from a pool worker
        whose parent is the forkserver).
    watch : bool
        Also start the :func:`watch_parent` thread (default).  A child that must not start
        threads (it forks again) can pass False and rely on the kernel signal.
    """
    expected = os.getppid() if parent is None else parent
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != expected or (ancestor is not None and _gone(ancestor)):
        os._exit(EXIT_STATUS)
    if watch:
        watch_parent(expected, ancestor=ancestor)
