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
from collections.abc import Iterable
from dataclasses import replace
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
        self._changed: asyncio.Future | None = None
        self.gone = False
        self.stale = True
        self.claimed_up_to = 0  # uid_next when sessions of this process last claimed \Recent
        self.keywords: set[str] = set()  # every keyword seen on a message of the folder
        self.removed: dict[int, Row] = {}  # the messages expunged last, as they were
        self.sessions = 0  # sessions that have the folder selected

    def _left(self) -> None:
        self.sessions -= 1

    def poke(self) -> None:
        """The folder may have changed: the next refresh asks the database, and the sessions
        waiting in IDLE wake up."""
        self.stale = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._changed = self._changed, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def record(
        self, modseq: int, *, flags: dict[int, frozenset[str]] | None = None, expunged: Iterable[int] = ()
    ) -> None:
        """A change a session of this process committed, which gave the folder `modseq`: the
        messages' new flags, the UIDs expunged. When it is the only change since the last look
        (the folder's modseq was one less, no refresh under way), it is applied here and the
        database is not asked again; otherwise this is a poke. Either way the other sessions
        hear of it."""
        if modseq != self.modseq + 1 or self.lock.locked() or self.gone:
            self.poke()
            return
        changed: set[int] = set()
        for uid, new in (flags or {}).items():
            row = self.messages.get(uid)
            if row is not None:
                self.messages[uid] = replace(row, flags=new, modseq=modseq)
                self.keywords.update(flag for flag in new if not flag.startswith("\\"))
                changed.add(uid)
        gone: set[int] = set()
        for uid in expunged:
            row = self.messages.pop(uid, None)
            if row is not None:
                self.removed[uid] = row
                gone.add(uid)
        self._forget_removed()
        self.modseq = modseq
        if self.info is not None:
            self.info = replace(self.info, highest_modseq=modseq)
        if changed or gone:
            self.version += 1
            self.log.append((self.version, frozenset(changed), frozenset(gone)))
        self._wake()

    def _forget_removed(self) -> None:
        while len(self.removed) > self.LOG_LENGTH:
            del self.removed[next(iter(self.removed))]

    def changed(self) -> asyncio.Future:
        """Done at the next poke: one future for every session that waits (IDLE)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

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
                self._forget_removed()
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


# The folders selected last stay in memory a while after their last session ends: the next
# SELECT (a client that logs in for every check) reads only what changed since.
_kept: dict[int, FolderState] = {}
KEPT_STATES = 256


def folder_state(folder_id: int) -> FolderState:
    state = _states.get(folder_id)
    if state is None:
        state = _states[folder_id] = FolderState(folder_id)
    _kept.pop(folder_id, None)
    _kept[folder_id] = state
    if len(_kept) > KEPT_STATES:
        del _kept[next(iter(_kept))]
    return state


def open_states() -> list[FolderState]:
    """The folders sessions of this process have selected (for mail.imap.notify). A folder
    only kept in memory is not watched: its next SELECT reads what changed."""
    return [state for state in _states.values() if state.sessions]


class Selected:
    """The folder a session has selected: the UIDs it was told of, in sequence order."""

    __slots__ = (
        "__weakref__",
        "access",
        "ghosts",
        "gone",
        "keywords",
        "modseq",
        "name",
        "readonly",
        "recent",
        "state",
        "told",
        "uids",
        "version",
    )

    def __init__(self, state: FolderState, *, name: str, readonly: bool, access: store.Access) -> None:
        self.state = state
        state.sessions += 1
        weakref.finalize(self, state._left)
        self.name = name
        self.readonly = readonly
        self.access = access
        self.uids: list[int] = []
        self.recent: set[int] = set()
        self.version = -1
        self.modseq = 0
        # Messages expunged by others while EXPUNGE responses were not allowed (RFC 9051
        # §7.5.1: not during FETCH, STORE, SEARCH): still numbered, shown as they were.
        self.ghosts: dict[int, Row] = {}
        # Flags the session was told by the command it gave (FETCH, STORE) since the last
        # update: the change is not told again.
        self.told: dict[int, frozenset[str]] = {}
        self.gone = False
        self.keywords: frozenset[str] = frozenset()  # the keywords FLAGS has named

    def flags_lines(self) -> bytes:
        """FLAGS and PERMANENTFLAGS (RFC 9051 §7.3.5): the system flags and every keyword in
        use; any keyword may be added (\\*) where the session may write."""
        self.keywords = frozenset(self.state.keywords)
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

    def flag_list(self, uid: int, row: Row | None = None) -> bytes:
        """The message's flags as FETCH FLAGS shows them, \\Recent included."""
        if row is None:
            row = self.row(uid)
        key = (row.flags if row else frozenset(), uid in self.recent)
        shown = _shown_flags.get(key)
        if shown is None:
            flags = sorted(key[0], key=_flag_order)
            if key[1]:
                flags.append("\\Recent")
            if len(_shown_flags) > 4096:
                _shown_flags.clear()
            shown = _shown_flags[key] = flag_list(flags)
        return shown

    def load(self) -> None:
        """Take the folder's messages as they are now (SELECT)."""
        self.uids = sorted(self.state.messages)
        self.version = self.state.version
        self.modseq = self.state.modseq
        self.ghosts.clear()
        self.told.clear()

    def forget(self, uids) -> None:
        """The session was told these UIDs are gone (EXPUNGE or VANISHED)."""
        for uid in sorted(uids, reverse=True):
            seq = self.seq_of(uid)
            if seq is not None:
                del self.uids[seq - 1]
            self.recent.discard(uid)
            self.ghosts.pop(uid, None)

    def updates(self, *, expunges: bool, condstore: bool, uid_fetch: bool = False) -> list[bytes]:
        """The untagged responses that tell the session what changed since it was last told
        (EXPUNGE, EXISTS, FETCH FLAGS), and records them as told. Without `expunges`, expunged
        messages stay numbered until a command that allows EXPUNGE responses."""
        out: list[bytes] = []
        state = self.state
        delta = state.since(self.version)
        if delta is None:
            # The change log no longer reaches back: every message's flags are told again.
            changed = sorted(state.messages.values(), key=lambda row: row.uid)
            expunged = {uid for uid in self.uids if uid not in state.messages}
        else:
            changed, expunged = delta
        self.version = state.version
        for uid in expunged:
            if uid in state.messages or uid in self.ghosts or self.seq_of(uid) is None:
                continue
            self.ghosts[uid] = state.removed.get(uid) or _ghost(
                uid, self.told.get(uid, frozenset()), state.modseq
            )
        if expunges and self.ghosts:
            for uid in sorted(self.ghosts, reverse=True):
                seq = self.seq_of(uid)
                if seq is not None:
                    del self.uids[seq - 1]
                    out.append(b"* %d EXPUNGE\r\n" % seq)
                self.recent.discard(uid)
            self.ghosts.clear()
        last = self.uids[-1] if self.uids else 0
        new = []
        for row in changed:
            uid = row.uid
            if uid > last:
                new.append(uid)
                continue
            if uid in self.ghosts or self.told.get(uid) == row.flags:
                continue
            seq = self.seq_of(uid)
            if seq is None:
                continue
            items = b""
            if uid_fetch:
                items += b"UID %d " % uid
            items += b"FLAGS " + self.flag_list(uid, row)
            if condstore:
                items += b" MODSEQ (%d)" % row.modseq
            out.append(b"* %d FETCH (%s)\r\n" % (seq, items))
        self.told.clear()
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


# Flag lists as sent, by (flags, recent): a folder has few distinct ones.
_shown_flags: dict[tuple[frozenset[str], bool], bytes] = {}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_ORDER = {"\\Answered": 0, "\\Flagged": 1, "\\Deleted": 2, "\\Seen": 3, "\\Draft": 4}


def _flag_order(flag: str) -> tuple[int, str]:
    return (_ORDER.get(flag, 5), flag)


def poke(folder_id: int) -> None:
    """A session of this process changed the folder: the others hear of it at once."""
    state = _states.get(folder_id)
    if state is not None:
        state.poke()
