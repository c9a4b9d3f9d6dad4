"""A real admin console listening on 127.0.0.1 (an ephemeral port), its loop in a thread."""

from __future__ import annotations

import asyncio
import gc
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.cache import cache

from accounts.authentication import verified_credentials
from accounts.services import user_add
from everlock_site.listen import ListenAddress

ADMIN_PASSWORD = "change-me"


@dataclass
class Console:
    port: int
    data_dir: Path
    loop: asyncio.AbstractEventLoop
    acceptor: object

    def stop(self) -> None:
        async def close():
            self.acceptor.close()
            await self.acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)


class ConsoleRunner:
    """Starts console listeners on one background event loop; stops them all at the end."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: list[Console] = []

    def start(self, data_dir: Path) -> Console:
        from sshadmin.server import prepare_console, start_console

        listens = {"ssh": ListenAddress("127.0.0.1", 0)}

        async def start():
            await prepare_console(listens=listens)
            return await start_console(listens=listens)

        acceptor = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        console = Console(acceptor.sockets[0].getsockname()[1], data_dir, self.loop, acceptor)
        self.running.append(console)
        return console

    def close(self) -> None:
        for console in self.running:
            console.stop()
        # The worker threads end, and their database connections with them.
        asyncio.run_coroutine_threadsafe(self.loop.shutdown_default_executor(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        gc.collect()  # the ended threads' connections are closed when collected


@pytest.fixture
def console_runner(transactional_db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    cache.clear()
    verified_credentials.clear()
    user_add(name="admin", password=ADMIN_PASSWORD, is_admin=True)
    runner = ConsoleRunner()
    yield runner
    runner.close()
    cache.clear()


@pytest.fixture
def console(console_runner, tmp_path) -> Console:
    return console_runner.start(tmp_path)
