"""Arrival gate and watchdog handler: real files, a real observer thread, an injected clock."""

import queue
import shutil
import threading
import time

import pytest

from gsaoi_watch.daemon.watcher import ArrivalGate, is_candidate, make_observer, scan_directory
from gsaoi_watch.sim import simulate_night


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames")
    simulate_night(out, seed=9, size=64, workers=1, only=["standard"])
    return sorted(out.glob("S2017*.fits"))


def test_candidates():
    assert is_candidate("/raw/S20170505S0095.fits")
    assert is_candidate("S20170505S0095.fits.bz2")
    for name in (".S20170505S0095.fits.XyZ12", "S20170505S0095.fits.tmp", "notes.txt",
                 ".S20170505S0095.fits"):
        assert not is_candidate(name)


def test_a_slowly_written_file_is_accepted_only_when_complete(frames, tmp_path):
    clock = Clock()
    gate = ArrivalGate(settle=2.0, give_up=60.0, clock=clock)
    data = frames[0].read_bytes()
    target = tmp_path / frames[0].name
    with open(target, "wb") as fh:
        fh.write(data[:20000])
        fh.flush()
        gate.notice(target)
        clock.t += 3.0  # stable but truncated: keeps waiting
        assert gate.poll() == ([], [])
        fh.write(data[20000:])
    gate.notice(target, closed=True)
    ready, rejected = gate.poll()
    assert [p for p, _ in ready] == [str(target)] and not rejected
    assert ready[0][1].object() == "9132"
    gate.notice(target)  # a later modify event of an accepted file is ignored
    assert gate.poll() == ([], [])


def test_unchanged_for_settle_seconds_without_close(frames, tmp_path):
    clock = Clock()
    gate = ArrivalGate(settle=2.0, clock=clock)
    target = tmp_path / frames[1].name
    shutil.copy(frames[1], target)
    gate.notice(target)
    assert gate.poll() == ([], [])
    clock.t += 2.5
    assert len(gate.poll()[0]) == 1


def test_truncated_file_is_rejected_after_give_up(frames, tmp_path):
    clock = Clock()
    gate = ArrivalGate(settle=1.0, give_up=30.0, clock=clock)
    target = tmp_path / "S20170505S0101.fits"
    target.write_bytes(frames[0].read_bytes()[:9000])
    gate.notice(target, closed=True)
    assert gate.poll() == ([], [])
    clock.t += 31
    ready, rejected = gate.poll()
    assert not ready and rejected[0][0] == str(target) and "truncated" in rejected[0][1]


def test_foreign_and_garbage_files_are_rejected_at_once(tmp_path):
    gate = ArrivalGate(settle=0.0)
    junk = tmp_path / "junk.fits"
    junk.write_text("hello" * 100)
    gate.notice(junk, closed=True)
    ready, rejected = gate.poll()
    assert rejected == [(str(junk), "not a FITS file")]


def test_observer_thread_enqueues_real_events(frames, tmp_path):
    events = queue.Queue()
    observer, polling = make_observer(tmp_path, events)
    observer.start()
    try:
        tmp = tmp_path / f".{frames[2].name}.tmp"
        shutil.copy(frames[2], tmp)
        tmp.rename(tmp_path / frames[2].name)  # the atomic-writer pattern
        deadline = time.monotonic() + 5
        seen = set()
        while time.monotonic() < deadline and str(tmp_path / frames[2].name) not in seen:
            try:
                seen.add(events.get(timeout=0.2).path)
            except queue.Empty:
                pass
        assert str(tmp_path / frames[2].name) in seen
        assert not any(p.endswith(".tmp") for p in seen)
    finally:
        observer.stop()
        observer.join(timeout=5)
    assert not observer.is_alive()
    assert scan_directory(tmp_path) == [str(tmp_path / frames[2].name)]
    assert threading.active_count() >= 1


def test_the_service_exits_non_zero_when_the_observer_dies(tmp_path, monkeypatch):
    from gsaoi_watch.config import Config
    from gsaoi_watch.daemon import service

    observers = []
    real = service.make_observer

    def spy(*args, **kwargs):
        observer, polling = real(*args, **kwargs)
        observers.append(observer)
        return observer, polling

    monkeypatch.setattr(service, "make_observer", spy)
    config = Config().replace("paths", raw_dir=str(tmp_path / "raw"),
                              output_dir=str(tmp_path / "out"))
    config = config.replace("database", url=str(tmp_path / "gw.db"))
    config = config.replace("service", heartbeat_seconds=0.2)
    killer = threading.Timer(1.0, lambda: observers[0].stop())
    killer.start()
    stop = threading.Event()
    guard = threading.Timer(30.0, stop.set)  # the test must not hang if the check is broken
    guard.start()
    try:
        status = service.run_service(config, stop_event=stop, install_signals=False)
    finally:
        guard.cancel()
        killer.cancel()
    assert not stop.is_set(), "the service did not notice the dead observer"
    assert status == 1
