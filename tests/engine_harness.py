"""A real Engine on a tmp directory with a fake executor, for tests of the daemon's machine.

:class:`Night` runs the engine in the test's thread: frames land in its raw directory and
are noticed as the watcher would, ticks advance an injected clock, operator commands go
into the database, and jobs submitted to the :class:`FakeExecutor` are finished by the test
with a made-up result (products are copies of raw frames) or an exception.  The database is
a real SQLite file.  The builders below put a sequence of the simulated night in a given
state through the engine.
"""

import datetime as dt
import shutil
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from gsaoi_watch.calibration import db
from gsaoi_watch.config import Config
from gsaoi_watch.daemon.engine import Engine
from gsaoi_watch.daemon.events import FileNoticed, SequenceEvent, Tick
from gsaoi_watch.daemon.jobs import run_job
from gsaoi_watch.daemon.prepared import prepare_ahead

STD = [f"S20170504S{n:04d}.fits" for n in range(114, 118)]
ON = [f"S20170505S{n:04d}.fits" for n in range(30, 45)]
OFF = [f"S20170505S{n:04d}.fits" for n in range(60, 75)]
SCI = [f"S20170505S{n:04d}.fits" for n in range(95, 111)]
FLAT = "S20170505S0030_flat.fits"
IDLE, QUIET, FLAT_WAIT = 100.0, 5.0, 1000.0


def sky(names):
    return [n.replace(".fits", "_skyCorrected.fits") for n in names]


@dataclass
class Call:
    fn: object
    spec: dict
    future: Future


class FakeExecutor:
    """concurrent.futures-like: records submit calls; the test completes their futures."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, *args, **kwargs):
        future = Future()
        future.set_running_or_notify_cancel()
        self.calls.append(Call(fn, args[0], future))
        return future


class Clock:
    def __init__(self):
        self.t = dt.datetime(2017, 5, 6, 12, 0, 0)

    def __call__(self):
        return self.t


@dataclass
class Night:
    """A daemon on a tmp directory: real engine, real database, fake executor."""

    dir: Path
    stage: Path
    fake: FakeExecutor = field(default_factory=FakeExecutor)
    clock: Clock = field(default_factory=Clock)
    taken: list = field(default_factory=list)  # rows taken, recorded by the test
    mark: int = 0
    taken_mark: int = 0
    url: str | None = None  # the database (default: a SQLite file in the directory)

    def __post_init__(self):
        config = Config().replace("paths", raw_dir=str(self.dir / "raw"),
                                  output_dir=str(self.dir / "out"))
        config = config.replace("database", url=self.url or str(self.dir / "gw.db"))
        config = config.replace("sequences", idle_timeout=IDLE, min_quiet=QUIET,
                                flat_wait=FLAT_WAIT)
        config = config.replace("jobs", max_tries=2)
        self.raw = Path(config.paths.raw_dir)
        self.out = Path(config.paths.output_dir)
        self.raw.mkdir(parents=True)
        self.out.mkdir(parents=True)
        db.open_database(config.database.url, create=True)
        self.engine = Engine(config, executor=self.fake, now=self.clock)

    # --- inputs, as the daemon gets them -------------------------------------------------
    def drain(self):
        while not self.engine.events.empty():
            self.engine.step(timeout=0)
        self.engine.step(timeout=0)  # the arrival gate releases what was noticed

    def arrive(self, *names):
        for name in names:
            shutil.copyfile(self.stage / name, self.raw / name)
            self.engine.events.put(FileNoticed(str(self.raw / name), closed=True))
            self.drain()

    def tick(self, seconds=0.0):
        self.clock.t += dt.timedelta(seconds=seconds)
        self.engine.events.put(Tick())
        self.drain()

    def close(self, argument="--all"):
        with db.writing():
            db.Command.create(verb="close", argument=argument)
        self.tick()

    def dispatch(self, kind, event):
        self.engine.handle(SequenceEvent(self.seq(kind).id, event))

    def force(self, kind, state):
        """Leave a sequence in a state nothing waits in (as a crash between two rows would)."""
        with db.writing():
            db.Sequence.update(state=state).where(db.Sequence.id == self.seq(kind).id).execute()

    def finish(self, recipe, *, fail=False, name=None):
        """Finish the oldest pending job of ``recipe`` with a made-up result (or an error)."""
        call = next(c for c in self.fake.calls
                    if c.fn is run_job and c.spec["recipe"] == recipe and not c.future.done())
        if fail:
            call.future.set_exception(RuntimeError("no skies"))
        else:
            call.future.set_result(self._result(call.spec, name))
        self.drain()
        return call

    def _result(self, spec, name):
        paths = [Path(p) for p in spec["paths"]]
        if spec["recipe"] == "flat":
            caldir = self.out / "calibrations" / "processed_flat"
            caldir.mkdir(parents=True, exist_ok=True)
            made = [(caldir / (name or f"{min(p.stem for p in paths)}_flat.fits"),
                     "processed_flat")]
        elif spec["recipe"] == "stack":
            made = [(self.out / spec["output_name"], "stack")]
        else:
            made = [(self.out / f"{p.stem}_skyCorrected.fits", "sky_corrected") for p in paths]
        for (target, _), src in zip(made, paths):
            shutil.copyfile(src, target)
        return {"products": [(str(t), k) for t, k in made], "skipped": [], "seconds": 0.0,
                "note": "made up", "qa": []}

    # --- what the test looks at ------------------------------------------------------------
    def seq(self, kind):
        return db.Sequence.get(db.Sequence.kind == kind)

    def start(self):
        """From here on, submissions count as the row's."""
        self.mark = len(self.fake.calls)
        self.taken_mark = len(self.taken)

    def jobs(self):
        return [(c.spec["recipe"], [Path(p).name for p in c.spec["paths"]])
                for c in self.fake.calls[self.mark:] if c.fn is run_job]

    def prepared(self):
        return [Path(c.spec["path"]).name for c in self.fake.calls[self.mark:]
                if c.fn is prepare_ahead]


# --- preconditions, built through the engine ------------------------------------------------
def flats_done(n, on=ON):
    """A master flat (lamp on - off) registered; both flat sequences DONE."""
    n.arrive(*on, *OFF)
    n.tick(IDLE)  # lamp-on closed by the lamp-off frames and waits; lamp-off idles: the job
    n.finish("flat")
    assert n.seq("flat_on").state == n.seq("flat_off").state == "DONE"


def science_waiting(n, names=SCI[:3]):
    n.arrive(*names)
    n.tick(IDLE)
    assert n.seq("science").state == "WAITING"


def science_reducing(n, hold=1):
    flats_done(n)
    n.arrive(*SCI[:-hold])
    n.tick(IDLE)
    assert n.seq("science").state == "REDUCING"


def science_done(n, hold=1):
    science_reducing(n, hold)
    n.finish("images")
    assert n.seq("science").state == "DONE"


def science_quicklook_reducing(n):
    science_waiting(n, SCI[:-1])
    n.tick(FLAT_WAIT)
    assert n.seq("science").state == "REDUCING" and n.seq("science").quicklook


def science_quicklook(n):
    science_quicklook_reducing(n)
    n.finish("images")
    assert n.seq("science").state == "QUICKLOOK"


def science_failed(n):
    science_reducing(n)
    n.finish("images", fail=True)
    n.finish("images", fail=True)
    assert n.seq("science").state == "FAILED"


def science_reopened(n):
    science_done(n, hold=2)
    n.arrive(SCI[-2])
    assert n.seq("science").state == "REOPENED"


def standard_reopened(n):
    flats_done(n)
    n.arrive(*STD[:2])
    n.tick(IDLE)
    n.finish("images")
    n.arrive(STD[2])
    assert n.seq("standard").state == "REOPENED"
