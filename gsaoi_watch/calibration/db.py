"""The calibration database (peewee): ledger of frames, sequences, jobs and products.

SQLite in WAL mode by default (a path), or any database URL ``playhouse.db_url`` accepts
(``postgresql://...``).  One writer at a time: SQLite's busy timeout gives a bounded wait for
a lock, then :class:`DatabaseError` says so.  The schema carries a version; an older
database is upgraded in place, a newer one refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
from playhouse.db_url import connect as url_connect
from playhouse.migrate import SchemaMigrator, migrate

from gsaoi_watch.errors import GsaoiWatchError

__all__ = [
    'Command', 'Daemon', 'DatabaseBusy', 'DatabaseError', 'DatabaseUnavailable', 'Frame',
    'Job', 'Product', 'ProductCalibration',
    'SCHEMA_VERSION', 'SchemaInfo', 'Sequence', 'checksum', 'close_database', 'database',
    'check_file', 'open_database', 'unavailable', 'writing',
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4


#: How long a writer waits for SQLite's lock before giving up (seconds).
LOCK_TIMEOUT = 10.0


database = pw.DatabaseProxy()

#: (absolute path, device, inode) of the SQLite file the models are bound to, when opened.
_opened_file: tuple[str, int, int] | None = None


class DatabaseError(GsaoiWatchError):
    """The calibration database cannot be used (corrupt, locked, wrong schema)."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be used now (its file removed, replaced by a non-database)."""


class DatabaseBusy(DatabaseUnavailable):
    """Another writer held the lock past the busy wait; ``waited`` is the real wait (s)."""

    def __init__(self, message: str, waited: float) -> None:
        super().__init__(message)
        self.waited = waited


#: Words of SQLite errors that say the database cannot be used now, not that a query is
#: wrong: locked or busy, the file gone or unreadable, the disk failing or full.
_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open", "readonly", "read-only",
                "no such table", "disk is full", "database or disk is full",
                "not a database", "malformed", "cannot operate on a closed database")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable (retry later), not a bug or bad data.

    A :class:`DatabaseUnavailable` (:class:`DatabaseBusy` included), or a peewee/sqlite3
    operational error about a lock, a missing or unreadable file, an I/O error or a full
    disk.  Integrity errors are not.
    """
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, (pw.IntegrityError, pw.ProgrammingError)):
        return False
    if isinstance(exc, (pw.OperationalError, pw.DatabaseError, pw.InterfaceError)) or \
            type(exc).__module__ == "sqlite3":
        text = str(exc).lower()
        return any(word in text for word in _UNAVAILABLE)
    return False


def _now():
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class _Model(pw.Model):
    id = pw.AutoField()  # what peewee adds by itself, declared for the type checker

    class Meta:
        database = database
        legacy_table_names = False


class SchemaInfo(_Model):
    """One row: the schema version of this database."""

    version = pw.IntegerField()
    created = pw.DateTimeField(default=_now)


class Sequence(_Model):
    """Frames of one observation with the same kind, filter, exposure, read mode and ROI."""

    key = pw.CharField(unique=True)
    kind = pw.CharField()
    observation_id = pw.CharField(null=True)
    object = pw.CharField(null=True)
    filter_name = pw.CharField(null=True)
    exposure_time = pw.FloatField(null=True)
    read_mode = pw.CharField(null=True)
    roi = pw.BooleanField(default=False)
    state = pw.CharField(default="OPEN", index=True)
    reason = pw.CharField(null=True)
    opened = pw.DateTimeField(default=_now)
    updated = pw.DateTimeField(default=_now)
    last_frame_ut = pw.DateTimeField(null=True)
    wait_started = pw.DateTimeField(null=True)
    stale = pw.BooleanField(default=False)
    quicklook = pw.BooleanField(default=False)
    # backrefs (declared for the type checker; peewee adds them)
    frames: pw.ModelSelect[Frame]
    jobs: pw.ModelSelect[Job]


class Command(_Model):
    """An operator request to the running daemon (e.g. close a sequence), done once."""

    verb = pw.CharField()
    argument = pw.CharField(null=True)
    created = pw.DateTimeField(default=_now)
    done = pw.DateTimeField(null=True)


class Frame(_Model):
    """A raw file seen by gsaoi_watch: the ledger row (checksum, state, tries, error)."""

    path = pw.CharField(unique=True)
    data_label = pw.CharField(unique=True, null=True)
    checksum = pw.CharField(null=True)
    size = pw.BigIntegerField(null=True)
    descriptors = pw.TextField(default="{}")
    tags = pw.CharField(default="")
    state = pw.CharField(default="ingested", index=True)
    error = pw.TextField(null=True)
    tries = pw.IntegerField(default=0)
    sequence = pw.ForeignKeyField(Sequence, backref="frames", null=True, on_delete="SET NULL")
    ut_datetime = pw.DateTimeField(null=True)
    created = pw.DateTimeField(default=_now)
    updated = pw.DateTimeField(default=_now)


class Job(_Model):
    """A reduction run on a sequence."""

    sequence = pw.ForeignKeyField(Sequence, backref="jobs", null=True, on_delete="SET NULL")
    recipe = pw.CharField()
    parameters = pw.TextField(default="{}")
    state = pw.CharField(default="WAITING", index=True)
    tries = pw.IntegerField(default=0)
    crashes = pw.IntegerField(default=0)  # runs whose worker process died (schema 4)
    started = pw.DateTimeField(null=True)
    finished = pw.DateTimeField(null=True)
    error = pw.TextField(null=True)
    sequence_id: int | None  # the foreign key's column (peewee adds it)
    products: pw.ModelSelect[Product]  # backref


class Product(_Model):
    """A file gsaoi_watch made or was given: calibrations and reduced frames."""

    path = pw.CharField(unique=True)
    filename = pw.CharField(index=True)
    kind = pw.CharField(index=True)  # processed_flat, processed_bpm, sky_corrected, ...
    job = pw.ForeignKeyField(Job, backref="products", null=True, on_delete="SET NULL")
    data_label = pw.CharField(null=True)
    filter_name = pw.CharField(null=True, index=True)
    read_mode = pw.CharField(null=True)
    observation_class = pw.CharField(null=True)
    ut_datetime = pw.DateTimeField(null=True)
    detector_section = pw.CharField(null=True)
    is_calibration = pw.BooleanField(default=False)
    is_bad = pw.BooleanField(default=False)
    checksum = pw.CharField(null=True)
    created = pw.DateTimeField(default=_now)
    qa = pw.TextField(null=True)  # JSON: image quality, background, zero points (schema 2)
    # backrefs
    calibrations_used: pw.ModelSelect[ProductCalibration]
    used_by: pw.ModelSelect[ProductCalibration]


class ProductCalibration(_Model):
    """Which calibration a product used (e.g. the flat of a _skyCorrected frame)."""

    product = pw.ForeignKeyField(Product, backref="calibrations_used", on_delete="CASCADE")
    calibration = pw.ForeignKeyField(Product, backref="used_by", on_delete="CASCADE")
    caltype = pw.CharField()


class Daemon(_Model):
    """A daemon running on this database: who it is and when it last showed it is alive.

    Written by the daemon (:mod:`gsaoi_watch.calibration.daemons`: register at start-up, a
    heartbeat every ``[service] heartbeat_seconds``, unregister at a clean stop) and read by
    ``gsaoi-watch status`` and ``close`` (schema 3).
    """

    pid = pw.IntegerField()
    host = pw.CharField()
    started = pw.DateTimeField(default=_now)
    heartbeat = pw.DateTimeField(default=_now)
    heartbeat_seconds = pw.FloatField(default=10.0)
    note = pw.CharField(null=True)  # the daemon's last status line


MODELS = (SchemaInfo, Sequence, Command, Frame, Job, Product, ProductCalibration, Daemon)


def checksum(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes (what the Gemini archive records)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_url(target: str) -> bool:
    return "://" in target


def _create_file(path: Path) -> None:
    """Create the empty database file with the mode the umask gives (0666 less the umask).

    SQLite would create it 0644 whatever the umask allows; its -wal and -shm files take the
    mode of the database file.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        pass


def open_database(target: str | os.PathLike[str], *, create: bool = False,
                  lock_timeout: float | None = None) -> pw.Database:
    """Open (and with ``create``, initialise) the database at a path or URL.

    Parameters
    ----------
    target : str or os.PathLike
        A file path (SQLite) or a database URL.
    create : bool
        Create the file and tables if missing; otherwise a missing database is an error.
    lock_timeout : float, optional
        SQLite's busy wait (seconds) for a lock another process holds, before
        :class:`DatabaseBusy` (default :data:`LOCK_TIMEOUT`; the daemon waits briefly, then
        retries with backoff).

    Returns
    -------
    peewee.Database
        Also bound to the module-level ``database`` proxy used by the models.

    Raises
    ------
    DatabaseError
        Missing (without ``create``), not a database (corrupt), locked, or a newer schema.
    """
    target = str(target)
    lock_timeout = LOCK_TIMEOUT if lock_timeout is None else lock_timeout
    if _is_url(target):
        db = url_connect(target)
    else:
        path = Path(target)
        if not path.exists() and not create:
            raise DatabaseError(f"{path}: no calibration database here; run "
                                "'gsaoi-watch caldb init' first")
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create_file(path)
        db = pw.SqliteDatabase(str(path), timeout=lock_timeout, pragmas={
            "journal_mode": "wal", "foreign_keys": 1, "synchronous": "normal",
            "busy_timeout": int(lock_timeout * 1000)})
    database.initialize(db)
    _remember_file(db)
    t0 = time.monotonic()
    try:
        db.connect(reuse_if_open=True)
        existing = set(db.get_tables())
        if not existing:
            if not create and not _is_url(target):
                raise DatabaseError(f"{target}: empty file, not a calibration database; "
                                    "run 'gsaoi-watch caldb init'")
            with db.atomic():
                db.create_tables(MODELS)
                SchemaInfo.create(version=SCHEMA_VERSION)
        elif "schema_info" not in existing:
            raise DatabaseError(f"{target}: not a gsaoi_watch calibration database "
                                f"(tables {sorted(existing)})")
        else:
            _check_version(db, target)
    except pw.DatabaseError as exc:
        db.close()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "locked" in text:
            raise DatabaseBusy(f"{target}: database is locked by another writer "
                               f"(waited {time.monotonic() - t0:.1f} s)",
                               time.monotonic() - t0) from None
        raise DatabaseError(f"{target}: cannot use the calibration database ({text}); "
                            "it was left untouched") from None
    return db


def _remember_file(db: pw.Database) -> None:
    global _opened_file
    _opened_file = None
    if isinstance(db, pw.SqliteDatabase):
        with contextlib.suppress(OSError):
            path = os.path.abspath(db.database)
            st = os.stat(path)
            _opened_file = (path, st.st_dev, st.st_ino)


def check_file() -> None:
    """Check that the SQLite file the models use is still the one opened.

    A removed file would swallow every write unseen (SQLite writes on into the deleted
    file): it is :class:`DatabaseUnavailable` until a file is back at its path.  A file put
    back (restored from a backup) is opened in its place if it is a calibration database.

    Raises
    ------
    DatabaseUnavailable
        The file is gone, or what is at its path is not a calibration database.
    """
    global _opened_file
    obj = database.obj
    if _opened_file is None or not isinstance(obj, pw.SqliteDatabase):
        return
    path = _opened_file[0]
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DatabaseUnavailable(f"{path}: database file removed "
                                  f"({exc.strerror or exc})") from None
    if (path, st.st_dev, st.st_ino) == _opened_file:
        return
    obj.close()
    obj.connect()
    try:
        ok = "schema_info" in set(obj.get_tables())
    except pw.DatabaseError as exc:
        ok, why = False, str(exc)
    else:
        why = "no gsaoi_watch tables"
    if not ok:
        obj.close()
        raise DatabaseUnavailable(f"{path}: the file put in place of the database is not a "
                                  f"calibration database ({why})")
    _opened_file = (path, st.st_dev, st.st_ino)
    log.warning("database %s was replaced: using the file now at its path", path)


def _check_version(db, target):
    version = SchemaInfo.select(pw.fn.MAX(SchemaInfo.version)).scalar() or 0
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{target}: schema version {version} is newer than this "
                            f"gsaoi_watch understands ({SCHEMA_VERSION}); upgrade gsaoi_watch")
    if version < SCHEMA_VERSION:
        with db.atomic():
            for upgrade in _UPGRADES[version:SCHEMA_VERSION]:
                upgrade(db)
            SchemaInfo.create(version=SCHEMA_VERSION)
        log.info("database %s upgraded from schema %d to %d", target, version, SCHEMA_VERSION)


def _add_product_qa(db):
    """Schema 1 -> 2: products carry their QA (JSON)."""
    if "qa" not in {c.name for c in db.get_columns("product")}:
        migrate(SchemaMigrator.from_database(db).add_column("product", "qa",
                                                            pw.TextField(null=True)))


def _add_daemon_table(db):
    """Schema 2 -> 3: the daemon table; one row per calibration (duplicates merged)."""
    db.create_tables([Daemon])
    _merge_duplicate_calibrations()


def _merge_duplicate_calibrations():
    """Keep one row per calibration kind and file name: the copy under calibrations/.

    Before schema 3 a made flat could be registered twice (the product and its copy under
    ``calibrations/processed_flat/``).  The row kept is the copy under ``calibrations/``
    (else the newest); what used the others now uses it; a bad mark on any stays.
    """
    groups: dict[tuple[str, str], list[Product]] = {}
    for row in Product.select().where(Product.is_calibration == True).order_by(  # noqa: E712
            Product.id):
        groups.setdefault((row.kind, row.filename), []).append(row)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        keep = max(rows, key=lambda r: ("calibrations" in Path(r.path).parts[:-1], r.id))
        others = [r.id for r in rows if r.id != keep.id]
        if any(r.is_bad for r in rows):
            Product.update(is_bad=True).where(Product.id == keep.id).execute()
        ProductCalibration.update(calibration=keep.id).where(
            ProductCalibration.calibration.in_(others)).execute()
        Product.delete().where(Product.id.in_(others)).execute()
        log.info("calibration %s: %d duplicate row(s) merged into %s", keep.filename,
                 len(others), keep.path)


def _add_job_crashes(db):
    """Schema 3 -> 4: jobs count the runs whose worker died apart from their tries."""
    if "crashes" not in {c.name for c in db.get_columns("job")}:
        migrate(SchemaMigrator.from_database(db).add_column(
            "job", "crashes", pw.IntegerField(default=0)))


#: Upgrades from version i to i+1 (index i).  Version 0 means "no tables yet".
_UPGRADES = [lambda db: db.create_tables(MODELS), _add_product_qa, _add_daemon_table,
             _add_job_crashes]


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """One atomic write transaction; nested, a savepoint inside the enclosing one.

    On SQLite the outermost one is ``BEGIN IMMEDIATE``: the write lock is taken at the
    start, so a transaction that reads then writes never fails half-way with SQLITE_BUSY;
    the wait for the lock is bounded by the busy timeout.  A lock held past it becomes a
    :class:`DatabaseBusy` that says how long was really waited; a database file removed
    meanwhile, a :class:`DatabaseUnavailable` (:func:`check_file`).
    """
    kwargs = {}
    if database.obj is not None and database.transaction_depth() == 0 and \
            isinstance(database.obj, pw.SqliteDatabase):
        check_file()
        kwargs["lock_type"] = "IMMEDIATE"
    ctx = database.atomic(**kwargs)
    t0 = time.monotonic()
    try:
        ctx.__enter__()
    except pw.OperationalError as exc:
        raise _busy(exc, time.monotonic() - t0) from None
    try:
        yield
    except BaseException as exc:
        ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    try:
        ctx.__exit__(None, None, None)
    except pw.OperationalError as exc:
        raise _busy(exc, time.monotonic() - t0) from None


def _busy(exc: pw.OperationalError, waited: float) -> Exception:
    if "locked" in str(exc) or "busy" in str(exc):
        return DatabaseBusy(f"{getattr(database.obj, 'database', 'database')}: locked by "
                            f"another writer (waited {waited:.1f} s)", waited)
    return exc


def close_database() -> None:
    """Close the connection bound to the models, if any."""
    if database.obj is not None and not database.is_closed():
        database.close()

