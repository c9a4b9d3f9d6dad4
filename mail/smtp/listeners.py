"""The SMTP listeners of a process: inbound (port 25), submission (587) and submission
over implicit TLS (465), each an aiosmtpd server (mail.smtp.server) with its handler
(mail.smtp.inbound, mail.smtp.submission), sharing one group commit."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async

from everlock_site.listen import AcceptErrorLog, binding, raise_open_file_limit
from mail.smtp.group_commit import GroupCommitter
from mail.smtp.inbound import InboundHandler
from mail.smtp.server import (
    ConnectionCounter,
    SMTPConfig,
    SMTPProtocolFactory,
    fitted_to_open_files,
)
from mail.smtp.submission import SubmissionHandler

log = logging.getLogger("mail.smtp")


class Listeners:
    """The running listeners of start_listeners: close() then await wait_closed()."""

    def __init__(self, servers: list[asyncio.Server], committer: GroupCommitter):
        self.servers = servers
        self.committer = committer

    @property
    def sockets(self):
        return [s for server in self.servers for s in server.sockets]

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()
        # The commit thread ends after what it holds (and closes its connections).
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.committer.stop(wait=True))


async def start_server(
    *,
    host: str,
    port: int,
    handler,
    config: SMTPConfig,
    counter: ConnectionCounter,
    offers_auth: bool,
    implicit_tls: bool = False,
    reuse_port: bool = False,
) -> asyncio.Server:
    """A listener; with `implicit_tls`, TLS from the first byte (RFC 8314 section 3.3);
    with `reuse_port`, sharing its port with other processes (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        SMTPProtocolFactory(
            handler, config=config, counter=counter, offers_auth=offers_auth, implicit_tls=implicit_tls
        ),
        host=host,
        port=port,
        reuse_address=True,
        reuse_port=reuse_port,
        ssl=config.tls_context if implicit_tls else None,
    )


def _bound(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_listeners(*, listens, config: SMTPConfig | None = None) -> Listeners:
    """Bind the inbound (listens["smtp"]), submission (listens["submission"]) and implicit
    TLS submission (listens["submissions"], RFC 8314) listeners; any may be None or absent.
    Logs the startup lines of the product doc on logger mail.smtp."""
    if config is None:
        config = await sync_to_async(SMTPConfig.from_settings, thread_sensitive=False)()
    listeners = sum(1 for key in ("smtp", "submission", "submissions") if listens.get(key) is not None)
    config = fitted_to_open_files(config, listeners=listeners, open_files=raise_open_file_limit())
    AcceptErrorLog.install(asyncio.get_running_loop())
    counter = ConnectionCounter()
    committer = GroupCommitter()
    servers = []
    try:
        submission = SubmissionHandler(config, committer)
        for key, kind, handler, offers_auth, implicit_tls in (
            ("smtp", "inbound", InboundHandler(config, committer), False, False),
            ("submission", "submission", submission, True, False),
            ("submissions", "implicit TLS submission", submission, True, True),
        ):
            address = listens.get(key)
            if address is None:
                continue
            log.info("frontend-smtp: binding %s listener on %s", kind, address)
            with binding(address):
                server = await start_server(
                    host=address.host,
                    port=address.port,
                    handler=handler,
                    config=config,
                    counter=counter,
                    offers_auth=offers_auth,
                    implicit_tls=implicit_tls,
                    reuse_port=address.reuse_port,
                )
            servers.append(server)
            log.info("SMTP %s listener on %s", kind, address if address.port else _bound(server))
    except BaseException:
        for server in servers:
            server.close()
        committer.stop()
        raise
    return Listeners(servers, committer)
