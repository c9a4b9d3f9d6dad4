"""IMAP logins: Everlock users, checked by accounts.authentication, and the session a login
opens."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from django.conf import settings
from proxyprotocol.sock import SocketInfo
from pymap.config import IMAPConfig
from pymap.context import socket_info
from pymap.exceptions import (
    AuthorizationFailure,
    InvalidAuth,
    NotAllowedError,
    ResponseError,
)
from pymap.interfaces.login import IdentityInterface, LoginInterface
from pymap.parsing.response import ResponseNo
from pymap.parsing.response.code import ResponseCode
from pymap.token import AllTokens
from pysasl.creds.server import ServerCredentials

from accounts.authentication import Throttled, authenticate
from accounts.models import User
from everlock_site import metrics
from mail.imap import store
from mail.imap.config import Config
from mail.imap.session import MailboxSet, Session
from mail.imap.store import Access
from mail.imap.threads import run

log = logging.getLogger("mail.imap")


class Login(LoginInterface):
    """Everlock users: the login of submission (exact name, then local part), the same
    password cache, throttle and timing (accounts.authentication)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tokens = AllTokens(config)

    @property
    def tokens(self) -> AllTokens:
        return self._tokens

    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        info: SocketInfo = socket_info.get()
        peer = info.peername
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        check = PasswordCheck(credentials.authcid, client_address=address)
        try:
            await run(credentials.verify, check)
        except Throttled:
            metrics.IMAP_LOGINS.labels("throttled").inc()
            raise LoginThrottled() from None
        if check.user is None:
            metrics.IMAP_LOGINS.labels("failed").inc()
            raise InvalidAuth()
        metrics.IMAP_LOGINS.labels("ok").inc()
        return Identity(check.user, self.config, login=credentials.authcid)

    async def authorize(self, authenticated: IdentityInterface, authzid: str) -> Identity:
        assert isinstance(authenticated, Identity)
        # No acting as someone else: the authorization identity, when given, is the login.
        if authzid and authzid not in (authenticated.name, authenticated.login):
            raise AuthorizationFailure()
        return authenticated


class LoginThrottled(ResponseError):
    """Too many failed logins from the client's address: refused without checking."""

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, b"Too many failed logins, try again later.", ResponseCode.of(b"UNAVAILABLE"))


class TooManySessions(ResponseError):
    """The user has EVERLOCK_IMAP_MAX_SESSIONS_PER_USER sessions open in this process."""

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, b"Too many sessions open for this user.", ResponseCode.of(b"LIMIT"))


# Logged-in sessions of this process, by user id.
_sessions: Counter[int] = Counter()


class PasswordCheck:
    """A pysasl identity that checks the password its credentials carry with
    accounts.authentication (pysasl's seam: the server verifies credentials against an
    identity). Blocking: call `credentials.verify(check)` in a worker thread."""

    def __init__(self, login: str, *, client_address: str) -> None:
        self.login = login
        self.client_address = client_address
        self.user: User | None = None

    @property
    def authcid(self) -> str:
        return self.login

    def compare_authcid(self, authcid: str) -> bool:
        return authcid == self.login

    def compare_secret(self, secret: str) -> bool:
        self.user = authenticate(self.login, secret, client_address=self.client_address, service="imap")
        return self.user is not None

    def get_clear_secret(self) -> str | None:
        return None


class Identity(IdentityInterface):
    def __init__(self, user: User, config: IMAPConfig, *, login: str) -> None:
        self.user = user
        self.config = config
        self.login = login

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def roles(self) -> frozenset[str]:
        return frozenset()

    @asynccontextmanager
    async def new_session(self) -> AsyncIterator[Session]:
        limit = settings.EVERLOCK_IMAP_MAX_SESSIONS_PER_USER
        if _sessions[self.user.pk] >= limit:
            log.warning("imap: session of %s refused: %d sessions open", self.user.username, limit)
            raise TooManySessions()
        accesses = await run(_open_accesses, self.user)
        _sessions[self.user.pk] += 1
        metrics.IMAP_SESSIONS.inc()
        try:
            yield Session(self.user.username, MailboxSet(accesses), self.config)
        finally:
            metrics.IMAP_SESSIONS_CLOSED.inc()
            _sessions[self.user.pk] -= 1
            if not _sessions[self.user.pk]:
                del _sessions[self.user.pk]

    async def new_token(self, *, expiration: datetime | None = None) -> str | None:
        return None

    async def get(self):
        raise NotAllowedError("User metadata is managed in the Everlock console.")

    async def set(self, metadata) -> int | None:
        raise NotAllowedError("User metadata is managed in the Everlock console.")

    async def delete(self) -> None:
        raise NotAllowedError("Users are managed in the Everlock console.")


def _open_accesses(user: User) -> list[Access]:
    accesses = store.accesses(user)
    if accesses and not accesses[0].prefix:
        store.ensure_special_folders(accesses[0].mailbox_id)
    return accesses
