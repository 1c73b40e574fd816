"""The live page's HTTP server: tornado on its own thread, started and stopped by the daemon.

Why tornado: a production HTTP/1.1 server (request parsing, keep-alive, limits on header
and body sizes, slow clients) kept by its maintainers since 2009, with no dependency of its
own; it runs on an asyncio loop in one thread of our choosing and stops cleanly (stop
listening, close the connections, end the loop), which is what a page served from inside
a daemon needs.  The standard library's ``http.server`` is documented as not for
production; a WSGI framework would still need a server beside it (two dependencies or
more), and an ASGI one a server with its own process model.

The socket is bound on the caller's thread (:meth:`LivePage.start`), so that a port in use
is known before the daemon says it is ready; the loop then runs on a daemon thread that
nothing in the engine waits for.  Database reads go to one more thread
(:mod:`gsaoi_watch.web.app`), with a connection of its own per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import tornado.httpserver

from gsaoi_watch.calibration.daemons import owner_of
from gsaoi_watch.config import Config, parse_address
from gsaoi_watch.web.app import make_app

__all__ = ["LivePage", "start_live_page"]

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on the first address ``host`` resolves to (closed on failure).

    (``tornado.netutil.bind_sockets`` leaves the socket of a failed bind open.)
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    sock = socket.create_server(address, family=family, backlog=128)
    sock.setblocking(False)
    return sock


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LivePage:
    """The live page's server on a thread of its own.

    Parameters
    ----------
    output_dir : str or os.PathLike
        The daemon's output directory (pictures are served from it).
    host : str
        Address to listen on (a name, an IPv4 or IPv6 address).
    port : int
        Port (0: any free port; :attr:`port` gives the one bound).
    owner : str, optional
        The daemon's owner (:func:`gsaoi_watch.calibration.daemons.owner_of`): the page
        shows its sequences, jobs and frames only (other daemons may share the database);
        default the whole database.
    """

    def __init__(self, output_dir: str | os.PathLike[str], host: str, port: int, *,
                 owner: str | None = None) -> None:
        self.output_dir = output_dir
        self.owner = owner
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._serving = False
        self._executor: ThreadPoolExecutor | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` of the bound server (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> str:
        """Bind the socket and start serving; return the URL.

        Raises
        ------
        OSError
            The address cannot be bound (port in use, no such host or interface).
        """
        self._sockets = [_listen(self.host, self.requested_port)]
        self.port = int(self._sockets[0].getsockname()[1])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-page-db")
        self._thread = threading.Thread(target=self._run, name="live-page", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or not self._serving:
            self.stop()
            raise OSError(f"the live page's server did not start within {timeout:g} s")
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # noqa: BLE001 -- the page's thread never takes the daemon down
            log.error("live page stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self._ready.set()
            for sock in self._sockets:
                sock.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        assert self._executor is not None
        app = make_app(self.output_dir, self._executor, loopback=_is_loopback(self.host),
                       owner=self.owner)
        server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=60,
                                               body_timeout=10, max_body_size=1 << 16)
        server.add_sockets(self._sockets)
        self._serving = True
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.stop()
            try:
                await asyncio.wait_for(server.close_all_connections(), timeout=2.0)
            except TimeoutError:
                log.warning("live page: connections still open at stop were dropped")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: no new connection, open ones closed, the threads ended."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop ended meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("live page: its thread did not stop within %g s", timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for sock in self._sockets:
            sock.close()


def start_live_page(config: Config) -> LivePage | None:
    """Start the page if ``[http] enabled``; log its URL, or why it could not start.

    A failure to bind (port in use, unknown host) is one ERROR line and None: the daemon
    goes on reducing without its page (the page only shows what the database holds).

    Returns
    -------
    LivePage or None
    """
    if not config.http.enabled:
        return None
    host, port = parse_address(config.http.address)
    page = LivePage(config.paths.output_dir, host, port,
                    owner=owner_of(config.paths.raw_dir))
    try:
        url = page.start()
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        log.error("live page not served: cannot listen on %s (%s); reducing without it",
                  config.http.address, why)
        page.stop()
        return None
    log.info("live page at %s", url)
    return page
