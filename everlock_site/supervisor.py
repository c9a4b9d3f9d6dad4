"""`everlock serve`'s process model: a parent that supervises, and the children that serve.

The parent binds nothing it answers on. It checks that every address is free (and picks
the port that all copies of a listener share where port 0 was asked for), forks its
children, and then only waits: a child that dies is
logged and started again (after 1 s, doubling up to a minute while it keeps dying within
STEADY seconds of its start); SIGTERM or SIGINT drains (each child is sent SIGTERM, closes
its listeners and finishes what it holds; one still running after its grace is killed).

Children are forked from the set-up parent (Django loaded, migrations applied, no thread, no
database connection), each in a session of its own: only the parent decides when they stop,
and the kernel sends them SIGTERM should the parent die without draining. A child runs the
start functions of its components on one event loop (`start(listens=...)`, returning
something with close() and optionally wait_closed()), tells the parent over a pipe that it
is ready (or why it could not start), and serves until SIGTERM.

Which components share a child, and how many copies run, is the `process` of each
component: the components of process LISTENER run in `--processes` copies (one per core by
default) that bind the same ports with SO_REUSEPORT, so the kernel spreads connections and
datagrams over them; those of any other process name run in one child per name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django import db
from django.core.management.base import CommandError

from everlock_site.listen import ListenAddress, bind_failure, stop_on_signals

log = logging.getLogger("everlock")

LISTENER = "listener"
# A child that ran this long before it died is restarted after the shortest delay again.
STEADY = 10.0
FIRST_RESTART_DELAY = 1.0
LONGEST_RESTART_DELAY = 60.0
# How long children may take to start (load zone data, generate a host key, bind).
START_TIMEOUT = 120.0
# How long a child may take to drain after SIGTERM before it is killed (the delivery
# worker finishes the message it is sending; rows it had claimed are due again later).
DRAIN_GRACE = 30.0
# Listen keys whose port is also bound for UDP (the DNS server answers on both).
UDP_LISTENS = frozenset({"dns"})

_PR_SET_PDEATHSIG = 1
_FORK = multiprocessing.get_context("fork")


def default_processes() -> int:
    """One listener process per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Component:
    """A part of Everlock `everlock serve` can run: `target` ("module:function") is an async
    start function taking `listens` (a dict of ListenAddress, by key) that binds what it
    serves and returns something with close() (and optionally wait_closed()); `needs` are
    components that must be selected with it; `process` is the child that runs it
    (LISTENER: one per --processes, sharing ports; any other name: one child of that name);
    `listens` are the keys of the addresses it binds, checked by the parent and, in LISTENER
    processes, bound by every copy with SO_REUSEPORT (ListenAddress.reuse_port)."""

    name: str
    target: str
    needs: tuple[str, ...] = ()
    process: str = LISTENER
    listens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildSpec:
    """One kind of child: its components (name, start function) in start order, and how
    many copies of it run."""

    process: str
    components: tuple[tuple[str, Callable], ...]
    copies: int = 1

    def title(self, index: int) -> str:
        return f"{self.process}-{index + 1}" if self.copies > 1 else self.process


def child_specs(components: list[tuple[Component, Callable]], *, processes: int) -> list[ChildSpec]:
    """The children that run `components` (in start order, with their start functions):
    one spec per process name, in the order its first component comes, the listener
    processes last: when clients can connect, the backends they reach are up."""
    grouped: dict[str, list[tuple[str, Callable]]] = {}
    for component, start in components:
        grouped.setdefault(component.process, []).append((component.name, start))
    return sorted(
        (
            ChildSpec(name, tuple(starts), copies=processes if name == LISTENER else 1)
            for name, starts in grouped.items()
        ),
        key=lambda spec: spec.process == LISTENER,
    )


@dataclass
class _Child:
    spec: ChildSpec
    index: int
    process: multiprocessing.Process
    ready: multiprocessing.connection.Connection | None
    started_at: float
    restart_delay: float

    @property
    def title(self) -> str:
        return self.spec.title(self.index)


@dataclass
class _Restart:
    spec: ChildSpec
    index: int
    due: float
    delay: float


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies."""
    # Linux: SIGTERM when the parent dies, even by SIGKILL, instead of serving on orphaned.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def claim_ports(listens: Mapping[str, ListenAddress | None], *, shared: set[str]) -> dict:
    """Check that each address in `listens` is free, before any child binds it.

    Returns `listens` with every port 0 replaced by one free port (so that all copies of a
    listener bind the same one), and the addresses under the keys in `shared` marked
    reuse_port. Raises CommandError naming the option to change when an address is taken.
    """
    return {
        key: None
        if listen is None
        else dataclasses.replace(
            listen, port=_free_port(listen, udp_too=key in UDP_LISTENS), reuse_port=key in shared
        )
        for key, listen in listens.items()
    }


def _free_port(listen: ListenAddress, *, udp_too: bool) -> int:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,)
    for _ in range(20):
        port = listen.port
        try:
            with contextlib.ExitStack() as probes:
                for kind in kinds:
                    # Without SO_REUSEPORT: a program holding the port, even one sharing it
                    # with SO_REUSEPORT itself, makes this bind fail.
                    probe = probes.enter_context(socket.socket(family, kind))
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((listen.host, port))
                    port = probe.getsockname()[1]
                return port
        except OSError as exc:
            if listen.port:
                raise CommandError(bind_failure(listen, exc)) from None
            # The UDP side of the port picked for port 0 is taken: pick another.
    raise CommandError(bind_failure(listen, OSError(errno.EADDRINUSE, "no free port")))


class Supervisor:
    """Runs `specs` as child processes until SIGTERM or SIGINT (see the module docstring)."""

    def __init__(self, specs: list[ChildSpec], listens: dict):
        self.specs = specs
        self.listens = listens
        self.children: list[_Child] = []
        self.restarts: list[_Restart] = []
        self.stopping = False
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_write, False)

    # -- the parent ---------------------------------------------------------------------

    def run(self) -> None:
        """Start every child, wait until all are ready, supervise, drain. Raises
        CommandError (after stopping the others) when a child cannot start."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # One child at a time, in the order of their components (backends first), so
            # the start log reads as the components start. The copies after a listener
            # process's first start together, quietly: their lines would repeat its own.
            for spec in self.specs:
                self._spawn(spec, 0, FIRST_RESTART_DELAY)
                self._wait_ready()
                for index in range(1, spec.copies):
                    self._spawn(spec, index, FIRST_RESTART_DELAY)
                self._wait_ready()
            log.info(
                "serving: %s",
                ", ".join(f"{c.title} (pid {c.process.pid})" for c in self.children),
            )
            while not self.stopping:
                self._supervise_once()
        finally:
            self._drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
            log.info("stopped")

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wakeup_write, b"\0")

    def _spawn(self, spec: ChildSpec, index: int, restart_delay: float, *, restarted: bool = False) -> None:
        receive, send = _FORK.Pipe(duplex=False)
        # Nothing a child could inherit half-used: database connections are reopened there.
        db.connections.close_all()
        process = _FORK.Process(
            target=_child_main,
            args=(spec, index, self.listens, send, restarted),
            name=f"everlock {spec.title(index)}",
        )
        process.start()
        send.close()
        self.children.append(_Child(spec, index, process, receive, time.monotonic(), restart_delay))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = {c.ready: c for c in self.children if c.ready is not None}
        while waiting and not self.stopping:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise CommandError(
                    f"{', '.join(c.title for c in waiting.values())} did not start in {START_TIMEOUT:.0f} s"
                )
            for conn in multiprocessing.connection.wait([*waiting, self._wakeup_read], timeout):
                if conn == self._wakeup_read:
                    continue
                child = waiting.pop(conn)
                failure = _receive(child)
                if failure is not None:
                    raise CommandError(failure)

    def _supervise_once(self) -> None:
        now = time.monotonic()
        timeout = min((r.due for r in self.restarts), default=now + 60.0) - now
        watched = [c.process.sentinel for c in self.children]
        watched += [c.ready for c in self.children if c.ready is not None]
        for ready in multiprocessing.connection.wait([*watched, self._wakeup_read], max(0.0, timeout)):
            if ready == self._wakeup_read:
                os.read(self._wakeup_read, 64)
                continue
            for child in self.children:
                if ready is child.ready:
                    failure = _receive(child)
                    if failure is None:
                        log.info("%s (pid %d) serving again", child.title, child.process.pid)
                    else:
                        log.error("%s (pid %d) could not start: %s", child.title, child.process.pid, failure)
        if self.stopping:
            return
        for child in [c for c in self.children if c.process.exitcode is not None]:
            self._reap(child)
        now = time.monotonic()
        for restart in [r for r in self.restarts if r.due <= now]:
            self.restarts.remove(restart)
            self._spawn(restart.spec, restart.index, restart.delay, restarted=True)

    def _reap(self, child: _Child) -> None:
        self.children.remove(child)
        child.process.join()
        if child.ready is not None:
            child.ready.close()
        ran = time.monotonic() - child.started_at
        delay = FIRST_RESTART_DELAY if ran >= STEADY else child.restart_delay
        log.error(
            "%s (pid %d) %s after %.0f s; starting it again in %.0f s",
            child.title,
            child.process.pid,
            _exit_text(child.process.exitcode),
            ran,
            delay,
        )
        self.restarts.append(
            _Restart(child.spec, child.index, time.monotonic() + delay, min(delay * 2, LONGEST_RESTART_DELAY))
        )

    def _drain(self) -> None:
        self.restarts.clear()
        for child in self.children:
            if child.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        deadline = time.monotonic() + DRAIN_GRACE
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                log.warning(
                    "%s (pid %d) still running after %.0f s: killed",
                    child.title,
                    child.process.pid,
                    DRAIN_GRACE,
                )
                child.process.kill()
                child.process.join()
            if child.ready is not None:
                child.ready.close()
        self.children.clear()


def _receive(child: _Child) -> str | None:
    """The child's start report: None when it is ready, else why it could not start."""
    conn, child.ready = child.ready, None
    try:
        failure = conn.recv()
    except EOFError:
        child.process.join(1.0)
        failure = f"{child.title} {_exit_text(child.process.exitcode)} while starting"
    finally:
        conn.close()
    return failure


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


# -- a child ------------------------------------------------------------------------------


def _child_main(spec: ChildSpec, index: int, listens: dict, ready, restarted: bool) -> None:
    os.setsid()
    die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    # A copy started again after a death logs its start: that is news.
    quiet = index > 0 and not restarted
    sys.exit(asyncio.run(_serve(spec, listens, ready, quiet=quiet)))


async def _serve(spec: ChildSpec, listens: dict, ready, *, quiet: bool) -> int:
    stop = stop_on_signals()
    running = []
    try:
        try:
            if quiet:
                logging.disable(logging.INFO)
            for name, start in spec.components:
                log.info("starting %s", name)
                running.append(await start(listens=listens))
            logging.disable(logging.NOTSET)
        except CommandError as exc:
            logging.disable(logging.NOTSET)
            ready.send(str(exc))
            return 1
        except Exception as exc:
            logging.disable(logging.NOTSET)
            log.exception("%s could not start", spec.process)
            ready.send(f"{spec.process}: {exc!r}")
            return 1
        ready.send(None)
        ready.close()
        await stop.wait()
        return 0
    finally:
        for handle in reversed(running):
            if handle is None:
                continue
            handle.close()
            wait_closed = getattr(handle, "wait_closed", None)
            if wait_closed is not None:
                await wait_closed()
