"""pymap's settings for Everlock's IMAP listeners."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Sequence
from typing import Any

from pymap.concurrent import Subsystem
from pymap.config import BackendCapability, IMAPConfig


class Config(IMAPConfig):
    """pymap's settings for one Everlock listener: `starttls` for the plain port (143), off
    for implicit TLS (993), where the socket is encrypted before the greeting."""

    def __init__(
        self,
        *,
        ssl_context,
        starttls: bool,
        hostname: str,
        max_append_len: int,
        extra_capabilities: Sequence[bytes] = (),
        commands: Callable[[], Any] | None = None,
    ) -> None:
        args = Namespace(passlib_cfg=None, proxy_protocol="noop", inherited_sockets=None)
        super().__init__(
            args,
            host=None,
            port=0,
            ssl_context=ssl_context,
            tls_enabled=starttls,
            cpu_subsystem=Subsystem.for_asyncio(),
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
            max_append_len=max_append_len,
            bad_command_limit=10,
        )
        self._hostname = hostname
        self._extra_capabilities = tuple(extra_capabilities)
        self._commands = commands

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(
            idle=True, object_id=True, multi_append=True, custom=self._extra_capabilities
        )

    @property
    def login_capability(self):
        # pymap announces BINARY (RFC 3516) but cannot answer BINARY.SIZE: not offered.
        return [cap for cap in super().login_capability if cap != b"BINARY"]

    @property
    def commands(self):
        return self._commands() if self._commands is not None else super().commands

    @property
    def greeting(self) -> bytes:
        return f"{self._hostname} Everlock IMAP ready".encode()

    @property
    def id_response(self):
        return {b"name": b"Everlock"}
