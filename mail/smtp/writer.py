"""The writer process: the group commit (mail.smtp.group_commit) in a process of its own.

Filing a message (parsing its header, writing and syncing its file, the rows) takes about as
much CPU as the SMTP dialogue around it. In the listener's process both take turns under one
interpreter lock; with the commits in a child process they run side by side on two cores.

A delivery goes to the writer as the function's import path and its keyword arguments,
pickled over a pipe; the writer runs it in its GroupCommitter and sends the outcome back.
The listener still answers 250 only after the writer reported the commit. Should the writer
die, every delivery in flight answers 451 4.3.0 and the next one starts a new writer.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mail.smtp.group_commit import MAX_BATCH, GroupCommitter, future_settler
from mail.smtp.replies import SMTPReject

log = logging.getLogger("mail.smtp")

ROOT = Path(__file__).resolve().parents[2]


# The writer's first frame: loaded and ready to commit. Then the listener sends frames of
# deliveries (each its 8-byte id and the pickled call, length-prefixed) and the writer
# answers a batch at a time (a pickled list of (id, outcome)).
_READY = b"ready"


class WriterError(Exception):
    """A delivery failed in the writer process (the text carries its traceback), or the
    writer ended before it answered."""


def _target(func: Callable[..., Any]) -> str:
    return f"{func.__module__}:{func.__qualname__}"


@functools.cache
def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _outcome(ok: bool, value: Any) -> tuple:
    if ok:
        return (True, None)  # the listeners only need to know that it committed
    if isinstance(value, SMTPReject):
        return (False, "reject", value.code, value.enhanced, value.text)
    return (False, "error", "".join(traceback.format_exception(value)))


def _failure(outcome: tuple) -> Exception:
    if outcome[1] == "reject":
        return SMTPReject(*outcome[2:])
    return WriterError(outcome[2])


class WriterProcess:
    """GroupCommitter's call() and stop(), the commits made in a child process."""

    def __init__(self, *, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, Callable[[bool, Any], None]] = {}
        self._process: subprocess.Popen | None = None
        self._outbox: queue.SimpleQueue[bytes | None] | None = None
        self._ready = threading.Event()

    async def call(self, func: Callable[..., Any], /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        data = pickle.dumps((_target(func), kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            outbox = self._ensure_process()
            job_id = next(self._ids)
            self._pending[job_id] = future_settler(loop, future)
        outbox.put(job_id.to_bytes(8, "big") + data)
        return await future

    async def start(self, *, timeout: float = 60) -> None:
        """Start the writer now and wait until it is ready to commit (or `timeout` passed),
        so that the first messages do not wait for it to load."""
        with self._lock:
            self._ensure_process()
            ready = self._ready
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, timeout)

    def stop(self) -> None:
        with self._lock:
            if self._outbox is not None:
                self._outbox.put(None)
            self._outbox = self._process = None

    def _ensure_process(self) -> queue.SimpleQueue:
        if self._outbox is not None:
            return self._outbox
        ours, theirs = socket.socketpair()
        # A plain child process (not multiprocessing's), so that a listener running in a
        # daemonic process may start it too; it imports this project as the listener does.
        env = {
            "DJANGO_SETTINGS_MODULE": "everlock_site.settings",
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "django", "smtpwriter", str(theirs.fileno()), str(self.max_batch)],
                pass_fds=[theirs.fileno()],
                env=env,
                cwd=ROOT,
            )
        conn = Connection(ours.detach())
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        ready = threading.Event()
        pending: dict[int, Callable[[bool, Any], None]] = {}  # this writer's deliveries
        # Sending runs in a thread of its own: a big message, or a writer busy with a slow
        # commit, must never block the event loop on a full pipe.
        threading.Thread(target=self._send, args=(conn, outbox), name="smtp-writer-send", daemon=True).start()
        threading.Thread(
            target=self._receive,
            args=(conn, outbox, process, ready, pending),
            name="smtp-writer-receive",
            daemon=True,
        ).start()
        self._process, self._outbox, self._ready, self._pending = process, outbox, ready, pending
        return outbox

    def _send(self, conn, outbox: queue.SimpleQueue) -> None:
        while (data := outbox.get()) is not None:
            # Everything queued meanwhile goes in the same frame.
            frame = [data]
            while not outbox.empty() and (data := outbox.get()) is not None:
                frame.append(data)
            try:
                conn.send_bytes(_join(frame))
            except OSError:
                return  # the writer is gone; _receive fails what is pending
            if data is None:
                break
        conn.close()  # the writer sees EOF and ends

    def _receive(
        self, conn, outbox, process: subprocess.Popen, ready: threading.Event, pending: dict
    ) -> None:
        try:
            while True:
                data = conn.recv_bytes()
                if data == _READY:
                    ready.set()
                    continue
                for job_id, outcome in pickle.loads(data):
                    with self._lock:
                        settle = pending.pop(job_id, None)
                    if settle is not None:
                        settle(True, None) if outcome[0] else settle(False, _failure(outcome))
        except (EOFError, OSError):
            pass
        with self._lock:
            if self._outbox is outbox:
                log.error("SMTP: the writer process ended; a new one starts with the next message")
                self._outbox = self._process = None
                outbox.put(None)
            unanswered = list(pending.values())
            pending.clear()
        for settle in unanswered:
            settle(False, WriterError("the writer process ended before the commit was confirmed"))
        ready.set()
        conn.close()
        process.wait()


def serve_writer(conn: Connection, max_batch: int) -> None:
    """The writer process (`manage.py smtpwriter`, started by WriterProcess): run each
    delivery received on `conn` in a GroupCommitter and answer each; return at EOF."""
    answers: list[tuple[int, tuple]] = []
    sending = threading.Lock()

    def answer(job_id: int, ok: bool, value: Any) -> None:
        with sending:
            answers.append((job_id, _outcome(ok, value)))

    def send_answers() -> None:
        # The answers of a batch go back in one frame.
        with sending:
            if answers:
                conn.send_bytes(pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL))
                answers.clear()

    committer = GroupCommitter(max_batch=max_batch, after_batch=send_answers)
    conn.send_bytes(_READY)
    try:
        while True:
            try:
                frame = conn.recv_bytes()
            except EOFError:
                return
            for data in _split(frame):
                job_id, (target, kwargs) = int.from_bytes(data[:8], "big"), pickle.loads(data[8:])
                committer.submit(
                    _resolve(target), kwargs, settle=lambda ok, value, i=job_id: answer(i, ok, value)
                )
    finally:
        committer.stop(wait=True)


def _join(parts: list[bytes]) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _split(frame: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(frame):
        size = int.from_bytes(frame[at : at + 4], "big")
        parts.append(frame[at + 4 : at + 4 + size])
        at += 4 + size
    return parts
