"""The calibration database (peewee): ledger of frames, sequences, jobs and products.

SQLite in WAL mode by default (a path or ``sqlite:///path``), or a PostgreSQL server
(``postgresql://`` or ``postgres://`` URL in libpq's form, read by libpq itself, so a unix
socket is ``postgresql://user@/db?host=/run/postgresql&port=5432``; the driver is psycopg 3,
the ``postgres`` extra).  On SQLite one writer at a time: its busy timeout gives a bounded
wait for the lock, then :class:`DatabaseBusy` says so.  On PostgreSQL writers run side by
side (READ COMMITTED); what must not race (one row per path, per data label, per
calibration name) takes a transaction-scoped advisory lock (:func:`claim`).  The schema
carries a version; an older database is upgraded in place, a newer one refused, whichever
the backend; creation and upgrades hold the schema lock, so two processes opening a new
database create it once.
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
from urllib.parse import urlsplit

import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate

from gsaoi_watch.errors import GsaoiWatchError

__all__ = [
    'Command', 'Daemon', 'DatabaseBusy', 'DatabaseError', 'DatabaseUnavailable', 'Frame',
    'Job', 'Product', 'ProductCalibration',
    'SCHEMA_VERSION', 'SchemaInfo', 'Sequence', 'checksum', 'claim', 'close_database',
    'database', 'check_file', 'describe_target', 'is_postgres', 'open_database',
    'unavailable', 'wipe_database', 'writing',
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5


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


#: SQLSTATE classes and codes of PostgreSQL errors that say "not now" rather than "wrong":
#: connection exceptions (08), a transaction rolled back by a serialization failure or a
#: deadlock (40), insufficient resources such as too many connections or a full disk (53),
#: an operator intervention such as a server shutting down or starting (57), a system error
#: (58), a lock not available (55P03).
_PG_UNAVAILABLE = ("08", "40", "53", "57", "58", "55P03")


def _pg_unavailable(exc: BaseException) -> bool | None:
    """For an error from psycopg (wrapped by peewee or not): whether it is "not now"."""
    for err in (exc, exc.__cause__, exc.__context__, *exc.args[:1]):
        if not isinstance(err, BaseException) or \
                not type(err).__module__.startswith(("psycopg", "psycopg2")):
            continue
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if state:
            return str(state).startswith(_PG_UNAVAILABLE)
        # no SQLSTATE: raised by the client, e.g. the connection refused, lost or closed
        return type(err).__name__ in ("OperationalError", "InterfaceError")
    return None


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable (retry later), not a bug or bad data.

    A :class:`DatabaseUnavailable` (:class:`DatabaseBusy` included); a peewee/sqlite3
    operational error about a lock, a missing or unreadable file, an I/O error or a full
    disk; a PostgreSQL error of a connection lost or refused, a serialization failure or
    deadlock (the transaction is rolled back and may be run again), too many connections,
    a server shutting down or starting.  Integrity errors are not.
    """
    if isinstance(exc, DatabaseUnavailable):
        return True
    pg = _pg_unavailable(exc)
    if pg is not None:
        return pg
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

    key = pw.TextField(unique=True)
    kind = pw.CharField()
    observation_id = pw.CharField(null=True)
    object = pw.CharField(null=True)
    filter_name = pw.CharField(null=True)
    exposure_time = pw.FloatField(null=True)
    read_mode = pw.CharField(null=True)
    roi = pw.BooleanField(default=False)
    state = pw.CharField(default="OPEN", index=True)
    reason = pw.TextField(null=True)
    opened = pw.DateTimeField(default=_now)
    updated = pw.DateTimeField(default=_now)
    last_frame_ut = pw.DateTimeField(null=True)
    wait_started = pw.DateTimeField(null=True)
    stale = pw.BooleanField(default=False)
    quicklook = pw.BooleanField(default=False)
    owner = pw.TextField(default="", index=True)  # the engine that reduces it (schema 5)
    # backrefs (declared for the type checker; peewee adds them)
    frames: pw.ModelSelect[Frame]
    jobs: pw.ModelSelect[Job]


class Command(_Model):
    """An operator request to the running daemon (e.g. close a sequence), done once."""

    verb = pw.CharField()
    argument = pw.TextField(null=True)
    created = pw.DateTimeField(default=_now)
    done = pw.DateTimeField(null=True)
    owner = pw.TextField(default="", index=True)  # the daemon asked (schema 5)


class Frame(_Model):
    """A raw file seen by gsaoi_watch: the ledger row (checksum, state, tries, error)."""

    path = pw.TextField(unique=True)  # text: PostgreSQL would cut a VARCHAR(255)
    data_label = pw.CharField(unique=True, null=True)
    checksum = pw.CharField(null=True)
    size = pw.BigIntegerField(null=True)
    descriptors = pw.TextField(default="{}")
    tags = pw.TextField(default="")
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
    owner = pw.TextField(default="", index=True)  # the engine that runs it (schema 5)
    sequence_id: int | None  # the foreign key's column (peewee adds it)
    products: pw.ModelSelect[Product]  # backref


class Product(_Model):
    """A file gsaoi_watch made or was given: calibrations and reduced frames."""

    path = pw.TextField(unique=True)
    filename = pw.TextField(index=True)
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
    owner = pw.TextField(default="", index=True)  # what it reduces: host and raw directory


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


def is_postgres(target: str | os.PathLike[str]) -> bool:
    """Whether a database target is a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return str(target).split("://", 1)[0].lower() in ("postgresql", "postgres") \
        if _is_url(str(target)) else False


def describe_target(target: str | os.PathLike[str]) -> str:
    """A database path or URL as it may be shown: a URL's password replaced by ``***``.

    Examples
    --------
    >>> describe_target("postgresql://astro:s3cret@db/gsaoi?sslmode=require")
    'postgresql://astro:***@db/gsaoi?sslmode=require'
    >>> describe_target("postgresql://astro@/gsaoi?host=/run/postgresql&password=s3cret")
    'postgresql://astro@/gsaoi?host=/run/postgresql&password=***'
    """
    text = str(target)
    if not _is_url(text):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.split("://", 1)[0] + "://***"
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc[1]}")
    if "password=" in parts.query.lower():  # libpq also takes ?password=...
        query = "&".join("password=***" if q.lower().startswith("password=") else q
                         for q in parts.query.split("&"))
        parts = parts._replace(query=query)
    # by hand: urlunsplit drops the empty host of libpq's unix-socket form (postgresql:///db)
    return (f"{parts.scheme}://{parts.netloc}{parts.path}"
            + (f"?{parts.query}" if parts.query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def _sqlite_path(target: str) -> str:
    """The file of a ``sqlite:///path`` URL (``sqlite:////abs`` or ``sqlite:///rel``)."""
    return target.split("://", 1)[1][1:] if target.lower().startswith("sqlite://") else target


def _postgres(target: str) -> _Postgres:
    """A deferred-connection PostgreSQL database for a libpq URL (psycopg 3, else psycopg2).

    The URL goes to libpq whole (``postgres://`` spelt ``postgresql://``, which peewee hands
    over as a connection string), so every libpq form works: a unix socket directory as
    ``host=``, ``sslmode=``, ``connect_timeout=``, percent-encoded parts.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise DatabaseError(
                f"{describe_target(target)}: PostgreSQL needs the psycopg driver, which is "
                "not installed; pip install 'gsaoi-watch[postgres]'") from None
    url = "postgresql://" + target.split("://", 1)[1]
    return _Postgres(url, prefer_psycopg3=True)


class _Postgres(pw.PostgresqlDatabase):
    """PostgreSQL with a bounded wait for locks on every connection (reconnections too)."""

    lock_timeout = LOCK_TIMEOUT

    def _initialize_connection(self, conn):
        with conn.cursor() as cursor:  # autocommit: a session setting, not a transaction
            cursor.execute(f"SET lock_timeout = {int(max(self.lock_timeout, 0.1) * 1000)}")


def open_database(target: str | os.PathLike[str], *, create: bool = False,
                  lock_timeout: float | None = None) -> pw.Database:
    """Open (and with ``create``, initialise) the database at a path or URL.

    Parameters
    ----------
    target : str or os.PathLike
        A file path or ``sqlite:///`` URL (SQLite), or a ``postgresql://`` /
        ``postgres://`` URL (PostgreSQL, a server's database that exists; its tables are
        created on first use).
    create : bool
        Create the SQLite file and tables if missing; otherwise a missing SQLite database is
        an error.  A PostgreSQL database without tables gets them either way.
    lock_timeout : float, optional
        SQLite's busy wait (seconds) for a lock another process holds, before
        :class:`DatabaseBusy` (default :data:`LOCK_TIMEOUT`; the daemon waits briefly, then
        retries with backoff).  On PostgreSQL the longest wait for a row or advisory lock.

    Returns
    -------
    peewee.Database
        Also bound to the module-level ``database`` proxy used by the models.

    Raises
    ------
    DatabaseError
        Missing (without ``create``), not a database (corrupt), locked, a newer schema, a
        missing PostgreSQL driver or a server that cannot be reached: one line naming the
        database (a URL without its password) and the problem.
    """
    target = str(target)
    shown = describe_target(target)
    lock_timeout = LOCK_TIMEOUT if lock_timeout is None else lock_timeout
    if is_postgres(target):
        pg = _postgres(target)
        pg.lock_timeout = lock_timeout
        db: pw.Database = pg
    elif _is_url(target) and not target.lower().startswith("sqlite://"):
        raise DatabaseError(f"{shown}: not a supported database URL (use a SQLite file path "
                            "or a postgresql:// URL)")
    else:
        path = Path(_sqlite_path(target))
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
        if not existing and not create and not isinstance(db, pw.PostgresqlDatabase):
            raise DatabaseError(f"{shown}: empty file, not a calibration database; "
                                "run 'gsaoi-watch caldb init'")
        if existing and "schema_info" not in existing:
            raise DatabaseError(f"{shown}: not a gsaoi_watch calibration database "
                                f"(tables {sorted(existing)})")
        if "schema_info" not in existing or _version() != SCHEMA_VERSION:
            with _schema_lock(db):  # created or upgraded by one process at a time
                _create_or_upgrade(db, shown)
    except pw.PeeweeException as exc:
        db.close()
        text = _first_line(exc)
        if "locked" in text:
            raise DatabaseBusy(f"{shown}: database is locked by another writer "
                               f"(waited {time.monotonic() - t0:.1f} s)",
                               time.monotonic() - t0) from None
        if isinstance(db, pw.PostgresqlDatabase):
            raise DatabaseError(f"{shown}: cannot use the PostgreSQL database ({text})") \
                from None
        raise DatabaseError(f"{shown}: cannot use the calibration database ({text}); "
                            "it was left untouched") from None
    except DatabaseError:
        db.close()
        raise
    return db


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _version() -> int:
    return SchemaInfo.select(pw.fn.MAX(SchemaInfo.version)).scalar() or 0


@contextlib.contextmanager
def _schema_lock(db: pw.Database) -> Iterator[None]:
    """A transaction that holds the schema lock: SQLite's write lock, a PostgreSQL advisory lock.

    PostgreSQL's DDL is transactional, so a creation or upgrade is all or nothing there too.
    """
    if isinstance(db, pw.SqliteDatabase):
        with db.atomic(lock_type="IMMEDIATE"):
            yield
        return
    with db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key("schema"),))
        yield


def _create_or_upgrade(db: pw.Database, shown: str) -> None:
    """Inside the schema lock: create the tables of a new database, or upgrade an older one."""
    if "schema_info" not in set(db.get_tables()):
        db.create_tables(MODELS)
        SchemaInfo.create(version=SCHEMA_VERSION)
        return
    _check_version(db, shown)


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


def _add_owners(db):
    """Schema 4 -> 5: sequences, jobs, commands and daemons name their engine (owner).

    Rows from before have owner ``""``: the first engine that recovers on the database
    takes them (:meth:`gsaoi_watch.daemon.engine.Engine.adopt`).
    """
    migrator = SchemaMigrator.from_database(db)
    for table in ("sequence", "job", "command", "daemon"):
        if "owner" not in {c.name for c in db.get_columns(table)}:
            migrate(migrator.add_column(table, "owner", pw.TextField(default="")),
                    migrator.add_index(table, ("owner",)))


#: Upgrades from version i to i+1 (index i).  Version 0 means "no tables yet".
_UPGRADES = [lambda db: db.create_tables(MODELS), _add_product_qa, _add_daemon_table,
             _add_job_crashes, _add_owners]


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """One atomic write transaction; nested, a savepoint inside the enclosing one.

    On SQLite the outermost one is ``BEGIN IMMEDIATE``: the write lock is taken at the
    start, so a transaction that reads then writes never fails half-way with SQLITE_BUSY;
    the wait for the lock is bounded by the busy timeout.  A lock held past it becomes a
    :class:`DatabaseBusy` that says how long was really waited; a database file removed
    meanwhile, a :class:`DatabaseUnavailable` (:func:`check_file`).  On PostgreSQL it is a
    plain ``BEGIN`` (READ COMMITTED): writers do not exclude each other, and what must not
    race is claimed by name inside it (:func:`claim`); a connection lost, a deadlock or a
    serialization failure rolls it back with an error :func:`unavailable` recognises.
    """
    kwargs = {}
    obj = database.obj
    if obj is not None and database.transaction_depth() == 0:
        if isinstance(obj, pw.SqliteDatabase):
            check_file()
            kwargs["lock_type"] = "IMMEDIATE"
        elif not obj.is_closed() and not obj.is_connection_usable():
            log.warning("database connection lost (closed by the server): a new one is "
                        "opened for this transaction")
            obj.close()  # a connection the server dropped: this transaction opens a new one
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


def _lock_key(text: str) -> int:
    """A signed 64-bit advisory-lock key for a text (stable across processes and hosts)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim(*keys: str) -> None:
    """Hold, until the enclosing transaction ends, the locks named by ``keys``.

    What must stay one row (a frame per path or data label, a calibration per kind and
    file name, a sequence per key) is looked up and then inserted or updated under the
    lock of its name, so two writers on one database cannot both find it missing.  On
    PostgreSQL each key is a transaction-scoped advisory lock (taken in sorted order, so
    two writers claiming the same keys cannot deadlock on them); on SQLite the write
    transaction (``BEGIN IMMEDIATE``, :func:`writing`) already excludes every other writer.
    A wait past the lock timeout raises an error :func:`unavailable` recognises.

    Must be called inside :func:`writing`.
    """
    obj = database.obj
    if not isinstance(obj, pw.PostgresqlDatabase):
        return
    if obj.transaction_depth() == 0:
        raise RuntimeError("claim() outside a transaction would lock nothing")
    for key in sorted({_lock_key(k) for k in keys}):
        obj.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))


def _busy(exc: pw.OperationalError, waited: float) -> Exception:
    if "locked" in str(exc) or "busy" in str(exc):
        return DatabaseBusy(f"{getattr(database.obj, 'database', 'database')}: locked by "
                            f"another writer (waited {waited:.1f} s)", waited)
    return exc


def wipe_database(target: str | os.PathLike[str]) -> None:
    """Remove a calibration database: the SQLite file, or gsaoi_watch's tables on a server.

    Raises
    ------
    DatabaseError
        The server cannot be reached or the tables cannot be dropped.
    """
    target = str(target)
    if not is_postgres(target):
        for suffix in ("", "-wal", "-shm"):
            Path(_sqlite_path(target) + suffix).unlink(missing_ok=True)
        return
    db = _postgres(target)
    database.initialize(db)  # the models drop their tables through the proxy
    try:
        with db.connection_context(), db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key("schema"),))
            db.drop_tables(MODELS, safe=True, cascade=True)
    except pw.PeeweeException as exc:
        raise DatabaseError(f"{describe_target(target)}: cannot use the PostgreSQL database "
                            f"({_first_line(exc)})") from None


def close_database() -> None:
    """Close the connection bound to the models, if any."""
    if database.obj is not None and not database.is_closed():
        database.close()

