"""The supervised pool with real worker processes: results, a worker killed, orphans."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pool_tasks
import pytest
from faultkit import alive, descendants

from gsaoi_watch.daemon.pool import SupervisedPool, WorkerCrashed, describe_exit
from gsaoi_watch.errors import ReductionError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def read_pid(path, timeout=60):
    wait_until(path.exists, timeout, f"{path.name} to be written")
    return int(path.read_text())


@pytest.fixture
def pool():
    p = SupervisedPool(1)
    yield p
    p.shutdown(wait=False, cancel_futures=True)


def test_results_and_errors_pass_through(pool):
    assert pool.submit(pool_tasks.square, 7).result(timeout=120) == 49
    with pytest.raises(ValueError, match="no skies"):
        pool.submit(pool_tasks.fail, "no skies").result(timeout=60)
    error = pool.submit(pool_tasks.raise_reduction_error, "S1.fits: no EXPTIME")
    with pytest.raises(ReductionError, match="EXPTIME"):
        error.result(timeout=60)
    assert pool.crashes == 0


def test_a_killed_worker_fails_its_task_and_the_pool_goes_on(pool, tmp_path):
    pid_file = tmp_path / "pid"
    held = pool.submit(pool_tasks.hold, str(pid_file), 300)
    queued = pool.submit(pool_tasks.square, 5)  # waits behind it: a victim, run again
    worker = read_pid(pid_file)
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        held.result(timeout=60)
    assert info.value.how == "signal 9" and info.value.pid == worker
    assert str(info.value) == f"worker died (signal 9), pid {worker}"
    assert queued.result(timeout=120) == 25
    assert pool.submit(pool_tasks.square, 3).result(timeout=120) == 9
    assert pool.crashes == 1
    assert worker not in pool.worker_pids()


def test_describe_exit():
    assert describe_exit(-9) == "signal 9"
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(None) == "unknown"


OWNER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{tests!r}, {repo!r}]
    import pool_tasks
    from gsaoi_watch.daemon.pool import SupervisedPool
    if __name__ == "__main__":
        pool = SupervisedPool(2)
        futures = [pool.submit(pool_tasks.hold_forked, {pid_file!r} + str(i), 300)
                   for i in range(2)]
        time.sleep(600)
""")


def test_workers_and_their_forked_children_die_with_the_pool_owner(tmp_path):
    script = tmp_path / "owner.py"
    pid_file = str(tmp_path / "pid")
    script.write_text(OWNER.format(tests=str(TESTS), repo=str(REPO), pid_file=pid_file))
    owner = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        workers = [read_pid(Path(pid_file + str(i)), 120) for i in range(2)]
        grandchildren = [read_pid(Path(pid_file + str(i) + ".child"), 60) for i in range(2)]
        everyone = descendants(owner.pid)
        assert set(workers + grandchildren) <= set(everyone)
        os.kill(owner.pid, signal.SIGKILL)  # the owner alone, not its process group
        owner.wait(timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in everyone):
            time.sleep(0.05)
        survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200]
                     for p in everyone if alive(p)}
        assert not survivors, f"outlived their owner by 5 s: {survivors}"
    finally:
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except OSError:
            pass
        owner.wait(timeout=30)


def test_worker_info_lines_reach_the_owner_log(caplog):
    import logging
    import multiprocessing

    from gsaoi_watch.logs import start_worker_logging, worker_log_initializer
    ctx = multiprocessing.get_context("forkserver")
    with caplog.at_level(logging.INFO):
        relay = start_worker_logging(ctx, level=logging.INFO)
        pool = SupervisedPool(1, mp_context=ctx, initializer=worker_log_initializer,
                              initargs=relay.initargs)
        try:
            pid = pool.submit(pool_tasks.log_info, "strip 3 of 8 resampled").result(
                timeout=120)
        finally:
            pool.shutdown(wait=True)
            relay.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "pool_tasks"]
    assert lines == [f"strip 3 of 8 resampled (pid {pid})"] and pid != os.getpid()


def test_with_two_workers_only_the_killed_workers_task_is_blamed(tmp_path):
    pool = SupervisedPool(2)
    try:
        release = str(tmp_path / "release")
        first = pool.submit(pool_tasks.hold, str(tmp_path / "a"), 300)
        second = pool.submit(pool_tasks.hold_until, str(tmp_path / "b"), release)
        victim_pid = read_pid(tmp_path / "b")
        culprit_pid = read_pid(tmp_path / "a")
        (tmp_path / "b").unlink()
        os.kill(culprit_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="signal 9"):
            first.result(timeout=60)
        assert not second.done()
        Path(release).touch()
        # the other worker was ended with the broken pool: its task ran again, unseen
        rerun_pid = second.result(timeout=120)
        assert rerun_pid != victim_pid and (tmp_path / "b").exists()
        assert pool.crashes == 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_fork_pool_children_with_die_with_parent_end_with_their_worker(pool, tmp_path):
    pid_file = tmp_path / "w"
    task = pool.submit(pool_tasks.hold_in_fork_pool, str(pid_file), 300)
    children = [read_pid(Path(f"{pid_file}.{i}")) for i in range(2)]
    worker = read_pid(pid_file)
    assert all(alive(p) for p in children) and worker not in children
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        task.result(timeout=60)
    wait_until(lambda: not any(alive(p) for p in children), 5,
               "the forked children to end with their worker")
