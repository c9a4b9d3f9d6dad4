"""The HTTPS listener: the MTA-STS policy, mail client autoconfiguration and the admin.

aiohttp terminates TLS on the event loop (a slow handshake holds no thread) with the same
certificate context as the SMTP and IMAP listeners (tls.store: chosen by SNI among the ACME
certificates and the configured pair, renewed without a restart), and hands
each request to the Django WSGI application the HTTP listener serves, through aiohttp-wsgi in
a small thread pool. What a request gets is Django's answer: the MTA-STS and autoconfig files
for a mail domain's names (mail.client_files), the admin for the admin's host names.
The socket is bound with SO_REUSEPORT, so several processes can share the port.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp_wsgi import WSGIHandler

from everlock_site.listen import ListenAddress, binding
from tls.store import listener_store

log = logging.getLogger("everlock_site.http")

# Requests served at once (each holds a thread and a database connection), as over HTTP.
HTTPS_THREADS = 4
# The largest request body taken (an admin form); larger ones are answered 413.
MAX_BODY = 10 * 1024 * 1024


class HTTPSListener:
    """A running aiohttp site; close() and wait_closed() stop it."""

    def __init__(self, runner: web.AppRunner, executor: ThreadPoolExecutor) -> None:
        self.runner = runner
        self.executor = executor
        host, port = runner.addresses[0][:2]
        self.address = ListenAddress(host, port)

    def close(self) -> None:
        """Nothing to do at once: wait_closed() stops accepting and lets requests finish."""

    async def wait_closed(self) -> None:
        await self.runner.cleanup()
        self.executor.shutdown(wait=True)


async def start_https(*, listens, context: ssl.SSLContext | None = None) -> HTTPSListener:
    """Bind and start the HTTPS listener on listens["https"] (a ListenAddress); return it.

    The certificates are this process's store's (tls.store.listener_store), unless `context`
    is given. Raises CommandError when the address cannot be bound.
    """
    from everlock_site.wsgi import application

    listen: ListenAddress = listens["https"]
    if context is None:
        context = (await asyncio.to_thread(listener_store)).context
    executor = ThreadPoolExecutor(HTTPS_THREADS, thread_name_prefix="frontend-https")
    app = web.Application()
    handler = WSGIHandler(application, executor=executor, max_request_body_size=MAX_BODY)
    # The coroutine method itself (as aiohttp-wsgi's own run_server does): aiohttp takes a
    # callable object that is not a coroutine function as a deprecated "bare function".
    app.router.add_route("*", "/{path_info:.*}", handler.handle_request)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=context, reuse_port=True)
    log.info("frontend-https: binding HTTPS listener on %s", listen)
    try:
        with binding(listen):
            await site.start()
    except BaseException:
        await runner.cleanup()
        executor.shutdown(wait=False)
        raise
    listener = HTTPSListener(runner, executor)
    log.info("HTTPS listener on %s", listener.address)
    return listener
