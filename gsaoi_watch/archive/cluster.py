"""The Dask cluster the archive runs on: a LocalCluster of processes, or a scheduler's address.

``dask.distributed`` is a dependency for this alone: it runs the daemon's job functions
(paths and plain parameters in, product paths out) on the processes of one machine or the
workers of many, reschedules the job of a lost worker on another, and speaks the
``concurrent.futures`` protocol (``submit``, ``add_done_callback``, ``result``,
``exception``) the daemon's engine uses, so the engine records outcomes as it always does.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin

__all__ = ["DaskExecutor", "QuietWorkers", "open_client"]


class QuietWorkers(WorkerPlugin):
    """Worker plugin: the package logs only errors on workers (also on a restarted worker).

    The local cluster's own loggers are silenced too (``silence_logs``): a worker that loses
    its scheduler on Ctrl-C says so with a traceback, which the user has no use for.

    What a job warns about comes back in its result and is logged once, by the client.
    """

    name = "gsaoi-watch-quiet-workers"

    def setup(self, worker: Any) -> None:
        """Lower the package's log level; leave Ctrl-C to the client.

        A terminal's Ctrl-C reaches the whole process group: the client stops and closes
        the cluster, which ends its workers; a worker interrupted by it would only print
        a traceback.
        """
        logging.getLogger("gsaoi_watch").setLevel(logging.ERROR)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class DaskExecutor:
    """The engine's executor on a ``distributed.Client``: impure tasks, bounded retries.

    Parameters
    ----------
    client : distributed.Client
    retries : int
        Times a task is run again when it fails or its worker is lost (``max_tries - 1``).
    """

    def __init__(self, client: Any, *, retries: int) -> None:
        self.client = client
        self.retries = retries

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its (distributed) future.

        ``pure=False``: a job run again with the same parameters is a new task, never the
        result of the earlier one.
        """
        return self.client.submit(fn, *args, pure=False, retries=self.retries, **kwargs)


def open_client(scheduler: str = "local", *, workers: int = 2,
                max_tries: int = 3) -> tuple[Any, Any]:
    """Connect to a scheduler, or start a LocalCluster of ``workers`` single-thread processes.

    The local scheduler's web server takes any free port (a second cluster on the machine
    must not find the default port taken).  A lost worker's task is run elsewhere up to
    ``max_tries - 1`` times (``distributed.scheduler.allowed-failures``, set for a local
    cluster; a remote scheduler's own setting applies there).

    Returns
    -------
    (client, cluster)
        ``cluster`` is None for a remote scheduler; close both when done.
    """
    if scheduler != "local":
        client, cluster = Client(scheduler, timeout="30s"), None
    else:
        with dask.config.set({"distributed.scheduler.allowed-failures": max(0, max_tries - 1),
                              "distributed.worker.daemon": False}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
            client = Client(cluster)
    client.register_plugin(QuietWorkers())
    return client, cluster
