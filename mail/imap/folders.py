"""Folders as sessions see them, over mail.imap.store.

A folder that sessions of this process have open is a FolderState: its messages as of the last
look (uid -> Row), shared by every session of the process, refreshed by one query that
returns only what changed since (mail.imap.store.changes), and a change log so each session is
told only what it has not seen yet. mail.imap.notify wakes IDLE sessions when another process
changes the folder.

A session's selected folder is a Selected: the UIDs in the order of their message sequence
numbers as that session was told them (RFC 9051 §2.3.1.2), and what it knows of their flags.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import weakref
from collections import deque
from datetime import UTC, datetime

from mail.imap import store
from mail.imap.responses import flag_list
from mail.imap.store import FolderGone, Row
from mail.imap.threads import run

log = logging.getLogger("mail.imap")


class FolderState:
    """The messages of one folder as this process last saw them, shared by its sessions."""

    LOG_LENGTH = 1000

    def __init__(self, folder_id: int) -> None:
        self.folder_id = folder_id
        self.messages: dict[int, Row] = {}
        self.modseq = 0  # the folder's highest_modseq at the last refresh
        self.info: store.FolderInfo | None = None
        self.version = 0  # this process's count of refreshes that changed something
        self.log: deque[tuple[int, frozenset[int], frozenset[int]]] = deque(maxlen=self.LOG_LENGTH)
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.gone = False
        self.stale = True
        self.claimed_up_to = 0  # uid_next when sessions of this process last claimed \Recent
        self.keywords: set[str] = set()  # every keyword seen on a message of the folder
        self.removed: dict[int, Row] = {}  # the messages expunged last, as they were

    def poke(self) -> None:
        """The folder may have changed: the next refresh asks the database, and the sessions
        waiting in IDLE wake up."""
        self.stale = True
        self.changed.set()
        self.changed = asyncio.Event()

    async def refresh(self, *, force: bool = False) -> None:
        """Bring the messages up to date. Asks the database only when the folder may have
        changed since the last time (every change this process makes pokes it, and
        mail.imap.notify pokes it for changes made elsewhere), or when `force`d."""
        async with self.lock:
            if not (self.stale or force):
                return
            self.stale = False  # a poke while the query runs makes it stale again
            try:
                delta = await run(store.changes, self.folder_id, self.modseq)
            except FolderGone:
                self.gone = True
                raise
            self.info = delta.folder
            changed = {row.uid for row in delta.rows}
            for row in delta.rows:
                self.messages[row.uid] = row
                self.keywords.update(flag for flag in row.flags if not flag.startswith("\\"))
            expunged: set[int] = set()
            if len(self.messages) != delta.count:
                present = await run(store.all_uids, self.folder_id)
                expunged = set(self.messages) - present
                for uid in expunged:
                    # Kept a while: sessions not yet told of the expunge still show it.
                    self.removed[uid] = self.messages.pop(uid)
                while len(self.removed) > self.LOG_LENGTH:
                    del self.removed[next(iter(self.removed))]
            self.modseq = delta.folder.highest_modseq
            if changed or expunged:
                self.version += 1
                self.log.append((self.version, frozenset(changed), frozenset(expunged)))

    def since(self, version: int | None) -> tuple[list[Row], frozenset[int]] | None:
        """(messages changed, UIDs expunged) after `version`, or None when the log no longer
        reaches back that far (the session then compares everything)."""
        if version is None:
            return None
        if version == self.version:
            return [], frozenset()
        if not self.log or self.log[0][0] > version + 1:
            return None
        changed: set[int] = set()
        expunged: set[int] = set()
        for entry_version, entry_changed, entry_expunged in self.log:
            if entry_version > version:
                changed |= entry_changed
                expunged |= entry_expunged
        return [self.messages[uid] for uid in sorted(changed) if uid in self.messages], frozenset(expunged)


_states: weakref.WeakValueDictionary[int, FolderState] = weakref.WeakValueDictionary()


def folder_state(folder_id: int) -> FolderState:
    state = _states.get(folder_id)
    if state is None:
        state = _states[folder_id] = FolderState(folder_id)
    return state


def open_states() -> list[FolderState]:
    """The folders sessions of this process have open (for mail.imap.notify)."""
    return list(_states.values())


class Selected:
    """The folder a session has selected: the UIDs it was told of, in sequence order, and the
    flags it was last told of each (to report only changes)."""

    def __init__(self, state: FolderState, *, name: str, readonly: bool, access: store.Access) -> None:
        self.state = state
        self.name = name
        self.readonly = readonly
        self.access = access
        self.uids: list[int] = []
        self.flags: dict[int, frozenset[str]] = {}
        self.recent: set[int] = set()
        self.version = -1
        self.modseq = 0
        # Messages expunged by others while EXPUNGE responses were not allowed (RFC 9051
        # §7.5.1: not during FETCH, STORE, SEARCH): still numbered, shown as they were.
        self.ghosts: dict[int, Row] = {}
        self.gone = False
        self.keywords: set[str] = set()  # the keywords FLAGS has named to the session

    def flags_lines(self) -> bytes:
        """FLAGS and PERMANENTFLAGS (RFC 9051 §7.3.5): the system flags and every keyword in
        use; any keyword may be added (\\*) where the session may write."""
        self.keywords = set(self.state.keywords)
        known = [*SYSTEM_FLAGS, *sorted(self.keywords)]
        out = b"* FLAGS " + flag_list(known) + b"\r\n"
        if self.readonly:
            return out + b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
        return out + b"* OK [PERMANENTFLAGS " + flag_list([*known, "\\*"]) + b"] Flags permitted.\r\n"

    def new_keywords(self) -> bytes:
        """FLAGS again when messages carry keywords the session was not told of."""
        if self.state.keywords <= self.keywords:
            return b""
        return self.flags_lines()

    @property
    def folder_id(self) -> int:
        return self.state.folder_id

    def row(self, uid: int) -> Row | None:
        return self.state.messages.get(uid) or self.ghosts.get(uid)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def message_flags(self, uid: int) -> list[str]:
        row = self.row(uid)
        flags = sorted(row.flags, key=_flag_order) if row else []
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def load(self) -> None:
        """Take the folder's messages as they are now (SELECT)."""
        self.uids = sorted(self.state.messages)
        self.flags = {uid: row.flags for uid, row in self.state.messages.items()}
        self.version = self.state.version
        self.modseq = self.state.modseq
        self.ghosts.clear()

    def updates(self, *, expunges: bool, condstore: bool, uid_fetch: bool = False) -> list[bytes]:
        """The untagged responses that tell the session what changed since it was last told
        (EXPUNGE, EXISTS, FETCH FLAGS), and records them as told. Without `expunges`, expunged
        messages stay numbered until a command that allows EXPUNGE responses."""
        out: list[bytes] = []
        state = self.state
        delta = state.since(self.version)
        if delta is None:
            changed = [row for uid, row in state.messages.items() if self.flags.get(uid) != row.flags]
            expunged = set(self.flags) - set(state.messages)
        else:
            changed, expunged = delta
            expunged = set(expunged) & set(self.flags)
        self.version = state.version
        for uid in expunged:
            if uid in state.messages:
                continue
            ghost_flags = self.flags.get(uid)
            if ghost_flags is not None and uid not in self.ghosts:
                self.ghosts[uid] = state.removed.get(uid) or _ghost(uid, ghost_flags, state.modseq)
        if expunges and self.ghosts:
            for uid in sorted(self.ghosts, reverse=True):
                seq = self.seq_of(uid)
                if seq is not None:
                    del self.uids[seq - 1]
                    out.append(b"* %d EXPUNGE\r\n" % seq)
                self.flags.pop(uid, None)
                self.recent.discard(uid)
            self.ghosts.clear()
        new = []
        for row in changed:
            uid = row.uid
            if uid in self.ghosts:
                continue
            known = self.flags.get(uid)
            if known is None:
                if not self.uids or uid > self.uids[-1]:
                    new.append(uid)
                    self.flags[uid] = row.flags
                continue
            if known != row.flags:
                self.flags[uid] = row.flags
                seq = self.seq_of(uid)
                items = b""
                if uid_fetch:
                    items += b"UID %d " % uid
                items += b"FLAGS " + flag_list(self.message_flags(uid))
                if condstore:
                    items += b" MODSEQ (%d)" % row.modseq
                out.append(b"* %d FETCH (%s)\r\n" % (seq, items))
        if new:
            new.sort()
            self.uids.extend(new)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        self.modseq = max(self.modseq, state.modseq)
        keywords = self.new_keywords()
        return [keywords, *out] if keywords else out


def _ghost(uid: int, flags: frozenset[str], modseq: int) -> Row:
    """An expunged message no longer remembered: its flags, no content."""
    return Row(0, uid, flags, datetime.now(UTC), 0, "", b"", modseq, 0)


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_ORDER = {"\\Answered": 0, "\\Flagged": 1, "\\Deleted": 2, "\\Seen": 3, "\\Draft": 4}


def _flag_order(flag: str) -> tuple[int, str]:
    return (_ORDER.get(flag, 5), flag)


def poke(folder_id: int) -> None:
    """A session of this process changed the folder: the others hear of it at once."""
    state = _states.get(folder_id)
    if state is not None:
        state.poke()
