"""The admin web UI's HTTP listener: Django's WSGI application under waitress.

waitress is a production WSGI server in pure Python; it runs its own accept loop and request
threads, so the listener lives in a thread beside the asyncio listeners of `everlock serve`.
The admin's static files are served by WhiteNoise from the installed apps (no collectstatic).
The admin belongs on the admin network: the default address is loopback, and TLS is a
reverse proxy's job (see EVERLOCK_ADMIN_HTTPS in settings).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

from waitress.server import create_server

from everlock_site.listen import ListenAddress, binding, stop_on_signals

log = logging.getLogger("everlock_site.http")

# Requests served at once; the admin has few users, and each thread holds a database connection.
HTTP_THREADS = 4
# Seconds a request may keep running after a stop before the listener gives up on it.
STOP_TIMEOUT = 5.0


class HTTPListener:
    """A running waitress server in its own thread; close() and wait_closed() stop it."""

    def __init__(self, server) -> None:
        self.server = server
        self.address = ListenAddress(str(server.effective_host), int(server.effective_port))
        self.thread = threading.Thread(target=server.run, name="frontend-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        # The asyncore map belongs to the server thread: close its sockets from there. With
        # the map empty, the loop returns.
        self.server.trigger.pull_trigger(self._close_all)

    def _close_all(self) -> None:
        for dispatcher in list(self.server._map.values()):
            dispatcher.close()

    async def wait_closed(self) -> None:
        await asyncio.to_thread(self.thread.join, STOP_TIMEOUT)
        await asyncio.to_thread(self.server.task_dispatcher.shutdown, timeout=STOP_TIMEOUT)


def bind_http(listen: ListenAddress) -> HTTPListener:
    """Bind the admin web UI on `listen` and return the (not yet started) listener."""
    from everlock_site.wsgi import application

    if not listen.reuse_port:
        address = {"host": listen.host, "port": listen.port}
    else:
        # waitress has no SO_REUSEPORT option, but serves sockets bound for it.
        sock = socket.socket(socket.AF_INET6 if ":" in listen.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((listen.host, listen.port))
        except OSError:
            sock.close()
            raise
        address = {"sockets": [sock]}
    server = create_server(application, **address, threads=HTTP_THREADS, ident="Everlock")
    return HTTPListener(server)


async def start_http(*, listens: dict) -> HTTPListener:
    """Bind and start the admin web UI on listens["http"] (a ListenAddress); return it.

    Logs the binding line, then the address actually bound (the real port for port 0).
    """
    listen: ListenAddress = listens["http"]
    log.info("frontend-http: binding HTTP admin listener on %s", listen)
    with binding(listen):
        listener = await asyncio.to_thread(bind_http, listen)
    listener.start()
    log.info("HTTP admin listener on %s", listener.address)
    return listener


async def serve_http(listen: ListenAddress) -> None:
    """Run the admin web UI until SIGINT or SIGTERM (runhttp)."""
    listener = await start_http(listens={"http": listen})
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        listener.close()
        await listener.wait_closed()
