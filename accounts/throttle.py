"""The login throttle: how many password guesses a client address, and an account, may make.

The policy (every listener that checks passwords shares it: SMTP AUTH, the SSH console, the
admin web login, IMAP):

- per client address: after `max_failures` failed checks within `window` seconds, further
  attempts from that address are refused (Throttled) without checking the password, until
  the window of the first counted failure has passed;
- per login (the account, whether it exists or not): every failure within the window makes
  the next check of that login wait longer (`login_delay`, from 0.25 s doubling to 4 s), from
  any address; after `max_login_failures` failures within the window, checks of that login
  are refused from every address but its known-good ones. Guesses spread over many addresses
  are bounded per account;
- known-good addresses: an address from which a login succeeded within `known_good_days` is
  known-good for that login. There the owner is neither refused by the address limit (someone
  else guessing behind the same address) nor by the account limit (someone guessing the
  account from elsewhere); only the delay applies. The exemption lapses for the rest of a
  window once that login has failed `max_failures` times from that address itself.

The counters live in Django's default cache (the database cache, so every process of the
installation shares them). They are read-modify-write on the cache: under heavy concurrency
a few failures may be counted once instead of twice. That is the price of needing no extra
service; the limits still hold within a small margin.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.cache import cache

# A login may fail this many times in the window before its checks are slowed down.
FREE_LOGIN_FAILURES = 3
# The first delay, doubled with every further failure, and its ceiling (seconds).
LOGIN_DELAY_BASE = 0.25
LOGIN_DELAY_MAX = 4.0


class Throttled(Exception):
    """Too many failed password checks from this client address (or, with `login`, for this
    account); try again after `retry_after`."""

    def __init__(self, client_address: str, retry_after: float, *, login: str | None = None):
        source = f"for {login!r}" if login is not None else f"from {client_address}"
        super().__init__(f"too many failed logins {source}; retry in {retry_after:.0f}s")
        self.client_address = client_address
        self.login = login
        self.retry_after = retry_after


def login_delay(failures: int) -> float:
    """Seconds to wait before checking a password for a login with `failures` recent failures."""
    if failures < FREE_LOGIN_FAILURES:
        return 0.0
    return min(LOGIN_DELAY_BASE * 2 ** (failures - FREE_LOGIN_FAILURES), LOGIN_DELAY_MAX)


def _key(kind: str, value: str) -> str:
    # Cache keys must be short and printable; logins and addresses are neither guaranteed.
    return f"everlock:auth:{kind}:{hashlib.sha256(value.encode()).hexdigest()}"


def _pair(login: str, client_address: str) -> str:
    return f"{login.casefold()}\n{client_address}"


@dataclass
class Throttle:
    """Failure counters for one policy; `clock` is injectable for tests."""

    max_failures: int
    window: float
    max_login_failures: int = 30
    known_good_days: float = 30
    clock: Callable[[], float] = field(default=time.time)
    # What the last check() found: the address is known-good for the login.
    known_good: bool = field(default=False, init=False)

    def _current(self, counter: tuple[int, float]) -> tuple[int, float]:
        """(failures, start of the window) of a counter; an expired window counts zero."""
        count, since = counter
        if self.clock() - since >= self.window:
            return 0, 0.0
        return count, since

    def _bump(self, key: str, counter: tuple[int, float]) -> int:
        count, since = self._current(counter)
        now = self.clock()
        if count == 0:
            since = now
        remaining = max(1, int(since + self.window - now) + 1)
        cache.set(key, (count + 1, since), timeout=remaining)
        return count + 1

    def _keys(self, login: str, client_address: str) -> tuple[str, str, str, str]:
        pair = _pair(login, client_address)
        return (
            _key("addr", client_address),
            _key("login", login.casefold()),
            _key("pair", pair),
            _key("good", pair),
        )

    def check(self, *, login: str, client_address: str) -> float:
        """Before a password check: return how long to wait first.

        Raises Throttled when `client_address` has used up its failures in the window, or the
        login has used up its own, unless the address is known-good for the login.
        """
        addr_key, login_key, pair_key, good_key = keys = self._keys(login, client_address)
        counters = cache.get_many(list(keys))  # one query for all
        login_failures, login_since = self._current(counters.get(login_key, (0, 0.0)))
        pair_failures, _ = self._current(counters.get(pair_key, (0, 0.0)))
        self.known_good = good_key in counters
        if not (self.known_good and pair_failures < self.max_failures):
            count, since = self._current(counters.get(addr_key, (0, 0.0)))
            if count >= self.max_failures:
                raise Throttled(client_address, since + self.window - self.clock())
            if login_failures >= self.max_login_failures:
                raise Throttled(client_address, login_since + self.window - self.clock(), login=login)
        return login_delay(login_failures)

    def record_failure(self, *, login: str, client_address: str) -> tuple[int, int]:
        """Count one failed check; return (failures of the address, failures of the login)."""
        keys = self._keys(login, client_address)[:3]
        counters = cache.get_many(list(keys))
        addr, login_count, _ = (self._bump(key, counters.get(key, (0, 0.0))) for key in keys)
        return addr, login_count

    def record_success(self, *, login: str, client_address: str) -> None:
        """A login succeeded from `client_address`: from now on it is known-good for the login
        (written once per known_good_days, not at every login, when check() found it so)."""
        if self.known_good:
            return
        good_key = self._keys(login, client_address)[3]
        cache.set(good_key, True, timeout=int(self.known_good_days * 86400))
