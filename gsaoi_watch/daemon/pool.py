"""A supervised process pool: a worker that dies is replaced, its tasks go on.

:class:`SupervisedPool` keeps the :class:`concurrent.futures.Executor` protocol the engine
uses (``submit`` returns a :class:`~concurrent.futures.Future`; ``shutdown``) around a
:class:`~concurrent.futures.ProcessPoolExecutor`.  When a worker process dies (``kill -9``,
the OOM killer, a segmentation fault) the inner pool breaks and fails every task it held
with ``BrokenProcessPool``.  The supervised pool then starts a fresh inner pool and:

- resubmits, unseen by the caller, every task that was only queued or that ran in another
  worker (those were victims: the broken pool ends all its workers);
- fails the future of the task whose worker died with :class:`WorkerCrashed` (the signal or
  exit status, the pid), so that the caller can count the crash, separately from the job's
  own failures, and run it again or give it up.

Which task ran in which worker is known from a small queue each worker writes to when it
starts a task.  Tasks are the caller's functions and arguments (module-level functions,
paths and plain parameters): nothing else is pickled, so a ``dask.distributed`` Client stays
a drop-in executor for the engine.

Every worker first calls :func:`gsaoi_watch.lifeline.die_with_parent`: it dies with the
forkserver, which dies with the daemon, and watches the daemon's pid as well.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from gsaoi_watch import lifeline

__all__ = ["SupervisedPool", "WorkerCrashed", "describe_exit"]

log = logging.getLogger(__name__)


class WorkerCrashed(Exception):
    """The worker process running a task died: not the task's fault.

    Parameters
    ----------
    how : str
        How the worker ended, e.g. ``signal 9`` or ``exit status 1``
        (:func:`describe_exit`).
    pid : int, optional
        The worker's process id.
    """

    def __init__(self, how: str, pid: int | None = None) -> None:
        self.how = how
        self.pid = pid
        super().__init__(f"worker died ({how})" + (f", pid {pid}" if pid else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.how, self.pid))


def describe_exit(exitcode: int | None) -> str:
    """``signal 9`` for a process killed by SIGKILL, ``exit status 1``, or ``unknown``."""
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit status {exitcode}"


# --- in the worker ---------------------------------------------------------------------------
_started: Any = None  # the SimpleQueue of (task id, pid) of this worker's pool


def _worker_init(started: Any, daemon_pid: int, initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...]) -> None:
    """Each worker's initializer: die with the daemon, then the caller's initializer."""
    global _started
    lifeline.die_with_parent(ancestor=daemon_pid)
    _started = started
    if initializer is not None:
        initializer(*initargs)


def _run_task(task_id: int, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """What the worker runs: say which task starts in which process, then run it."""
    if _started is not None:
        _started.put((task_id, os.getpid()))
    return fn(*args, **kwargs)


# --- in the daemon ---------------------------------------------------------------------------
@dataclass
class _Task:
    id: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outer: Future[Any]
    generation: int = -1
    inner: Future[Any] | None = field(default=None, repr=False)


@dataclass
class _Generation:
    """One inner pool and what is known about its end."""

    number: int
    pool: ProcessPoolExecutor
    started: Any
    processes: dict[int, Any] = field(default_factory=dict)
    culprits: dict[int, str] | None = None  # task id -> how its worker died, once broken
    running: dict[int, int] = field(default_factory=dict)  # task id -> pid


class SupervisedPool:
    """A process pool that replaces itself when a worker dies (see the module docstring).

    Parameters
    ----------
    max_workers : int
        Worker processes.
    mp_context : multiprocessing context, optional
        Default: forkserver (forking a daemon that runs threads can copy a held lock).
    initializer, initargs
        Run in each worker after it has tied its life to the daemon's (as for
        :class:`~concurrent.futures.ProcessPoolExecutor`).
    """

    def __init__(self, max_workers: int, *,
                 mp_context: multiprocessing.context.BaseContext | None = None,
                 initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self.max_workers = max_workers
        self.context = mp_context or multiprocessing.get_context("forkserver")
        self.initializer = initializer
        self.initargs = initargs
        self.crashes = 0  # pools replaced so far
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._tasks: dict[int, _Task] = {}
        self._closed = False
        self._old: dict[int, _Generation] = {}  # the last few broken pools
        self._gen = self._new_generation(0)

    # --- public ----------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its future."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new tasks after shutdown")
            task = _Task(next(self._ids), fn, args, kwargs, Future())
            self._tasks[task.id] = task
            self._send(task)
            return task.outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool; with ``cancel_futures`` the tasks not finished are cancelled.

        The worker processes are terminated (not waited for) unless ``wait``: a running
        reduction is abandoned, and run again after a restart.
        """
        with self._lock:
            self._closed = True
            gen = self._gen
            if cancel_futures:
                for task in list(self._tasks.values()):
                    task.outer.cancel()
                self._tasks.clear()
        procs = list((getattr(gen.pool, "_processes", None) or {}).values())
        gen.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if not wait:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(timeout=5)

    def worker_pids(self) -> list[int]:
        """The process ids of the current pool's workers (started so far)."""
        return list((getattr(self._gen.pool, "_processes", None) or {}).keys())

    # --- inside ----------------------------------------------------------------------------
    def _new_generation(self, number: int) -> _Generation:
        started = self.context.SimpleQueue()  # a new one: a killed writer may hold the old lock
        pool = ProcessPoolExecutor(
            max_workers=self.max_workers, mp_context=self.context, initializer=_worker_init,
            initargs=(started, os.getpid(), self.initializer, self.initargs))
        return _Generation(number, pool, started)

    def _send(self, task: _Task) -> None:
        """Submit a task to the current inner pool (under the lock)."""
        gen = self._gen
        task.generation = gen.number
        try:
            task.inner = gen.pool.submit(_run_task, task.id, task.fn, task.args, task.kwargs)
        except BrokenProcessPool:  # broke since: the callbacks of its tasks replace it
            self._replace(gen)
            self._send(task)
            return
        spawned = set(getattr(gen.pool, "_processes", None) or {}) - set(gen.processes)
        gen.processes.update(getattr(gen.pool, "_processes", None) or {})
        if spawned:
            _watch_new_workers(gen.pool)
        task.inner.add_done_callback(functools.partial(self._inner_done, task))

    def _inner_done(self, task: _Task, inner: Future[Any]) -> None:
        """An inner future ended (in the inner pool's thread): pass it on, or recover."""
        with self._lock:
            if inner is not task.inner:
                return
            if inner.cancelled():
                self._tasks.pop(task.id, None)
                task.outer.cancel()
                return
            exc = inner.exception()
            if isinstance(exc, BrokenProcessPool) and not self._closed:
                self._recover(task)
                return
            self._tasks.pop(task.id, None)
        if not task.outer.set_running_or_notify_cancel():
            return
        if exc is not None:
            task.outer.set_exception(exc)
        else:
            task.outer.set_result(inner.result())

    def _recover(self, task: _Task) -> None:
        """A task of a broken pool: fail it if its worker died, else run it again."""
        gen = self._generation_of(task)
        culprits = self._find_culprits(gen) if gen is not None else {}
        if gen is not None and gen is self._gen:
            self._replace(gen)
        how = culprits.get(task.id)
        if how is None:
            self._send(task)  # a victim (queued, or in another worker): again, unseen
            return
        self._tasks.pop(task.id, None)
        pid = gen.running.get(task.id) if gen is not None else None
        if task.outer.set_running_or_notify_cancel():
            task.outer.set_exception(WorkerCrashed(how, pid))

    def _generation_of(self, task: _Task) -> _Generation | None:
        return self._gen if self._gen.number == task.generation else \
            self._old.get(task.generation)

    def _find_culprits(self, gen: _Generation) -> dict[int, str]:
        """Once per broken pool: which running task's worker died, and how.

        The worker that died first has its exit status when the pool breaks (the pool
        terminates the others only afterwards, with SIGTERM).  A task started in it and not
        finished is the culprit; if none can be named, every started task unfinished is
        (and, if none started, every task of the pool), so that a task that kills its
        worker each time is given up in the end.
        """
        if gen.culprits is not None:
            return gen.culprits
        while True:
            try:
                if gen.started.empty():
                    break
                task_id, pid = gen.started.get()
            except (OSError, EOFError, ValueError):
                break
            gen.running[task_id] = pid
        dead = {pid: proc.exitcode for pid, proc in gen.processes.items()
                if _exitcode(proc) not in (None, -signal.SIGTERM)}
        unfinished = {tid: pid for tid, pid in gen.running.items()
                      if tid in self._tasks and self._tasks[tid].generation == gen.number}
        culprits = {tid: describe_exit(dead[pid]) for tid, pid in unfinished.items()
                    if pid in dead}
        if not culprits:
            how = describe_exit(next(iter(dead.values()), None))
            culprits = {tid: how for tid in unfinished} or {
                tid: how for tid, t in self._tasks.items() if t.generation == gen.number}
        gen.culprits = culprits
        self.crashes += 1
        log.error("a worker process died (%s): a new worker pool replaces it",
                  ", ".join(f"pid {pid} {describe_exit(code)}" for pid, code in dead.items())
                  or "exit status unknown")
        return culprits

    def _replace(self, gen: _Generation) -> None:
        """Start the next inner pool (under the lock; once per broken pool)."""
        if gen is not self._gen:
            return
        self._old[gen.number] = gen
        for number in [n for n in self._old if n < gen.number - 4]:
            del self._old[number]
        self._gen = self._new_generation(gen.number + 1)

        def retire() -> None:  # the broken pool's threads and queues, off the caller's way
            gen.pool.shutdown(wait=True)
            gen.started.close()

        threading.Thread(target=retire, name="gsaoi-watch-broken-pool", daemon=True).start()


def _watch_new_workers(pool: ProcessPoolExecutor) -> None:
    """Make the pool's manager thread watch the workers ``submit`` has just started.

    ``ProcessPoolExecutor.submit`` (CPython 3.11) wakes its manager thread *before* it
    starts a new worker, so the thread can go back to waiting on the old list of worker
    sentinels; a worker started then and killed is not noticed (its task hangs, RUNNING
    for ever) until something else wakes the thread.  Measured: one run in about eight of
    ``tests/test_pool.py`` hung so.  A second wake-up after the start closes the window.
    """
    wakeup = getattr(pool, "_executor_manager_thread_wakeup", None)
    if wakeup is not None:
        try:
            wakeup.wakeup()
        except (OSError, ValueError):  # the pool is shutting down
            pass


def _exitcode(proc: Any) -> int | None:
    try:
        return proc.exitcode
    except (ValueError, AssertionError):  # closed, or not our child
        return None
