"""Logging: worker lines reach the daemon's log, the default log file, escaped names."""

import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from gsaoi_watch.logs import setup_logging, start_worker_logging, worker_log_initializer


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_info_lines_of_workers_reach_the_daemon_log(tmp_path, root_logging, method):
    log_file = tmp_path / "daemon.log"
    setup_logging("INFO", log_file)
    for h in root_logging.handlers:
        h.setFormatter(logging.Formatter("%(process)d %(levelname)s %(name)s %(message)s"))
    ctx = multiprocessing.get_context(method)
    relay = start_worker_logging(ctx)
    worker_log = logging.getLogger("gsaoi_watch.reduction.recipes")
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=worker_log_initializer,
                             initargs=relay.initargs) as pool:
        futures = [pool.submit(worker_log.info, "worker line %d é", k) for k in range(6)]
        futures.append(pool.submit(worker_log.debug, "not at INFO"))
        for f in futures:
            f.result(timeout=120)
    relay.stop()
    lines = log_file.read_text(encoding="utf-8").splitlines()
    worker_lines = [line for line in lines if "worker line" in line]
    assert sorted(line.split(" ", 3)[-1] for line in worker_lines) == [
        f"worker line {k} é" for k in range(6)]  # each exactly once
    assert all(int(line.split()[0]) != os.getpid() for line in worker_lines)
    assert all(" INFO gsaoi_watch.reduction.recipes " in line for line in worker_lines)
    assert not any("not at INFO" in line for line in lines)


def test_the_log_file_takes_any_name_without_a_logging_error(tmp_path, root_logging,
                                                             capfd):
    log_file = tmp_path / "a" / "gw.log"
    setup_logging("INFO", log_file)
    logging.getLogger("gsaoi_watch").info("frame=%s", "S\udce9 é.fits")
    for h in root_logging.handlers:
        h.flush()
    assert "--- Logging error ---" not in capfd.readouterr().err
    assert "S\\udce9 é.fits" in log_file.read_text(encoding="utf-8")


CONFIG = """
[paths]
raw_dir = "{raw}"
output_dir = "{out}"
[database]
url = "{db}"
[service]
heartbeat_seconds = 0.5
"""


def test_the_daemon_logs_to_the_output_directory_by_default(tmp_path):
    cfg = tmp_path / "gw.toml"
    out = tmp_path / "reduced"
    cfg.write_text(CONFIG.format(raw=tmp_path / "raw", out=out, db=tmp_path / "gw.db"))
    proc = subprocess.Popen([sys.executable, "-m", "gsaoi_watch", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            umask=0o022, start_new_session=True)
    log_file = out / "gsaoi-watch.log"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log_file.exists() and "ready:" in log_file.read_text(encoding="utf-8"):
                break
            time.sleep(0.2)
        assert "ready:" in log_file.read_text(encoding="utf-8")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "ready:" in err  # standard error (journald) too
    assert "stopping:" in log_file.read_text(encoding="utf-8")
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o644
