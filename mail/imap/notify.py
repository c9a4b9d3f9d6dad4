"""Waking IDLE sessions when another process changes a folder they have open.

Every process that files mail (the SMTP listeners, the delivery workers, the console, the admin)
commits to the database; a folder's (highest_modseq, newest message id) pair moves with each such
commit. One watcher per IMAP process reads that pair for the folders its sessions have open,
every `interval` seconds (one indexed query however many sessions), and wakes the sessions of
the folders whose pair moved. Changes made by this process's own sessions wake them at once
(FolderState.poke), without waiting for the watcher.
"""

from __future__ import annotations

import asyncio
import logging

from django.db import DatabaseError

from mail.imap import store
from mail.imap.backend import open_states, run

log = logging.getLogger("mail.imap")


async def watch_folders(*, interval: float) -> None:
    """Run until cancelled."""
    marks: dict[int, tuple[int, int | None]] = {}
    while True:
        await asyncio.sleep(interval)
        states = open_states()
        if not states:
            marks.clear()
            continue
        try:
            current = await run(store.change_marks, [state.folder_id for state in states])
        except DatabaseError as exc:
            # Tried again at the next interval; sessions still see changes on their next command.
            log.warning("IMAP: reading folder changes failed: %s", exc)
            continue
        for state in states:
            mark = current.get(state.folder_id)
            if mark != marks.get(state.folder_id):
                # Also the first time: whatever changed before the watcher looked is news too
                # (a needless wake-up costs the session one query).
                marks[state.folder_id] = mark
                state.poke()
