"""The writer process: the group commit (mail.smtp.group_commit) in a process of its own.

Filing a message (parsing its header, writing and syncing its file, the rows) takes about as
much CPU as the SMTP dialogue around it. In the listener's process both take turns under one
interpreter lock; with the commits in a child process they run side by side on two cores.

A delivery goes to the writer as the function's import path and its keyword arguments,
pickled over a pipe; the writer commits it with the others that arrived with it and sends
the outcome back.
The listener still answers 250 only after the writer reported the commit. Should the writer
die, every delivery in flight answers 451 4.3.0 and the next one starts a new writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mail.replies import SMTPReject
from mail.smtp.group_commit import MAX_BATCH, GroupCommitter

log = logging.getLogger("mail.smtp")

ROOT = Path(__file__).resolve().parents[2]


# The writer's first frame: loaded and ready to commit. Then the listener sends a frame per
# delivery (its 8-byte id and the pickled call) and the writer answers a round at a time (a
# pickled list of (id, outcome)). Frames are multiprocessing.connection's.
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
        return (False, "reject", value.reply)
    return (False, "error", "".join(traceback.format_exception(value)))


def _failure(outcome: tuple) -> Exception:
    if outcome[1] == "reject":
        return SMTPReject(outcome[2])
    return WriterError(outcome[2])


class WriterProcess:
    """GroupCommitter's call() and stop(), the commits made in a child process.

    The pipe to the writer is an asyncio transport on the listeners' event loop: a delivery
    is written without blocking (whatever the writer's pace), the deliveries of one turn of
    the loop go in one write, and the answers settle their futures on the loop directly.
    """

    def __init__(self, *, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        self._link: _WriterLink | None = None

    async def call(self, func: Callable[..., Any], /, **kwargs: Any) -> Any:
        data = pickle.dumps((_target(func), kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        link = await self._ensure_link()
        return await link.call(data)

    async def start(self, *, timeout: float = 60) -> None:
        """Start the writer now and wait until it is ready to commit (or `timeout` passed),
        so that the first messages do not wait for it to load."""
        link = await self._ensure_link()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(link.ready), timeout)

    def stop(self) -> None:
        """Close the pipe: the writer commits what it holds, answers, and ends."""
        link, self._link = self._link, None
        if link is not None:
            link.close()

    async def _ensure_link(self) -> _WriterLink:
        link = self._link
        if link is not None and not link.closed:
            return link
        loop = asyncio.get_running_loop()
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
        link = _WriterLink(loop, process)
        self._link = link
        await loop.create_unix_connection(lambda: link, sock=ours)
        return link


class _WriterLink(asyncio.Protocol):
    """One writer process and the deliveries it has not answered yet."""

    def __init__(self, loop: asyncio.AbstractEventLoop, process: subprocess.Popen):
        self.loop = loop
        self.process = process
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.stopping = False
        self._transport: asyncio.Transport | None = None
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._outgoing: list[bytes] = []
        self._received = bytearray()

    def call(self, data: bytes) -> asyncio.Future:
        future = self.loop.create_future()
        if self.closed or self.stopping:
            future.set_exception(WriterError("the writer process ended before the commit was confirmed"))
            return future
        job_id = next(self._ids)
        self._pending[job_id] = future
        if not self._outgoing:
            self.loop.call_soon(self._flush)
        self._outgoing.append(job_id.to_bytes(8, "big") + data)
        return future

    def _flush(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return  # not connected yet (connection_made sends them) or gone (they fail)
        parts, self._outgoing = self._outgoing, []
        if parts:
            # A frame per delivery, all in one write.
            self._transport.write(b"".join(_frame(part) for part in parts))

    def close(self) -> None:
        """Send what is queued, then EOF: the writer answers what it holds and ends."""
        self.stopping = True
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            if self._transport.can_write_eof():
                self._transport.write_eof()
            else:
                self._transport.close()

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._outgoing:
            self._flush()

    def data_received(self, data: bytes) -> None:
        self._received += data
        for frame in _frames(self._received):
            if frame == _READY:
                if not self.ready.done():
                    self.ready.set_result(None)
                continue
            for job_id, outcome in pickle.loads(frame):
                future = self._pending.pop(job_id, None)
                if future is not None and not future.done():
                    future.set_result(None) if outcome[0] else future.set_exception(_failure(outcome))

    def connection_lost(self, exc) -> None:
        if not self.stopping:
            log.error("SMTP: the writer process ended; a new one starts with the next message")
        self.closed = True
        unanswered, self._pending = self._pending, {}
        for future in unanswered.values():
            if not future.done():
                future.set_exception(WriterError("the writer process ended before the commit was confirmed"))
        if not self.ready.done():
            self.ready.set_result(None)
        # Reap it (it has ended, or ends now that its pipe is closed).
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is left to wait
            self.loop.run_in_executor(None, self.process.wait)


def serve_writer(conn: Connection, max_batch: int) -> None:
    """The writer process (`manage.py smtpwriter`, started by WriterProcess): commit the
    deliveries received on `conn` and answer each; return at EOF.

    One thread: it takes every delivery that has arrived, commits them (GroupCommitter.commit)
    and sends their answers in one frame; what arrives meanwhile waits in the pipe for the
    next round. No hand-offs between threads, and no contention for the interpreter lock.
    """
    committer = GroupCommitter(max_batch=max_batch)
    conn.send_bytes(_READY)
    while True:
        try:
            frames = [conn.recv_bytes()]
            while conn.poll():
                frames.append(conn.recv_bytes())
        except EOFError:
            return
        answers: list[tuple[int, tuple]] = []
        calls = []
        for data in frames:  # a delivery each
            job_id, (target, kwargs) = int.from_bytes(data[:8], "big"), pickle.loads(data[8:])
            calls.append((_resolve(target), kwargs, _answerer(answers, job_id)))
        committer.commit(calls)
        conn.send_bytes(pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL))


def _answerer(answers: list[tuple[int, tuple]], job_id: int) -> Callable[[bool, Any], None]:
    def settle(ok: bool, value: Any) -> None:
        answers.append((job_id, _outcome(ok, value)))

    return settle


def _frame(payload: bytes) -> bytes:
    """`payload` framed as multiprocessing.connection.Connection.send_bytes frames it, for
    the writer's recv_bytes."""
    if len(payload) > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


def _frames(buffer: bytearray) -> list[bytes]:
    """The complete Connection frames at the start of `buffer`, removed from it."""
    frames, at = [], 0
    while len(buffer) - at >= 4:
        (size,) = struct.unpack_from("!i", buffer, at)
        start = at + 4
        if size == -1:
            if len(buffer) - start < 8:
                break
            (size,) = struct.unpack_from("!Q", buffer, start)
            start += 8
        if len(buffer) - start < size:
            break
        frames.append(bytes(buffer[start : start + size]))
        at = start + size
    del buffer[:at]
    return frames
