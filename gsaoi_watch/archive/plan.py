"""Planning an archive: the raw frames under directories, checked and put in dependency order.

Every candidate file under the directories (recursively; symbolic links never followed) goes
through the daemon's arrival gate (:class:`~gsaoi_watch.daemon.watcher.ArrivalGate`: a
regular file, a refused name, a complete GSAOI frame), with nothing left to settle: an
archive has finished arriving.  Files the gate refuses keep its one-line reason.  Frames are
then selected by UT date and ordered in phases by what they need, as the daemon's sequence
kinds (:func:`~gsaoi_watch.daemon.sequences.frame_kind`) say: calibrations and frames that
need nothing (flats, BPMs, ignored kinds, processed products) first, then standards, then
science, each in time order.  The sequences themselves are formed by the daemon's ingest
when the phase's frames are offered to it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from gsaoi_watch.daemon.sequences import frame_kind
from gsaoi_watch.daemon.watcher import ArrivalGate, is_candidate
from gsaoi_watch.data.descriptors import FrameInfo

__all__ = ["PHASES", "ArchivePlan", "plan_archive", "walk"]

#: The phases in dependency order: (name, the frame kinds offered in it).  Standards and
#: science need a flat (of any night within 30 days), so every flat is made first.
PHASES: tuple[tuple[str, frozenset[str]], ...] = (
    ("calibrations", frozenset({"flat_on", "flat_off", "flat", "bpm", "product", "ignored"})),
    ("standards and science", frozenset({"standard", "science"})),
)
_KIND_ORDER = {"standard": 0, "science": 1}


@dataclass
class ArchivePlan:
    """What an archive holds: frames by phase and the files refused with their reasons."""

    phases: list[list[tuple[str, FrameInfo]]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    outside: int = 0  # frames left out by --since/--until

    @property
    def n_frames(self) -> int:
        """Frames to offer to the ingest, all phases."""
        return sum(len(p) for p in self.phases)


def walk(directories: Iterable[str | os.PathLike[str]], *,
         exclude: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Candidate raw files under ``directories`` (recursive, sorted, links not followed).

    Directories in ``exclude`` (the output directory) are not entered.
    """
    skip = {os.path.realpath(p) for p in exclude}
    found: set[str] = set()
    for top in directories:
        for root, dirs, files in os.walk(top, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(root, d)) not in skip)
            found.update(os.path.join(root, f) for f in files if is_candidate(f))
    return sorted(found)


def _in_range(info: FrameInfo, since: dt.date | None, until: dt.date | None) -> bool:
    when = info.ut_datetime()
    if since is None and until is None:
        return True
    if when is None:  # undated: cannot be said to be in the range
        return False
    return (since is None or when.date() >= since) and (until is None or when.date() <= until)


def plan_archive(directories: Iterable[str | os.PathLike[str]], *,
                 since: dt.date | None = None, until: dt.date | None = None,
                 exclude: Iterable[str | os.PathLike[str]] = ()) -> ArchivePlan:
    """Check and classify every raw file under ``directories``; order them in phases.

    Parameters
    ----------
    directories : iterable of path
        Raw directories (searched recursively).
    since, until : datetime.date, optional
        Only frames whose UT date (``ut_datetime``) is within [since, until] (and static
        BPMs, which have no date).
    exclude : iterable of path
        Directories not searched (the output directory).

    Returns
    -------
    ArchivePlan
    """
    gate = ArrivalGate(settle=0.0, give_up=0.0)
    for path in walk(directories, exclude=exclude):
        gate.notice(path, closed=True)
    ready, rejected = gate.poll()
    plan = ArchivePlan(phases=[[] for _ in PHASES], rejected=sorted(rejected))
    for path, info in ready:
        kind = frame_kind(info)
        if kind != "bpm" and not _in_range(info, since, until):  # a static BPM: always
            plan.outside += 1
            continue
        for n, (_, kinds) in enumerate(PHASES):
            if kind in kinds:
                plan.phases[n].append((path, info))
                break
    never = dt.datetime.min
    for frames in plan.phases:
        frames.sort(key=lambda pi: (_KIND_ORDER.get(frame_kind(pi[1]), 0),
                                    pi[1].ut_datetime() or never, pi[0]))
    return plan
