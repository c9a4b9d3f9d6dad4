"""Waking IDLE sessions when another process changes a folder they have open.

Every process that files mail (the SMTP listeners, the delivery workers, the console, the admin)
commits to the database. How an IMAP process hears of it:

- PostgreSQL: triggers on the message table NOTIFY channel `everlock_folders` with the ids of
  the folders a transaction changed, at its commit (migration mail 0003); the process LISTENs
  on one connection of its own and wakes the sessions of those folders at once.
- Any database (SQLite, and PostgreSQL as a safety net when the listening connection is
  down): every `interval` seconds, one query reads each open folder's (highest_modseq, newest
  message id, messages), which moves with every change, and wakes the sessions of the folders
  where it moved.

A folder's state is read from the database only after such a wake-up (FolderState.refresh),
so sessions that only read cost the database nothing between changes.

Changes made by this process's own sessions wake the others at once (FolderState.poke).
"""

from __future__ import annotations

import asyncio
import logging

from django.db import connection

from mail.imap import store
from mail.imap.folders import open_states
from mail.imap.threads import ServerTrouble, run

log = logging.getLogger("mail.imap")

CHANNEL = "everlock_folders"


async def watch_folders(*, interval: float) -> None:
    """Run until cancelled."""
    if connection.vendor == "postgresql":
        listener = asyncio.create_task(listen_for_changes())
        try:
            # The notifications do the work; the look is only a safety net.
            await poll_for_changes(interval=max(interval, 5.0))
        finally:
            listener.cancel()
    else:
        await poll_for_changes(interval=interval)


async def poll_for_changes(*, interval: float) -> None:
    marks: dict[int, tuple[int, int | None, int]] = {}
    pause = interval
    while True:
        await asyncio.sleep(pause)
        states = open_states()
        if not states:
            marks.clear()
            continue
        try:
            current = await run(store.change_marks, [state.folder_id for state in states])
        except ServerTrouble:
            # Logged by run(); looked at again later, less often while the trouble lasts.
            # Sessions still see changes on their next command.
            pause = min(pause * 2, 30.0)
            continue
        pause = interval
        for state in states:
            mark = current.get(state.folder_id)
            if mark != marks.get(state.folder_id):
                # Also the first time: whatever changed before the watcher looked is news too
                # (a needless wake-up costs the session one query).
                marks[state.folder_id] = mark
                state.poke()


def _conninfo() -> str:
    import psycopg  # only on PostgreSQL: libpq costs an SQLite installation 8 MB per process

    params = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=params["NAME"],
        user=params.get("USER") or None,
        password=params.get("PASSWORD") or None,
        host=params.get("HOST") or None,
        port=str(params["PORT"]) if params.get("PORT") else None,
    )


async def listen_for_changes(*, retry: float = 5.0) -> None:
    """LISTEN on CHANNEL and poke the open folders named; reconnects after `retry` seconds
    when the connection fails."""
    import psycopg

    while True:
        try:
            async with await psycopg.AsyncConnection.connect(_conninfo(), autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                async for notice in conn.notifies():
                    wake(notice.payload)
        except psycopg.Error as exc:
            log.warning("IMAP: listening for folder changes failed: %s; again in %ss", exc, retry)
        await asyncio.sleep(retry)


def wake(payload: str) -> None:
    """Poke the open folders a notification names ("*": all of them)."""
    states = open_states()
    if payload == "*":
        targets = states
    else:
        named = {int(part) for part in payload.split(",") if part.isdigit()}
        targets = [state for state in states if state.folder_id in named]
    for state in targets:
        state.poke()
