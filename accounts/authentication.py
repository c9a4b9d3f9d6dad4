"""Who is logging in: login resolution, password check, authorization.

Login resolution follows the product doc: an exact match of the stored login first, then,
for a mailbox-style login (`alice@example.com`), the local part before "@".

Password checks go through the login throttle (accounts.throttle) and, once a password has
been verified, through an in-process cache of verified credentials: a client that logs in for
every message pays the deliberately slow password hasher once, not every time. The cache is
keyed by the stored password hash, read from the user row on every check (or from a memory of
the row that every process drops when it changes: the SMTP listeners' directory), so a
password change or a deleted user makes every process forget the old password at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.hashers import make_password

from accounts.grants import ADMIN_RESOURCE, Resource, allows, parse_resource
from accounts.models import User
from accounts.services import AccountError, normalize_login
from accounts.throttle import Throttle, Throttled

log = logging.getLogger("accounts.authentication")

__all__ = ["Throttled", "authenticate", "is_admin", "resolve_login", "user_allows"]


def resolve_login(login: str) -> User | None:
    """The user a client login names, or None."""
    try:
        username = normalize_login(login)
    except AccountError:
        return None
    candidates = [username]
    local, sep, _ = username.rpartition("@")
    if sep:
        candidates.append(local)
    users = {u.username: u for u in User.objects.filter(username__in=candidates, is_active=True)}
    for name in candidates:
        if name in users:
            return users[name]
    return None


class VerifiedCredentials:
    """Passwords already checked against a stored hash, kept as HMACs under a per-process key.

    Entries are keyed by (user pk, stored password hash): a new password or a deleted user
    changes or removes the stored hash, so the old entry can never match again. The plain
    password is never kept; the HMAC key lives only in this process's memory.
    """

    def __init__(self, max_entries: int = 10_000):
        self._secret = secrets.token_bytes(32)
        self._entries: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._checks = [threading.Lock() for _ in range(64)]

    def _mac(self, password: str) -> bytes:
        return hmac.new(self._secret, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def matches(self, user: User, password: str) -> bool:
        with self._lock:
            known = self._entries.get((user.pk, user.password))
        return known is not None and hmac.compare_digest(known, self._mac(password))

    def remember(self, user: User, password: str) -> None:
        mac = self._mac(password)
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            # One entry per user: an older hash of the same user is useless from now on.
            for key in [k for k in self._entries if k[0] == user.pk]:
                del self._entries[key]
            self._entries[(user.pk, user.password)] = mac

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def checking(self, key: object) -> threading.Lock:
        """Held while checking a password of user `key` (its pk) with the hasher: concurrent
        logins of one user (a client sending in parallel) wait for the first check, then find
        it remembered, instead of each paying the hasher. A login naming no user holds one
        too (keyed by the login), so parallel guesses queue the same for either."""
        return self._checks[hash(key) % len(self._checks)]


verified_credentials = VerifiedCredentials()


def current_throttle() -> Throttle:
    """The throttle of the configured policy (settings read at call time, not import)."""
    return Throttle(
        max_failures=settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS,
        window=settings.EVERLOCK_AUTH_FAILURE_WINDOW,
        max_login_failures=settings.EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN,
        known_good_days=settings.EVERLOCK_AUTH_KNOWN_GOOD_DAYS,
    )


def _check_password(user: User | None, login: str, password: str) -> bool:
    """Whether `password` is `user`'s, at the same hasher cost whether the user exists or
    not (as Django's ModelBackend does): the time a wrong answer takes must not tell an
    unknown login from a known one. The verified-credentials memory only ever answers for
    a right password, so it tells nothing to a guesser."""
    if not password:
        return False
    if user is None:
        with verified_credentials.checking(login.casefold()):
            make_password(password)  # the hasher's full work, as checking a stored hash costs
        return False
    if verified_credentials.matches(user, password):
        return True
    with verified_credentials.checking(user.pk):
        if verified_credentials.matches(user, password):
            return True  # verified by a login that held the check before this one
        if user.check_password(password):
            verified_credentials.remember(user, password)
            return True
    return False


def authenticate(
    login: str,
    password: str,
    *,
    client_address: str,
    service: str,
    resolve: Callable[[str], User | None] = resolve_login,
) -> User | None:
    """The active user for (login, password), or None when they do not match.

    `resolve` finds the user of a login: resolve_login, or a caller's memory of it that
    forgets a user as soon as the row changes (the password hash keys the verified
    credentials, so a stale row would keep an old password valid).

    Raises Throttled, without checking the password, when `client_address` or the login has
    failed too often recently (accounts.throttle states the policy). A wrong password costs
    the same whether the login names a user or not. May sleep (up to
    accounts.throttle.LOGIN_DELAY_MAX seconds) when the login has failed often recently, so
    call it from a worker thread, never on an event loop.
    Failures are logged on "accounts.authentication" with the service and the address.
    """
    throttle = current_throttle()
    try:
        delay = throttle.check(login=login, client_address=client_address)
    except Throttled as exc:
        log.warning(
            "%s: login refused for %r from %s: %s",
            service,
            login,
            client_address,
            exc,
            extra={"client": client_address, "login": login, "service": service},
        )
        raise
    if delay:
        time.sleep(delay)
    user = resolve(login)
    if _check_password(user, login, password):
        throttle.record_success(login=login, client_address=client_address)
        return user
    addr_failures, login_failures = throttle.record_failure(login=login, client_address=client_address)
    log.warning(
        "%s: authentication failed for %r from %s (%s; %d failures from the address, %d for the login)",
        service,
        login,
        client_address,
        "unknown login" if user is None else "wrong password",
        addr_failures,
        login_failures,
        extra={"client": client_address, "login": login, "service": service},
    )
    return None


def user_allows(user: User, role: str, resource: Resource) -> bool:
    """May `user` act as `role` on `resource`? Superusers may do anything."""
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    return allows(list(user.grants.values_list("resource", "role")), role, resource)


def is_admin(user: User) -> bool:
    """May `user` administer the installation (the console, the admin UI)?"""
    return user_allows(user, "admin", parse_resource(ADMIN_RESOURCE))
