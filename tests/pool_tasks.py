"""Tasks for the supervised pool's tests (module-level: picklable by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def square(x: int) -> int:
    """x squared."""
    return x * x


def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


def hold(pid_file: str, seconds: float = 120.0) -> int:
    """Write this process's pid to ``pid_file``, then wait ``seconds``; return the pid."""
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    time.sleep(seconds)
    return os.getpid()


def parent_info() -> tuple[int, int]:
    """(pid, parent pid) of the worker."""
    return os.getpid(), os.getppid()


def raise_reduction_error(message: str) -> None:
    """Raise the deterministic error of a reduction."""
    from gsaoi_watch.errors import ReductionError
    raise ReductionError(message)


def hold_forked(pid_file: str, seconds: float = 120.0) -> int:
    """Fork a child that calls lifeline.die_with_parent and waits; both write their pids."""
    from gsaoi_watch import lifeline
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            lifeline.die_with_parent(parent)
            hold(pid_file + ".child", seconds)
        finally:
            os._exit(0)
    return hold(pid_file, seconds)


def log_info(message: str) -> int:
    """Log ``message`` at INFO in the worker; return the worker's pid."""
    import logging
    logging.getLogger("pool_tasks").info("%s (pid %d)", message, os.getpid())
    return os.getpid()


def hold_until(pid_file: str, release: str, timeout: float = 300.0) -> int:
    """Write this process's pid to ``pid_file``, wait until ``release`` exists; the pid."""
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()


def hold_in_fork_pool(pid_file: str, seconds: float = 300.0) -> int:
    """Run two ``hold`` in a fork Pool whose children call lifeline.die_with_parent.

    The call pipeline/pools.py makes for its strip workers.
    """
    import multiprocessing as mp

    from gsaoi_watch import lifeline
    with mp.get_context("fork").Pool(2, initializer=lifeline.die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
        results = [pool.apply_async(hold, (f"{pid_file}.{i}", seconds)) for i in range(2)]
        hold(pid_file, 0)
        return sum(r.get() for r in results)
