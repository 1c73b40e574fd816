"""The live page's tornado application: routes, handlers, security headers, database reads.

Routes: ``/`` (the page: static HTML whose script fetches the JSON), ``/static/...`` (its
script and style sheet, package data), ``/api/frames``, ``/api/sequences``, ``/api/files``,
``/api/status`` (JSON, :mod:`gsaoi_watch.web.queries`) and ``/pictures/<product id>.png``.

Every answer carries a Content-Security-Policy that allows scripts, styles, images and
fetches from the page's own origin only (no inline script, no ``eval``, nothing from another
host), ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``.  Data reach the page
only as JSON, which the script puts in the document as text (``textContent``), never as
markup.  A page served on a loopback address answers only requests whose ``Host`` is a
loopback name (a web page elsewhere cannot read it through DNS rebinding).

Database reads run on one worker thread of their own (the IOLoop never waits for the
database), each request on a connection opened for it and closed after, inside one read
transaction.  SQLite's busy wait is the database's own while connecting (the daemon's 2 s:
``BUSY_WAIT``), then :data:`READ_TIMEOUT` per statement; a database locked past it, or
unavailable, is a 503 with a JSON reason; any other exception a 500 and one log line.  (In
WAL mode readers wait for nobody: only a writer in exclusive locking mode or a recovery
holds them up.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import peewee as pw
import tornado.web

from gsaoi_watch.calibration import db
from gsaoi_watch.daemon.boundary import first_line
from gsaoi_watch.web import queries

__all__ = ["CSP", "READ_TIMEOUT", "STATIC_DIR", "make_app", "read"]

log = logging.getLogger(__name__)

#: The page's script, style sheet and HTML (package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"

#: SQLite's busy wait for a read by the page (seconds): then 503, never a hang.
READ_TIMEOUT = 1.0

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _message(exc: tornado.web.HTTPError) -> str:
    """An HTTPError's message with its arguments."""
    text = exc.log_message or exc.reason or ""
    return text % exc.args if exc.args and exc.log_message else text


def read(function: Callable[[], Any]) -> Any:
    """Run ``function`` on this thread's own connection, in one read transaction.

    Raises
    ------
    DatabaseUnavailable
        No database is open, or its SQLite file is gone (connecting would create an empty
        one in its place).
    """
    database = db.database
    obj = database.obj
    if obj is None:
        raise db.DatabaseUnavailable("the database is closed")
    if isinstance(obj, pw.SqliteDatabase) and not os.path.exists(obj.database):
        raise db.DatabaseUnavailable(f"{obj.database}: database file removed")
    with database.connection_context():
        if isinstance(obj, pw.SqliteDatabase):
            database.execute_sql(f"PRAGMA busy_timeout = {int(READ_TIMEOUT * 1000)}")
        with database.atomic():
            return function()


class _Base(tornado.web.RequestHandler):
    """Security headers, the Host check, JSON errors and one-line error logs."""

    def initialize(self, page: dict[str, Any]) -> None:
        self.page = page

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cross-Origin-Resource-Policy", "same-origin")

    def prepare(self) -> None:
        if self.page.get("loopback"):
            host = self.request.host_name.lower()
            if host not in _LOOPBACK_NAMES:
                raise tornado.web.HTTPError(403, reason="Host not allowed")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            reason = _message(exc)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"status": status_code, "error": reason}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):  # 503: the engine logs the database
            text = _message(value)
            log.debug("live page: %s %s: %d %s", self.request.method, self.request.path,
                      value.status_code, text or value.reason)
            return
        log.error("live page: %s %s failed: %s: %s", self.request.method, self.request.path,
                  type(value).__name__, first_line(value))

    async def in_database(self, function: Callable[[], Any]) -> Any:
        """``read(function)`` on the database thread; unavailable → HTTP 503."""
        executor: Executor = self.page["executor"]
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, read, function)
        except Exception as exc:
            if db.unavailable(exc):
                raise tornado.web.HTTPError(
                    503, "database unavailable: %s", first_line(exc)) from None
            raise


class _Api(_Base):
    """One JSON document from a query function."""

    def initialize(self, page: dict[str, Any], query: str) -> None:  # type: ignore[override]
        super().initialize(page)
        self.query = query

    async def get(self) -> None:
        out_dir, owner = self.page["output_dir"], self.page["owner"]
        function = {"frames": lambda: queries.frames(out_dir, owner=owner),
                    "sequences": lambda: queries.sequences(out_dir, owner=owner),
                    "files": lambda: queries.files(owner=owner),
                    "status": lambda: queries.status(owner=owner)}[self.query]
        data = await self.in_database(function)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        # "</" written as "<\/" (as tornado does): the JSON is never markup, even if sniffed
        self.finish(json.dumps(data, allow_nan=False).replace("</", "<\\/"))


class _Picture(_Base):
    """The PNG of a product, by its database id (never a path from the URL)."""

    async def get(self, product_id: str) -> None:
        out_dir = self.page["output_dir"]
        path = await self.in_database(lambda: queries.picture_file(int(product_id), out_dir))
        if path is None:
            raise tornado.web.HTTPError(404, "no picture of product %s", product_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise tornado.web.HTTPError(404, "picture unreadable: %s",
                                        exc.strerror or exc) from None
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "no-cache")
        self.finish(data)


class _Page(_Base):
    """The page itself: fixed HTML (no data in it; the script fetches them)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC_DIR / "index.html").read_bytes())


class _Static(tornado.web.StaticFileHandler):
    """The page's script and style sheet, with the same security headers."""

    def initialize(self, path: str, page: dict[str, Any]) -> None:  # type: ignore[override]
        super().initialize(path)
        self.page = page

    set_default_headers = _Base.set_default_headers
    prepare = _Base.prepare

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests are logged at DEBUG (the page polls; a failure has its own line)."""
    request = handler.request
    log.debug("live page: %d %s %s (%.0f ms)", handler.get_status(), request.method,
              request.uri, 1000.0 * request.request_time())


def make_app(output_dir: str | os.PathLike[str], executor: Executor, *,
             loopback: bool = False, owner: str | None = None) -> tornado.web.Application:
    """The tornado application of the live page.

    Parameters
    ----------
    output_dir : str or os.PathLike
        The daemon's output directory (pictures are served from inside it only).
    executor : concurrent.futures.Executor
        Where database reads run (one thread: each read opens its own connection).
    loopback : bool
        The server listens on a loopback address: only loopback ``Host`` names are served.
    owner : str, optional
        Show only this daemon's rows (:mod:`gsaoi_watch.web.queries`); default all.

    Returns
    -------
    tornado.web.Application
    """
    page = {"output_dir": Path(output_dir).resolve(), "executor": executor,
            "loopback": loopback, "owner": owner}
    routes: list[Any] = [
        (r"/", _Page, {"page": page}),
        (r"/static/(.*)", _Static, {"path": str(STATIC_DIR), "page": page}),
        (r"/pictures/([0-9]{1,12})\.png", _Picture, {"page": page}),
    ]
    for name in ("frames", "sequences", "files", "status"):
        routes.append((rf"/api/{re.escape(name)}", _Api, {"page": page, "query": name}))
    return tornado.web.Application(routes, log_function=_log_request, compress_response=True,
                                   default_handler_class=_NotFound,
                                   default_handler_args={"page": page})


class _NotFound(_Base):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, "no such page")
