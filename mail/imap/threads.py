"""The worker threads IMAP sessions do their database and file work in, never on the event
loop: `run(func, ...)`, and `write(func, ...)` for the changes sessions make.

On SQLite one transaction writes at a time and each durable commit waits for the disk, so the
changes of all sessions are committed in groups: one writer thread takes every change queued
meanwhile, runs each in a savepoint of one transaction, and commits them with one sync. A change
that fails is rolled back alone; its session gets the error, the others their results.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from django.db import DatabaseError, connection, transaction

from mail.smtp.group_commit import heal_connections

log = logging.getLogger("mail.imap")

T = TypeVar("T")


class DatabaseThreads:
    """The worker threads IMAP sessions do their database and file work in: started with the
    listeners, ended with them (so their database connections close)."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._writes: queue.SimpleQueue | None = None
        self._writer: threading.Thread | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imap-db")
        if self._writer is None:
            self._writes = queue.SimpleQueue()
            self._writer = threading.Thread(
                target=_commit_groups, args=(self._writes,), name="imap-db-writer", daemon=True
            )
            self._writer.start()

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        writer, self._writer = self._writer, None
        if writer is not None:
            self._writes.put(None)
            writer.join()

    async def write(self, func: Callable[..., T], *args, durable: bool, **kwargs) -> T:
        """Run the synchronous change `func` (which opens its own transaction) in a group
        commit on SQLite, in one of the threads elsewhere. `durable`: the change must be on
        disk before this returns (mail itself); otherwise (flags, counters) a crash of the
        machine may lose the last moments of it, never a message.

        Raises what `func` raises; ServerTrouble as run() does."""
        if connection.vendor != "sqlite":
            return await self.run(func, *args, **kwargs)
        self.start()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._writes.put(_Change(partial(func, *args, **kwargs), durable, loop, done))
        try:
            return await done
        except (DatabaseError, OSError) as exc:
            log.exception("IMAP: %s failed", getattr(func, "__name__", func))
            raise ServerTrouble() from exc

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
    # Each worker thread keeps its connection; only one that failed is checked and dropped
    # (heal_connections), so a database outage answers NO [UNAVAILABLE] while it lasts and
    # heals afterwards. close_old_connections() would make PostgreSQL's health check (a
    # SELECT 1, a round trip) run before every call: a fifth of the time under load.
    heal_connections()
    return func(*args, **kwargs)


class _Change:
    __slots__ = ("done", "durable", "error", "func", "loop", "result")

    def __init__(self, func, durable: bool, loop: asyncio.AbstractEventLoop, done: asyncio.Future) -> None:
        self.func = func
        self.durable = durable
        self.loop = loop
        self.done = done
        self.result = None
        self.error: BaseException | None = None

    def report(self) -> None:
        def settle() -> None:
            if self.done.done():
                return
            if self.error is not None:
                self.done.set_exception(self.error)
            else:
                self.done.set_result(self.result)

        self.loop.call_soon_threadsafe(settle)


# The most changes one commit takes: a bound on how long the first of them waits.
GROUP_LIMIT = 64


def _commit_groups(changes: queue.SimpleQueue) -> None:
    """The writer thread: commit the queued changes in groups until None comes."""
    from mail.imap.store import group_transaction

    while True:
        first = changes.get()
        if first is None:
            break
        group = [first]
        while len(group) < GROUP_LIMIT:
            try:
                more = changes.get_nowait()
            except queue.Empty:
                break
            if more is None:
                changes.put(None)
                break
            group.append(more)
        try:
            with group_transaction(durable=any(change.durable for change in group)):
                for change in group:
                    try:
                        with transaction.atomic():
                            change.result = change.func()
                    except Exception as exc:  # reported to the session that asked
                        change.error = exc
        except Exception as exc:  # the commit failed: none of the group is stored
            for change in group:
                if change.error is None:
                    change.error = exc
        for change in group:
            change.report()
    connection.close()


database_threads = DatabaseThreads()
run = database_threads.run
write = database_threads.write
