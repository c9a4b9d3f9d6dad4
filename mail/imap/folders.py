"""Folders as pymap's MailboxDataInterface, over mail.imap.store.

A folder that sessions of this process have open is a FolderState: its messages as of the last
look (uid -> Message), shared by every session of the process, refreshed by one query that
returns only what changed since (mail.imap.store.changes), and a change log so each session is
told only what it has not seen yet. mail.imap.notify wakes IDLE sessions when another process
changes the folder.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterable, Iterable, Sequence
from datetime import UTC, datetime

from pymap.concurrent import Event
from pymap.exceptions import (
    MailboxError,
    MailboxNotFound,
    MailboxReadOnly,
)
from pymap.flags import FlagOp
from pymap.interfaces.message import CachedMessage
from pymap.mailbox import MailboxSnapshot
from pymap.parsing.message import AppendMessage
from pymap.parsing.response.code import ResponseCode
from pymap.parsing.specials import ObjectId, SequenceSet
from pymap.parsing.specials.flag import Flag, Seen
from pymap.selected import SelectedMailbox, SelectedSet

from mail.imap import store
from mail.imap.messages import Message
from mail.imap.store import Access, FolderGone, Row, StoreError
from mail.imap.threads import run

log = logging.getLogger("mail.imap")


def refused(exc: StoreError, mailbox: str | None = None) -> MailboxError:
    """The NO answer (with its RFC 5530 code) of a change the store refused."""
    return MailboxError(mailbox, str(exc).encode(), ResponseCode.of(exc.code.encode()))


class FolderState:
    """The messages of one folder as this process last saw them, shared by its sessions."""

    LOG_LENGTH = 1000

    def __init__(self, folder_id: int) -> None:
        self.folder_id = folder_id
        self.messages: dict[int, Message] = {}
        self.modseq = 0  # the folder's highest_modseq at the last refresh
        self.info: store.FolderInfo | None = None
        self.version = 0  # this process's count of refreshes that changed something
        self.log: deque[tuple[int, frozenset[int], frozenset[int]]] = deque(maxlen=self.LOG_LENGTH)
        self.selected_set = SelectedSet()
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.gone = False
        self.stale = True
        self.claimed_up_to = 0  # uid_next when sessions of this process last claimed \Recent
        self.keywords: set[str] = set()  # every keyword seen on a message of the folder

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
                self.messages[row.uid] = Message(row)
                self.keywords.update(flag for flag in row.flags if not flag.startswith("\\"))
            expunged: set[int] = set()
            if len(self.messages) != delta.count:
                present = await run(store.all_uids, self.folder_id)
                expunged = set(self.messages) - present
                for uid in expunged:
                    del self.messages[uid]
            self.modseq = delta.folder.highest_modseq
            if changed or expunged:
                self.version += 1
                self.log.append((self.version, frozenset(changed), frozenset(expunged)))

    def since(self, version: int | None) -> tuple[list[Message], frozenset[int]] | None:
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


class MailboxData:
    """One folder as pymap's MailboxDataInterface."""

    def __init__(self, access: Access, name: str, info: store.FolderInfo, state: FolderState) -> None:
        self.access = access
        self.name = name
        self.state = state
        self._info = info
        self._mailbox_id = ObjectId(b"F%d" % info.id)

    @property
    def mailbox_id(self) -> ObjectId:
        return self._mailbox_id

    @property
    def readonly(self) -> bool:
        return not self.access.writable

    @property
    def uid_validity(self) -> int:
        return self._info.uid_validity

    @property
    def permanent_flags(self) -> frozenset[Flag]:
        return frozenset(Flag(f.encode()) for f in store.SYSTEM_FLAGS) | {Flag(b"\\*")}

    @property
    def session_flags(self) -> frozenset[Flag]:
        return frozenset({Flag(b"\\Recent")})

    @property
    def selected_set(self) -> SelectedSet:
        return self.state.selected_set

    async def _refresh(self, *, force: bool = False) -> None:
        try:
            await self.state.refresh(force=force)
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        assert self.state.info is not None
        self._info = self.state.info

    async def update_selected(
        self, selected: SelectedMailbox, *, wait_on: Event | None = None
    ) -> SelectedMailbox:
        if wait_on is not None:
            await _wait_either(wait_on, self.state.changed)
        try:
            await self._refresh()
        except MailboxNotFound:
            selected.set_deleted()
            return selected
        if not selected.readonly and self._info.uid_next > self.state.claimed_up_to:
            # New mail: the first read-write session to see it gets it as \Recent.
            self.state.claimed_up_to = self._info.uid_next
            await self.claim_recent(selected)
        delta = self.state.since(selected.mod_sequence)
        if delta is None:
            selected.set_messages(sorted(self.state.messages.values(), key=lambda m: m.uid))
        else:
            messages, expunged = delta
            selected.add_updates(messages, expunged)
        selected.mod_sequence = self.state.version
        return selected

    async def append(self, append_msg: AppendMessage, *, recent: bool = False) -> Message:
        """pymap's `recent` is true when no session of the appender has the folder selected:
        then the message stays \\Recent for whoever looks next."""
        if self.readonly:
            raise MailboxReadOnly(self.name)
        flags = frozenset(str(f) for f in append_msg.flag_set if str(f) != "\\Recent")
        when = append_msg.when if append_msg.when and append_msg.when.tzinfo else None
        try:
            _, uid = await run(
                store.append,
                self.state.folder_id,
                access=self.access,
                raw=bytes(append_msg.literal),
                flags=flags,
                when=when,
                seen_by_appender=not recent,
            )
        except StoreError as exc:
            raise refused(exc, self.name) from None
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        self.state.poke()
        row = Row(0, uid, flags, when or datetime.now(UTC), len(append_msg.literal), "", b"")
        return Message(row)

    async def copy_many(
        self, uids: Sequence[int], destination: MailboxData, *, move: bool
    ) -> list[tuple[int, int]]:
        try:
            _, pairs = await run(
                store.copy,
                self.state.folder_id,
                list(uids),
                destination.state.folder_id,
                move=move,
                target_mailbox_id=destination.access.mailbox_id,
            )
        except StoreError as exc:
            raise refused(exc, destination.name) from None
        except FolderGone:
            raise MailboxNotFound(destination.name) from None
        destination.state.poke()
        if move:
            self.state.poke()
        return pairs

    async def copy(self, uid: int, destination: MailboxData, *, recent: bool = False) -> int | None:
        pairs = await self.copy_many([uid], destination, move=False)
        return pairs[0][1] if pairs else None

    async def move(self, uid: int, destination: MailboxData, *, recent: bool = False) -> int | None:
        pairs = await self.copy_many([uid], destination, move=True)
        return pairs[0][1] if pairs else None

    async def get(self, uid: int, cached_msg: CachedMessage) -> Message:
        message = self.state.messages.get(uid)
        if message is None:
            if not isinstance(cached_msg, Message):
                raise TypeError(cached_msg)
            return Message(cached_msg.row, expunged=True)
        return message

    async def update_many(self, messages: Sequence[Message], flag_set: frozenset[Flag], mode: FlagOp) -> None:
        updates = []
        for message in messages:
            flags = mode.apply(message.permanent_flags, flag_set)
            if flags != message.permanent_flags:
                updates.append((message.uid, frozenset(str(f) for f in flags)))
        if updates:
            try:
                await run(store.set_flags, self.state.folder_id, updates)
            except FolderGone:
                raise MailboxNotFound(self.name) from None
            self.state.poke()

    async def update(
        self, uid: int, cached_msg: CachedMessage, flag_set: frozenset[Flag], mode: FlagOp
    ) -> Message:
        message = await self.get(uid, cached_msg)
        if not message.expunged:
            await self.update_many([message], flag_set, mode)
            await self._refresh()
            message = self.state.messages.get(uid, message)
        return message

    async def delete(self, uids: Iterable[int]) -> None:
        try:
            await run(store.expunge, self.state.folder_id, list(uids))
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        self.state.poke()

    async def claim_recent(self, selected: SelectedMailbox) -> None:
        for uid in await run(store.claim_recent, self.state.folder_id):
            selected.session_flags.add_recent(uid)

    async def cleanup(self) -> None:
        pass

    async def snapshot(self) -> MailboxSnapshot:
        # SELECT, EXAMINE and STATUS: what the database holds now, whatever the watcher knows.
        await self._refresh(force=True)
        messages = sorted(self.state.messages.values(), key=lambda m: m.uid)
        unseen = 0
        first_unseen = None
        for seq, message in enumerate(messages, 1):
            if Seen not in message.permanent_flags:
                unseen += 1
                if first_unseen is None:
                    first_unseen = seq
        # FLAGS and PERMANENTFLAGS name the system flags and the keywords in use; STORE
        # takes any keyword (self.permanent_flags has \*, for the selected state only).
        in_use = frozenset(Flag(k.encode()) for k in self.state.keywords)
        return MailboxSnapshot(
            self.mailbox_id,
            self.readonly,
            self.uid_validity,
            (self.permanent_flags - {Flag(b"\\*")}) | in_use,
            self.session_flags,
            len(messages),
            await run(store.recent_count, self.state.folder_id),
            unseen,
            first_unseen,
            self._info.uid_next,
        )

    async def find(
        self, seq_set: SequenceSet, selected: SelectedMailbox
    ) -> AsyncIterable[tuple[int, Message]]:
        for seq, cached in selected.messages.get_all(seq_set):
            message = await self.get(cached.uid, cached)
            yield seq, message

    async def find_deleted(self, seq_set: SequenceSet, selected: SelectedMailbox) -> Sequence[int]:
        deleted = Flag(b"\\Deleted")
        return [
            message.uid
            async for _, message in self.find(seq_set, selected)
            if not message.expunged and deleted in message.permanent_flags
        ]


async def _wait_either(done: Event, changed: asyncio.Event, recheck: float = 60.0) -> None:
    """Wait until IDLE ends (`done`), the folder may have changed, or `recheck` seconds pass."""
    waiters = {asyncio.ensure_future(done.wait(timeout=recheck)), asyncio.ensure_future(changed.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
