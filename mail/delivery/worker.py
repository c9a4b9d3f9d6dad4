"""The delivery worker `everlock serve --backend-mail-smtp` runs beside its listeners.

It is the same Celery worker as `celery -A everlock_site worker` (same tasks, same rescan
timer), started as a child process with this process's environment, so the one serve
command both accepts and delivers mail with the embedded broker and no other server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from django.conf import settings
from kombu.utils.url import maybe_sanitize_url

from everlock_site.supervisor import die_with_parent

log = logging.getLogger("mail.delivery")

# The start of the warning a Celery worker started as root prints (celery.platforms).
CELERY_ROOT_WARNING = "You're running the worker with superuser privileges"


class EmbeddedWorker:
    """A running worker process: close() asks it to finish its current task and stop,
    wait_closed() waits for that (killing it after `grace` seconds)."""

    def __init__(self, process: asyncio.subprocess.Process, grace: float = 30.0):
        self.process = process
        self.grace = grace

    def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(self.process.wait(), self.grace)
        except TimeoutError:
            # Rows it had claimed are due again at their next attempt time.
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        log.info("backend-mail-smtp: delivery worker stopped")


async def start_embedded_worker(*, listens, concurrency: int | None = None) -> EmbeddedWorker:
    """Start `celery -A everlock_site worker` as a child process; returns its handle.

    `listens` is unused (the worker listens on nothing); `concurrency` defaults to
    EVERLOCK_DELIVERY_CONCURRENCY.
    """
    concurrency = concurrency or settings.EVERLOCK_DELIVERY_CONCURRENCY
    # Celery's startup banner, its shutdown lines and its warning about running as root
    # (containers often do) only when EVERLOCK_LOG asks for debug (or celery=debug): the
    # worker's stdout carries nothing else, and unformatted lines would break JSON logs.
    python, celery = [sys.executable], ["-m", "celery", "-A", "everlock_site"]
    stdout = None
    if not logging.getLogger("celery").isEnabledFor(logging.DEBUG):
        python += ["-W", f"ignore:{CELERY_ROOT_WARNING}"]
        celery += ["--quiet"]
        stdout = asyncio.subprocess.DEVNULL
    process = await asyncio.create_subprocess_exec(
        *python, *celery, "worker",
        "--concurrency", str(concurrency), "-n", f"delivery-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
        # Its own session: a Ctrl-C or a signal to serve's process group reaches serve only,
        # and close() then stops the worker warmly (current tasks finish).
        env=dict(os.environ), stdout=stdout, preexec_fn=die_with_parent, start_new_session=True,
    )  # fmt: skip
    log.info(
        "backend-mail-smtp: delivery worker started (broker %s)",
        maybe_sanitize_url(settings.CELERY_BROKER_URL),
    )
    return EmbeddedWorker(process)
