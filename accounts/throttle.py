"""The login throttle: how many password guesses a client address, and a login, may make.

Two counters, kept in Django's default cache (the database cache, so every process of the
installation, SSH console and SMTP listeners alike, shares them):

- per client address: after `max_failures` failed checks within `window` seconds, further
  attempts from that address are refused (Throttled) without checking the password, until
  the window of the first counted failure has passed;
- per login: every failure for a login within the window makes the next check for that login
  wait longer (`login_delay`), from any address. The attempt is slowed, never refused, so an
  attacker guessing from elsewhere cannot lock the real user out; the delay is capped.

The counters are read-modify-write on the cache: under heavy concurrency a few failures may
be counted once instead of twice. That is the price of needing no extra service; the per
address limit still holds within a small margin.
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
    """Too many failed password checks from this client address; try again after `retry_after`."""

    def __init__(self, client_address: str, retry_after: float):
        super().__init__(f"too many failed logins from {client_address}; retry in {retry_after:.0f}s")
        self.client_address = client_address
        self.retry_after = retry_after


def login_delay(failures: int) -> float:
    """Seconds to wait before checking a password for a login with `failures` recent failures."""
    if failures < FREE_LOGIN_FAILURES:
        return 0.0
    return min(LOGIN_DELAY_BASE * 2 ** (failures - FREE_LOGIN_FAILURES), LOGIN_DELAY_MAX)


def _key(kind: str, value: str) -> str:
    # Cache keys must be short and printable; logins and addresses are neither guaranteed.
    return f"everlock:auth:{kind}:{hashlib.sha256(value.encode()).hexdigest()}"


@dataclass
class Throttle:
    """Failure counters for one (max_failures, window) policy; `clock` is injectable for tests."""

    max_failures: int
    window: float
    clock: Callable[[], float] = field(default=time.time)

    def _read(self, key: str) -> tuple[int, float]:
        """(failures, start of the window) of a counter; an expired window counts zero."""
        return self._current(cache.get(key, (0, 0.0)))

    def _current(self, counter: tuple[int, float]) -> tuple[int, float]:
        count, since = counter
        if self.clock() - since >= self.window:
            return 0, 0.0
        return count, since

    def _bump(self, key: str) -> int:
        count, since = self._read(key)
        now = self.clock()
        if count == 0:
            since = now
        remaining = max(1, int(since + self.window - now) + 1)
        cache.set(key, (count + 1, since), timeout=remaining)
        return count + 1

    def check(self, *, login: str, client_address: str) -> float:
        """Before a password check: return how long to wait first.

        Raises Throttled when `client_address` has used up its failures in the window.
        """
        addr_key, login_key = _key("addr", client_address), _key("login", login.casefold())
        counters = cache.get_many([addr_key, login_key])  # one query for both
        count, since = self._current(counters.get(addr_key, (0, 0.0)))
        if count >= self.max_failures:
            raise Throttled(client_address, since + self.window - self.clock())
        failures, _ = self._current(counters.get(login_key, (0, 0.0)))
        return login_delay(failures)

    def record_failure(self, *, login: str, client_address: str) -> tuple[int, int]:
        """Count one failed check; return (failures of the address, failures of the login)."""
        return (
            self._bump(_key("addr", client_address)),
            self._bump(_key("login", login.casefold())),
        )
