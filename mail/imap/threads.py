"""The worker threads IMAP sessions do their database and file work in, never on the event
loop: `run(func, ...)`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from django.db import DatabaseError, close_old_connections, connection

log = logging.getLogger("mail.imap")

T = TypeVar("T")


class DatabaseThreads:
    """The worker threads IMAP sessions do their database and file work in: started with the
    listeners, ended with them (so their database connections close)."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imap-db")

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    async def run(self, func: Callable[..., T], *args, **kwargs) -> T:
        """Run the synchronous `func` in one of the threads.

        Raises ServerTrouble (a `NO [UNAVAILABLE]` answer, the session goes on) when the
        database or the message storage fails: our own trouble is temporary for the client."""
        self.start()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(_in_thread, func, *args, **kwargs))
        except (DatabaseError, OSError) as exc:
            log.exception("IMAP: %s failed", getattr(func, "__name__", func))
            raise ServerTrouble() from exc


class ServerTrouble(Exception):
    """The database or the message storage failed while answering a command: the connection
    answers `NO [UNAVAILABLE]` and the session goes on."""


def _in_thread(func: Callable[..., T], *args, **kwargs) -> T:
    # Each worker thread keeps its connection: SQLite's cost nothing to keep and much to open
    # (the WAL pragmas); other databases' are closed when CONN_MAX_AGE or an error says so.
    if connection.vendor != "sqlite":
        close_old_connections()
    return func(*args, **kwargs)


database_threads = DatabaseThreads()
run = database_threads.run
