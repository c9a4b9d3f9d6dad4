"""Group commit: the messages of concurrent SMTP sessions filed in one database transaction.

Every DATA of every session of a listener process hands its delivery to the process's
commit thread (GroupCommitter.call), which takes all deliveries waiting at that moment and
files them with one set-based call when the delivery has one (`many`), else each in its own
savepoint (so one failing message does not take the others with it), commits once, and only
then answers each session. A client still gets 250 only after its message is durable; what
a batch saves is the commit (and its fsync) per message, and the lock hand-offs between
writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from mail.services.storage import StoredFiles, delete_content_file

log = logging.getLogger("mail.smtp")


def heal_connections() -> None:
    """Close this thread's database connections that broke, keeping healthy ones open.

    Django's close_old_connections() would also close every connection after each call
    when CONN_MAX_AGE is 0 (SQLite's default here), making every SMTP decision pay for a
    new connection; only a connection with errors is checked and dropped, so a database
    outage answers 451 while it lasts and heals by itself afterwards.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred:
            if conn.in_atomic_block or not conn.is_usable():
                conn.close()
            else:
                conn.errors_occurred = False


MAX_BATCH = 64


@dataclass
class _Job:
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    settle: Callable[[bool, Any], None]  # (True, result) or (False, exception), once
    files: StoredFiles = field(default_factory=StoredFiles)


class LoopSettle:
    """The settle function of a job awaited on an event loop: sets its future there. The
    commit thread hands the answers of a batch to each loop in one call_soon_threadsafe (one
    wake-up of the loop, not one per message: see _settle_all)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.loop = loop
        self.future = future

    def __call__(self, ok: bool, value: Any) -> None:
        _answer(self.loop, [(self, ok, value)])

    def in_loop(self, ok: bool, value: Any) -> None:
        if self.future.done():
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


def _answer(loop: asyncio.AbstractEventLoop, answers: list[tuple[LoopSettle, bool, Any]]) -> None:
    def run() -> None:
        for settle, ok, value in answers:
            settle.in_loop(ok, value)

    # RuntimeError: the loop has closed, so nobody waits for the answers any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(run)


def _settle_all(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Settle each job once with its (ok, value)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[LoopSettle, bool, Any]]] = {}
    for job, ok, value in outcomes:
        if isinstance(job.settle, LoopSettle):
            by_loop.setdefault(job.settle.loop, []).append((job.settle, ok, value))
        else:
            job.settle(ok, value)
    for loop, answers in by_loop.items():
        _answer(loop, answers)


class GroupCommitter:
    """Runs `func(files=..., **kwargs)` calls in batches, one transaction per batch.

    When `func` has a `many(items=[kwargs, ...], files=...)` attribute, a batch is first
    tried with one call of it (a result per item); if that raises, one job at a time.

    `func` must store message bytes through the StoredFiles it is given and may raise; its
    exception is raised to the awaiting caller, and its rows and files are undone.
    """

    def __init__(self, *, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="smtp-group-commit", daemon=True)
                self._thread.start()

    async def call(self, func: Callable[..., Any], /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.submit(func, kwargs, settle=LoopSettle(loop, future))
        return await future

    def submit(
        self, func: Callable[..., Any], kwargs: dict[str, Any], *, settle: Callable[[bool, Any], None]
    ):
        """call() without an event loop: `settle(ok, value)` is called from the commit thread
        once the job's batch is committed (True, result) or has failed (False, exception)."""
        self._ensure_thread()
        self._queue.put(_Job(func=func, kwargs=kwargs, settle=settle))

    def stop(self, *, wait: bool = False) -> None:
        """End the commit thread after the jobs already submitted (`wait`: until it has)."""
        self._queue.put(None)
        thread = self._thread
        if wait and thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                connections.close_all()  # this thread's connections only
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                batch.append(job)
            self._commit_grouped(batch)

    def commit(
        self, calls: list[tuple[Callable[..., Any], dict[str, Any], Callable[[bool, Any], None]]]
    ) -> None:
        """Commit `calls` ((func, kwargs, settle) each) now, in the calling thread, as the
        commit thread commits what it takes at once; settle(ok, value) is called for each
        as in submit()."""
        self._commit_grouped([_Job(func=f, kwargs=kwargs, settle=settle) for f, kwargs, settle in calls])

    def _commit_grouped(self, jobs: list[_Job]) -> None:
        """The jobs of each function in batches of at most max_batch, each batch in one
        transaction (the set-based `many` takes one function's jobs only)."""
        by_func: dict[Callable[..., Any], list[_Job]] = {}
        for job in jobs:
            by_func.setdefault(job.func, []).append(job)
        for same in by_func.values():
            for start in range(0, len(same), self.max_batch):
                self._commit(same[start : start + self.max_batch])

    def _commit(self, batch: list[_Job]) -> None:
        many = getattr(batch[0].func, "many", None)  # the batch is one function's jobs
        if many is not None and self._commit_many(batch, many):
            return
        self._commit_each(batch)

    def _commit_many(self, batch: list[_Job], many: Callable[..., list[Any]]) -> bool:
        """The fast path: one set-based call for the whole batch. False when it failed (its
        rows rolled back, its files removed), so the batch is retried one job at a time."""
        files = StoredFiles()
        commit = _CommitMark()
        try:
            heal_connections()
            with transaction.atomic():
                transaction.on_commit(commit.mark)
                results = many(items=[job.kwargs for job in batch], files=files)
        except Exception:
            if not commit.done:
                _remove(files.names)
                log.debug("SMTP: batch of %d falls back to one by one", len(batch), exc_info=True)
                return False
            log.exception("SMTP: an action after a committed batch failed")
        _settle_all([(job, True, result) for job, result in zip(batch, results, strict=True)])
        return True

    def _commit_each(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        commit = _CommitMark()
        try:
            heal_connections()
            with transaction.atomic():
                transaction.on_commit(commit.mark)
                for job in batch:
                    try:
                        with job.files, transaction.atomic():
                            outcomes.append((True, job.func(files=job.files, **job.kwargs)))
                    except Exception as exc:
                        outcomes.append((False, exc))
        except Exception as exc:
            if commit.done:
                # The rows are committed; only a later on-commit action (a queue kick, say)
                # failed. The messages are accepted: the queue's periodic re-kick covers it.
                log.exception("SMTP: an action after a committed batch failed")
            else:
                # The commit itself failed: nothing of the batch is in the database.
                for job in batch:
                    _remove(job.files.names)
                outcomes = [(False, exc)] * len(batch)
        _settle_all([(job, ok, value) for job, (ok, value) in zip(batch, outcomes, strict=True)])


class _CommitMark:
    """Set by the first on-commit hook of a batch: tells a failed COMMIT apart from a failing
    on-commit action that runs after the COMMIT succeeded."""

    def __init__(self) -> None:
        self.done = False

    def mark(self) -> None:
        self.done = True


def _remove(names: list[str]) -> None:
    for name in names:
        delete_content_file(name)
