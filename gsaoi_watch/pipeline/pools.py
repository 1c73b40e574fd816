"""Process pools of the pipeline: how the pure steps of the reduction core run in parallel.

The reduction core exposes independent pieces of work (for the stack: one frame to
prepare, one strip of output rows to resample and combine) and takes a *mapper*, a
function with the signature of the builtin :func:`map`, to run them.  This module gives
the mappers that fork: forked workers share the inputs with the parent process
copy-on-write (nothing is pickled on the way in, only the results on the way back), so the
memory is the inputs once plus one piece of work per worker.

The forked workers run under a :class:`concurrent.futures.ProcessPoolExecutor` (fork
context), not a :class:`multiprocessing.pool.Pool`: a child killed by the OOM killer makes
the executor raise ``BrokenProcessPool`` (the daemon counts it as a worker crash and runs
the job again), where ``Pool.imap`` would wait for it forever.  Each child ends with its
parent (:func:`gsaoi_watch.lifeline.die_with_parent`), so a killed worker or daemon leaves
no strip worker writing behind it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from gsaoi_watch.lifeline import die_with_parent
from gsaoi_watch.reduction.source import Mapper

__all__ = ["Mapper", "can_fork", "fork_map", "fork_mapper"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: What forked workers read, by job number (set just before the fork, removed after).
_FORK_STATE: dict[int, tuple[Callable[[Any], Any], Sequence[Any]]] = {}
_JOB_NUMBERS = itertools.count()


def _run(job: int, index: int) -> Any:
    fn, items = _FORK_STATE[job]
    return fn(items[index])


def can_fork(workers: int, n: int) -> bool:
    """True if ``n`` pieces of work can run in ``workers`` forked processes here.

    Not without the fork start method, nor from a daemonic process (which may not have
    children), nor for a single worker or a single piece of work.
    """
    return (workers > 1 and n > 1 and "fork" in mp.get_all_start_methods()
            and not mp.current_process().daemon)


def fork_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order, computed in forked processes.

    ``fn`` need not be picklable (the workers inherit it); its results must be.  Runs in
    this process when :func:`can_fork` says no.
    """
    items = list(items)
    if not can_fork(workers, len(items)):
        yield from map(fn, items)
        return
    job = next(_JOB_NUMBERS)
    _FORK_STATE[job] = (fn, items)
    try:
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("fork"),
                                 initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            yield from pool.map(functools.partial(_run, job), range(len(items)))
    finally:
        del _FORK_STATE[job]


def fork_mapper(workers: int) -> Mapper:
    """A mapper running its work in ``workers`` forked processes (1: in this process)."""
    if workers <= 1:
        return map
    return functools.partial(fork_map, workers=workers)
