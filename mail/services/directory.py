"""The directory answers SMTP asks for on every message (which domain a user may send as,
which mailbox an address names, which rules are in force), remembered in process memory and
dropped as soon as any process changes a domain, mailbox, folder, grant, user or the rules.

Every change saved or deleted through the ORM stores a new stamp in the shared cache (the
database cache every process reads), at once and again when its transaction commits. A
decision first calls refresh(): one small cache read; a stamp other than the one the memory
was filled under drops every answer. Only positive answers are kept, so a new mailbox or
grant is found at once; each answer also expires after `expiry` seconds, which bounds what a
change made behind the ORM (QuerySet.update(), raw SQL) can leave behind.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from django.core.cache import cache
from django.db import transaction

STAMP_KEY = "everlock:directory:stamp"


class Directory:
    """Remembered positive answers, valid while the shared stamp stays the same."""

    def __init__(self, *, expiry: float = 30.0, size: int = 10_000):
        self.expiry = expiry
        self.size = size
        self._lock = threading.Lock()
        self._stamp: str | None = None
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def refresh(self) -> None:
        """Forget everything if the directory changed since it was read. Reads the
        database cache: call it from a worker thread, first in each decision."""
        stamp = cache.get(STAMP_KEY)
        with self._lock:
            if stamp != self._stamp:
                self._entries.clear()
                self._stamp = stamp

    def get(self, key: Hashable) -> Any:
        """The remembered answer for `key`, or None. No I/O: fit for the event loop."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The answer for `key`: remembered, or load() (kept unless it is None)."""
        found = self.get(key)
        if found is not None:
            return found
        stamp = self._stamp
        value = load()
        if value is not None:
            with self._lock:
                # A refresh that saw a change while load() ran may have dropped what load()
                # read before the change committed: keep the answer only under its stamp.
                if self._stamp == stamp:
                    if len(self._entries) >= self.size:
                        self._entries.clear()
                    self._entries[key] = (time.monotonic() + self.expiry, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


directory = Directory()


def _new_stamp() -> None:
    cache.set(STAMP_KEY, secrets.token_hex(8), None)


def directory_changed(**kwargs) -> None:
    """post_save/post_delete receiver: a new stamp now (this process, and others reading
    before the commit, drop what they hold) and once more after the commit (what another
    process read meanwhile is dropped as well)."""
    _new_stamp()
    transaction.on_commit(_new_stamp)
