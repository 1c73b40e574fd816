"""What the live page shows, read from the database: plain dicts and lists, ready for JSON.

Each function runs a fixed handful of queries whatever the size of the night (joins and
grouped counts, never one query per row), on the calling thread's connection; the caller
opens it and holds one read transaction, so that the answer is one consistent snapshot
(:func:`gsaoi_watch.web.app.read`).  Paths are shown relative to the output directory;
pictures by URL (``/pictures/<product id>.png``), never by a path a client could name.
With ``owner`` (a daemon's: several may share the database) each shows that daemon's
sequences, jobs, products and raw files only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import peewee as pw

from gsaoi_watch.calibration import db
from gsaoi_watch.calibration.daemons import daemon_status, owner_path
from gsaoi_watch.daemon.streaming import PROVISIONAL_DIR
from gsaoi_watch.logs import log_name
from gsaoi_watch.quicklook.pictures import picture_path
from gsaoi_watch.web.measures import measures, no_qa

__all__ = ["FRAME_KINDS", "files", "frames", "picture_file", "sequences", "status"]

#: Product kinds that are reduced frames (one point each on the plots).
FRAME_KINDS = ("sky_corrected", "provisional_sky_corrected")

#: Frame states the page lists as problems, with the reason the ledger gives.
PROBLEM_FRAMES = ("quarantined", "unusable")

#: Job states the page lists as problems.
PROBLEM_JOBS = ("FAILED", "RETRY")


def _dicts(query: Any) -> list[dict[str, Any]]:
    """The rows of a query as dicts (column or alias name: value)."""
    return list(query.dicts())


def _iso(value: dt.datetime | None) -> str | None:
    """A naive UTC datetime as ISO 8601 with ``Z`` (what JavaScript's Date reads as UTC)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite gives text for a value peewee could not parse
        return value
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _relative(path: str, output_dir: Path) -> str:
    """A product's path relative to the output directory (else its file name)."""
    try:
        return Path(path).relative_to(output_dir).as_posix()
    except ValueError:
        return Path(path).name


def _is_provisional(path: str, output_dir: Path) -> bool:
    return path.startswith(os.path.join(output_dir, PROVISIONAL_DIR, ""))


def _picture_candidates(path: str, kind: str, output_dir: Path) -> list[str]:
    """Where a product's PNG may be: beside it; a served flat's beside the flat it copies.

    A flat is registered as its copy under ``calibrations/processed_flat/``; its picture is
    written beside the flat made in the output directory (:func:`gsaoi_watch.daemon.jobs`).
    """
    own = str(picture_path(path))
    out = [own]
    if kind == "processed_flat" or "calibrations" in Path(path).parts[:-1]:
        out.append(os.path.join(output_dir, os.path.basename(own)))
    return out


def _inside(path: str, output_dir: Path) -> Path | None:
    """The resolved regular file ``path`` if it lies inside the output directory."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(output_dir) or not resolved.is_file():
        return None
    return resolved


class _Pictures:
    """Which products have a picture: one listing per directory (not a stat per product).

    Only regular files (not symbolic links) in directories inside the output directory
    count; :func:`picture_file`, which serves them, checks each again.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self._inside = os.path.join(output_dir, "")
        self._listed: dict[str, set[str]] = {}

    def _names(self, directory: str) -> set[str]:
        if directory not in self._listed:
            names: set[str] = set()
            if directory == str(self.output_dir) or directory.startswith(self._inside):
                try:
                    with os.scandir(directory) as entries:
                        names = {e.name for e in entries if e.name.endswith(".png")
                                 and e.is_file(follow_symlinks=False)}
                except OSError:
                    pass
            self._listed[directory] = names
        return self._listed[directory]

    def url(self, product_id: int, path: str, kind: str, checksum: str | None) -> str | None:
        """``/pictures/<id>.png?v=<checksum>`` (a re-made product gets a new URL), or None."""
        for candidate in _picture_candidates(path, kind, self.output_dir):
            directory, name = os.path.split(os.path.normpath(candidate))
            if name in self._names(directory):
                return f"/pictures/{product_id}.png?v={(checksum or '')[:12]}"
        return None


def picture_file(product_id: int, output_dir: str | os.PathLike[str]) -> Path | None:
    """The PNG of a database product, if it exists inside the output directory.

    Parameters
    ----------
    product_id : int
        The ``product`` row's id (the only thing a client names).
    output_dir : str or os.PathLike
        The daemon's output directory; a picture outside it (a symbolic link out of it, a
        calibration registered from elsewhere) is never served.

    Returns
    -------
    pathlib.Path or None
        The resolved file, or None: no such product, no picture, or outside the directory.
    """
    out = Path(output_dir).resolve()
    row = db.Product.select(db.Product.path, db.Product.kind).where(
        db.Product.id == int(product_id)).first()
    if row is None:
        return None
    for candidate in _picture_candidates(row.path, row.kind, out):
        found = _inside(candidate, out)
        if found is not None:
            return found
    return None


def _qa_of(text: str | None, filter_name: str | None) -> dict[str, dict[str, Any]]:
    if not text:
        return no_qa("no QA recorded", filter_name)
    try:
        qa = json.loads(text)
    except ValueError:
        return no_qa("QA record unreadable", filter_name)
    return measures(qa, filter_name)


def _observation(label: str | None) -> str | None:
    """The observation id of a data label (``GS-2017A-Q-29-13-001`` → ``GS-2017A-Q-29-13``)."""
    if not label:
        return None
    head, sep, tail = label.rpartition("-")
    return head if sep and tail.isdigit() else label


def _mine(query: Any, owner: str | None, model: Any) -> Any:
    """``query`` restricted to the owner's rows of ``model`` (a Sequence or Job; None: all)."""
    return query if owner is None else query.where(model.owner == owner)


def _raw_files(query: Any, owner: str | None) -> Any:
    """``query`` of raw frames restricted to those in the owner's raw directory (None: all)."""
    if owner is None:
        return query
    where = owner_path(owner)
    if where is None:  # not a daemon's (a reprocess): its frames are its sequences'
        return query.where(db.Frame.sequence.in_(
            db.Sequence.select(db.Sequence.id).where(db.Sequence.owner == owner)))
    return query.where(db.Frame.path.startswith(f"{where[1]}{os.sep}"))


def frames(output_dir: str | os.PathLike[str], *,
           owner: str | None = None) -> list[dict[str, Any]]:
    """One dict per reduced frame (final or provisional), ordered by UT.

    A provisional frame whose final product is registered is left out (the final one
    replaces it; the daemon removes it right after).  The sequence comes from the
    product's job, else (provisional frames have no job) from the raw frame of the same
    data label.

    Returns
    -------
    list of dict
        ``id``, ``file``, ``ut`` (ISO 8601 UTC), ``observation_id``, ``object``, ``kind``
        (the sequence's: science, standard), ``filter``, ``provisional``, ``quicklook``,
        ``sequence_id``, ``picture`` (URL or None), ``iq``, ``cc``, ``bg``
        (:func:`gsaoi_watch.web.measures.measures`).
    """
    out_dir = Path(output_dir).resolve()
    by_job = db.Sequence.alias("by_job")
    raw = db.Frame.alias("raw")
    by_raw = db.Sequence.alias("by_raw")
    query = (db.Product
             .select(db.Product.id, db.Product.path, db.Product.filename, db.Product.kind,
                     db.Product.ut_datetime, db.Product.created, db.Product.qa,
                     db.Product.data_label, db.Product.filter_name, db.Product.checksum,
                     db.Product.observation_class,
                     by_job.id.alias("j_id"), by_job.observation_id.alias("j_obs"),
                     by_job.kind.alias("j_kind"), by_job.object.alias("j_object"),
                     by_job.quicklook.alias("j_quick"), by_job.filter_name.alias("j_filter"),
                     by_raw.id.alias("r_id"), by_raw.observation_id.alias("r_obs"),
                     by_raw.kind.alias("r_kind"), by_raw.object.alias("r_object"),
                     by_raw.quicklook.alias("r_quick"), by_raw.filter_name.alias("r_filter"))
             .join(db.Job, pw.JOIN.LEFT_OUTER, on=(db.Product.job == db.Job.id))
             .join(by_job, pw.JOIN.LEFT_OUTER, on=(db.Job.sequence == by_job.id))
             .switch(db.Product)
             .join(raw, pw.JOIN.LEFT_OUTER, on=(raw.data_label == db.Product.data_label))
             .join(by_raw, pw.JOIN.LEFT_OUTER, on=(raw.sequence == by_raw.id))
             .where(db.Product.kind.in_(FRAME_KINDS))
             .order_by(db.Product.ut_datetime, db.Product.id))
    if owner is not None:
        query = query.where((by_job.owner == owner) | (by_raw.owner == owner))
    rows = _dicts(query)
    finals = {r["filename"] for r in rows if not _is_provisional(r["path"], out_dir)}
    pictures = _Pictures(out_dir)
    result = []
    for r in rows:
        provisional = _is_provisional(r["path"], out_dir)
        if provisional and r["filename"] in finals:
            continue
        src = "j" if r["j_id"] is not None else "r"
        filter_name = r["filter_name"] or r[f"{src}_filter"]
        result.append({
            "id": r["id"], "file": r["filename"],
            "ut": _iso(r["ut_datetime"] or r["created"]),
            "observation_id": r[f"{src}_obs"] or _observation(r["data_label"]),
            "object": r[f"{src}_object"],
            "kind": r[f"{src}_kind"] or r["observation_class"],
            "filter": (filter_name or "").split("_")[0] or None,
            "provisional": provisional, "quicklook": bool(r[f"{src}_quick"]),
            "sequence_id": r[f"{src}_id"],
            "picture": pictures.url(r["id"], r["path"], r["kind"], r["checksum"]),
            **_qa_of(r["qa"], filter_name),
        })
    return result


def _sequence_label(seq: dict[str, Any]) -> str:
    exposure = "" if seq["exposure_time"] is None else f" {seq['exposure_time']:g}s"
    return (f"{seq['observation_id']} {seq['kind']} {seq['object']} "
            f"{(seq['filter_name'] or '').split('_')[0]}{exposure}")


def _counts(rows: Iterable[dict[str, Any]]) -> dict[int, int]:
    return {r["sequence"]: r["n"] for r in rows if r["sequence"] is not None}


def sequences(output_dir: str | os.PathLike[str], *,
              owner: str | None = None) -> list[dict[str, Any]]:
    """Every sequence in the order opened, with its frames, latest job and products.

    Returns
    -------
    list of dict
        ``id``, ``key``, ``label``, ``observation_id``, ``object``, ``kind``, ``state``,
        ``reason``, ``filter``, ``exposure_time``, ``frames`` (count), ``quicklook``,
        ``stale``, ``opened``, ``updated``, ``job`` (the latest: ``id``, ``recipe``,
        ``state``, ``tries``, ``error``; or None) and ``products`` (``id``, ``file``,
        ``kind``, ``path`` relative to the output directory, ``provisional``, ``picture``;
        a provisional frame whose final product is registered is left out).
    """
    out_dir = Path(output_dir).resolve()
    seqs = _dicts(_mine(db.Sequence.select().order_by(db.Sequence.opened, db.Sequence.id),
                        owner, db.Sequence))
    counts = _counts(_dicts(db.Frame.select(db.Frame.sequence,
                                            pw.fn.COUNT(db.Frame.id).alias("n"))
                            .group_by(db.Frame.sequence)))
    latest: dict[int, dict[str, Any]] = {}
    for job in _dicts(db.Job.select(db.Job.id, db.Job.sequence, db.Job.recipe, db.Job.state,
                                    db.Job.tries, db.Job.error).order_by(db.Job.id)):
        if job["sequence"] is not None:
            latest[job["sequence"]] = job
    raw = db.Frame.alias("raw")
    products: dict[int, list[dict[str, Any]]] = {}
    query = (db.Product
             .select(db.Product.id, db.Product.path, db.Product.filename, db.Product.kind,
                     db.Product.checksum, db.Job.sequence.alias("j_seq"),
                     raw.sequence.alias("r_seq"))
             .join(db.Job, pw.JOIN.LEFT_OUTER, on=(db.Product.job == db.Job.id))
             .switch(db.Product)
             .join(raw, pw.JOIN.LEFT_OUTER, on=((raw.data_label == db.Product.data_label)
                                                & db.Product.job.is_null()))
             .order_by(db.Product.filename, db.Product.id))
    rows = _dicts(query)
    finals = {p["filename"] for p in rows if not _is_provisional(p["path"], out_dir)}
    pictures = _Pictures(out_dir)
    for p in rows:
        seq_id = p["j_seq"] if p["j_seq"] is not None else p["r_seq"]
        provisional = _is_provisional(p["path"], out_dir)
        if seq_id is None or (provisional and p["filename"] in finals):
            continue  # not a sequence's, or a provisional frame its final one replaces
        products.setdefault(seq_id, []).append({
            "id": p["id"], "file": p["filename"], "kind": p["kind"],
            "path": _relative(p["path"], out_dir),
            "provisional": provisional,
            "picture": pictures.url(p["id"], p["path"], p["kind"], p["checksum"])})
    result = []
    for s in seqs:
        last = latest.get(s["id"])
        result.append({
            "id": s["id"], "key": s["key"], "label": _sequence_label(s),
            "observation_id": s["observation_id"], "object": s["object"], "kind": s["kind"],
            "state": s["state"], "reason": s["reason"],
            "filter": (s["filter_name"] or "").split("_")[0] or None,
            "exposure_time": s["exposure_time"], "frames": counts.get(s["id"], 0),
            "quicklook": bool(s["quicklook"]), "stale": bool(s["stale"]),
            "opened": _iso(s["opened"]), "updated": _iso(s["updated"]),
            "job": None if last is None else {
                "id": last["id"], "recipe": last["recipe"], "state": last["state"],
                "tries": last["tries"], "error": last["error"]},
            "products": products.get(s["id"], [])})
    return result


def files(*, owner: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Raw files the daemon will not use or could not, and jobs that failed.

    Returns
    -------
    dict
        ``frames``: quarantined and unusable raw files (``file``, ``state``, ``reason``,
        ``updated``, ``ut``); ``jobs``: FAILED jobs and jobs waiting to be retried
        (``id``, ``recipe``, ``state``, ``tries``, ``crashes``, ``error``, ``finished``,
        ``sequence``: its label or None); ``sequences``: FAILED sequences (``id``,
        ``label``, ``reason``).
    """
    frames_ = [{"file": log_name(Path(f["path"]).name), "state": f["state"],
                "reason": f["error"], "updated": _iso(f["updated"]), "ut": _iso(f["ut_datetime"])}
               for f in _dicts(_raw_files(
                   db.Frame.select(db.Frame.path, db.Frame.state, db.Frame.error,
                                   db.Frame.updated, db.Frame.ut_datetime)
                   .where(db.Frame.state.in_(PROBLEM_FRAMES))
                   .order_by(db.Frame.updated, db.Frame.id), owner))]
    jobs = []
    for j in _dicts(_mine(db.Job.select(db.Job.id, db.Job.recipe, db.Job.state, db.Job.tries,
                                        db.Job.crashes, db.Job.error, db.Job.finished,
                                        db.Sequence.observation_id, db.Sequence.kind,
                                        db.Sequence.object, db.Sequence.filter_name,
                                        db.Sequence.exposure_time)
                          .join(db.Sequence, pw.JOIN.LEFT_OUTER)
                          .where(db.Job.state.in_(PROBLEM_JOBS)).order_by(db.Job.id),
                          owner, db.Job)):
        jobs.append({"id": j["id"], "recipe": j["recipe"], "state": j["state"],
                     "tries": j["tries"], "crashes": j["crashes"], "error": j["error"],
                     "finished": _iso(j["finished"]),
                     "sequence": None if j["kind"] is None else _sequence_label(j)})
    failed = [{"id": s["id"], "label": _sequence_label(s), "reason": s["reason"]}
              for s in _dicts(_mine(db.Sequence.select().where(db.Sequence.state == "FAILED")
                                    .order_by(db.Sequence.id), owner, db.Sequence))]
    return {"frames": frames_, "jobs": jobs, "sequences": failed}


def status(*, owner: str | None = None) -> dict[str, Any]:
    """The daemon's liveness and status line, the night's counts and the server's clock.

    Returns
    -------
    dict
        ``now`` (ISO UTC), ``daemon`` (``running``, ``reason``, ``note``, ``started``),
        ``counts`` (``sequences``, ``frames``, ``reduced``, ``problems``).
    """
    now = db._now()
    daemon = daemon_status(now=now, owner=owner)
    reduced_q = db.Product.select().where(db.Product.kind.in_(FRAME_KINDS))
    if owner is not None:  # its jobs' products, and provisional ones of its raw frames
        own_labels = db.Frame.select(db.Frame.data_label).join(db.Sequence).where(
            db.Sequence.owner == owner)
        reduced_q = reduced_q.join(db.Job, pw.JOIN.LEFT_OUTER).where(
            (db.Job.owner == owner) | db.Product.data_label.in_(own_labels))
    problems = _raw_files(db.Frame.select().where(db.Frame.state.in_(PROBLEM_FRAMES)),
                          owner).count()
    return {"now": _iso(now),
            "daemon": {"running": daemon.running, "reason": daemon.reason,
                       "note": daemon.note, "started": _iso(daemon.started)},
            "counts": {"sequences": _mine(db.Sequence.select(), owner, db.Sequence).count(),
                       "frames": _raw_files(db.Frame.select(), owner).count(),
                       "reduced": reduced_q.count(), "problems": problems}}
