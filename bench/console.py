"""The admin SSH console: password logins per second, and commands per second on one connection.

Run: .venv/bin/python bench/console.py [LOGINS] [COMMANDS]
Starts the console in-process on 127.0.0.1 (an ephemeral port) with a throwaway data dir
(SQLite). A login pays the password hasher once, then the verified-credential cache.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])
os.environ["EVERLOCK_DATA_DIR"] = tempfile.mkdtemp(prefix="everlock-bench-")
os.environ.pop("DATABASE_URL", None)
os.environ.setdefault("EVERLOCK_LOG", "error")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")

import django

django.setup()

import asyncssh
from django.core.management import call_command

from accounts.services import user_add
from everlock_site.listen import ListenAddress
from sshadmin.server import prepare_console, start_console


async def main(logins: int, commands: int) -> None:
    listens = {"ssh": ListenAddress("127.0.0.1", 0)}
    await prepare_console(listens=listens)
    acceptor = await start_console(listens=listens)
    port = acceptor.sockets[0].getsockname()[1]
    options = {"username": "admin", "password": "change-me", "known_hosts": None, "client_keys": None}

    start = time.perf_counter()
    for _ in range(logins):
        async with asyncssh.connect("127.0.0.1", port, **options) as conn:
            assert (await conn.run("/users list")).exit_status == 0
    login_rate = logins / (time.perf_counter() - start)

    async with asyncssh.connect("127.0.0.1", port, **options) as conn:
        start = time.perf_counter()
        for _ in range(commands):
            assert (await conn.run("/users list")).exit_status == 0
        command_rate = commands / (time.perf_counter() - start)

        start = time.perf_counter()
        results = await asyncio.gather(*(conn.run("/users list") for _ in range(commands)))
        assert all(r.exit_status == 0 for r in results)
        parallel_rate = commands / (time.perf_counter() - start)

    acceptor.close()
    await acceptor.wait_closed()
    print(f"login + one command, sequential:     {login_rate:8.1f} /s ({logins} logins)")
    print(f"commands on one connection, serial:  {command_rate:8.1f} /s ({commands} commands)")
    print(f"commands on one connection, at once: {parallel_rate:8.1f} /s ({commands} sessions)")


def setup() -> None:
    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    user_add(name="admin", password="change-me", is_admin=True)


if __name__ == "__main__":
    setup()
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 50, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
    )
