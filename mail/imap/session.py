"""One logged-in session: the folders of every mailbox the user may open, as one IMAP
hierarchy, and pymap's session interface over them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pymap.backend.session import BaseSession
from pymap.config import IMAPConfig
from pymap.exceptions import (
    MailboxNotFound,
    MailboxReadOnly,
    NotAllowedError,
)
from pymap.flags import FlagOp
from pymap.listtree import ListTree
from pymap.parsing.message import AppendMessage
from pymap.parsing.response.code import AppendUid, CopyUid
from pymap.parsing.specials import ObjectId
from pymap.parsing.specials.flag import Seen

from mail.imap import store
from mail.imap.folders import FolderState, MailboxData, folder_state, refused
from mail.imap.messages import Message
from mail.imap.store import Access, FolderGone, StoreError
from mail.imap.threads import run


class MailboxSet:
    """The folders of every mailbox the user may open, as one IMAP hierarchy."""

    delimiter = store.DELIMITER

    # How long a session trusts what it learned of a folder name (another session may rename
    # or delete it; a deleted folder is noticed at once by the refresh of its messages).
    NAME_MEMORY = 2.0

    def __init__(self, accesses: list[Access]) -> None:
        self.accesses = accesses
        # The states of the folders this session has looked at, kept while it lasts: the
        # process forgets a folder's state once no session holds it.
        self._states: dict[int, FolderState] = {}
        self._known: dict[str, tuple[float, store.FolderInfo]] = {}

    def locate(self, name: str) -> tuple[Access, str]:
        """The mailbox and the folder name within it for an IMAP name. Raises KeyError."""
        for access in self.accesses:
            if not access.prefix:
                continue
            if name.startswith(access.prefix + self.delimiter):
                return access, name[len(access.prefix) + 1 :]
        if name.upper().startswith(store.SHARED_PREFIX.upper() + self.delimiter) or name.upper() == "SHARED":
            raise KeyError(name)
        if self.accesses and not self.accesses[0].prefix:
            return self.accesses[0], name
        raise KeyError(name)

    async def folder_names(self) -> list[tuple[str, bool, str | None]]:
        """(IMAP name, subscribed, special use) of every folder the user sees."""

        def names():
            result = []
            for access in self.accesses:
                for stored, shown, subscribed in store.folder_rows(access):
                    result.append(
                        (shown, subscribed, store.special_use(stored) if not access.prefix else None)
                    )
            return result

        return await run(names)

    async def _tree(self, *, subscribed_only: bool) -> ListTree:
        names = await self.folder_names()
        tree = ListTree(self.delimiter)
        tree.update(*(name for name, subscribed, _ in names if subscribed or not subscribed_only))
        return tree

    async def special_uses(self) -> dict[str, str]:
        return {name: use for name, _, use in await self.folder_names() if use}

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        try:
            access, folder = self.locate(name)
            await run(store.set_subscribed, access, folder, subscribed)
        except KeyError:
            raise MailboxNotFound(name) from None
        except StoreError as exc:
            raise refused(exc, name) from None

    async def list_subscribed(self) -> ListTree:
        return await self._tree(subscribed_only=True)

    async def list_mailboxes(self) -> ListTree:
        return await self._tree(subscribed_only=False)

    async def get_mailbox(self, name: str) -> MailboxData:
        access, folder = self.locate(name)
        remembered = self._known.get(name)
        if remembered is not None and time.monotonic() - remembered[0] < self.NAME_MEMORY:
            info = remembered[1]
        else:
            try:
                info = await run(store.find_folder, access, folder)
            except FolderGone:
                self._known.pop(name, None)
                raise KeyError(name) from None
            self._known[name] = (time.monotonic(), info)
        state = self._states.get(info.id)
        if state is None:
            state = self._states[info.id] = folder_state(info.id)
        return MailboxData(access, name, info, state)

    def _writable(self, name: str) -> tuple[Access, str]:
        access, folder = self.locate(name)
        if not access.writable:
            raise MailboxReadOnly(name)
        return access, folder

    async def add_mailbox(self, name: str) -> ObjectId:
        self._known.clear()
        try:
            access, folder = self._writable(name)
        except KeyError:
            raise NotAllowedError(
                "Mailboxes are created in your own namespace or a shared one you may write."
            ) from None
        try:
            folder_id = await run(store.create_folder, access, folder)
        except StoreError as exc:
            if exc.code == "ALREADYEXISTS":
                raise ValueError(name) from None
            raise refused(exc, name) from None
        return ObjectId(b"F%d" % folder_id)

    async def delete_mailbox(self, name: str) -> None:
        self._known.clear()
        access, folder = self._writable(name)
        try:
            await run(store.delete_folder, access, folder)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise KeyError(name) from None
            raise refused(exc, name) from None

    async def rename_mailbox(self, before: str, after: str) -> None:
        self._known.clear()
        access, old = self._writable(before)
        target, new = self._writable(after)
        if target != access:
            raise NotAllowedError("Mailboxes are renamed within one mailbox.")
        try:
            await run(store.rename_folder, access, old, new)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise KeyError(before) from None
            if exc.code == "ALREADYEXISTS":
                raise ValueError(after) from None
            raise refused(exc, before) from None


class Session(BaseSession[Message]):
    """One logged-in IMAP session. Flag changes, copies and moves of many messages go to the
    database as one change each, not one per message."""

    def __init__(self, owner: str, mailbox_set: MailboxSet, config: IMAPConfig) -> None:
        super().__init__(owner)
        self._mailbox_set = mailbox_set
        self._config = config

    @property
    def config(self) -> IMAPConfig:
        return self._config

    @property
    def mailbox_set(self) -> MailboxSet:
        return self._mailbox_set

    async def list_mailboxes(self, ref_name, filter_, subscribed=False, selected=None):
        found, updates = await super().list_mailboxes(ref_name, filter_, subscribed, selected)
        uses = await self._mailbox_set.special_uses()
        listed = []
        for name, delimiter, attributes in found:
            use = uses.get(name)
            if use is not None:
                attributes = [*attributes, use.encode()[1:]]
            listed.append((name, delimiter, attributes))
        return listed, updates

    async def fetch_messages(self, selected, sequence_set, set_seen):
        mbx = await self._get_selected(selected)
        found = [
            (seq, await mbx.get(cached.uid, cached))
            for seq, cached in selected.messages.get_all(sequence_set)
        ]
        if set_seen and not selected.readonly:
            await mbx.update_many([m for _, m in found if not m.expunged], frozenset({Seen}), FlagOp.ADD)
            await mbx._refresh()
            found = [(seq, mbx.state.messages.get(m.uid, m)) for seq, m in found]
        return found, await mbx.update_selected(selected)

    async def update_flags(self, selected, sequence_set, flag_set, mode=FlagOp.REPLACE):
        if selected.readonly:
            raise MailboxReadOnly()
        mbx = await self._get_selected(selected)
        permanent = selected.permanent_flags & flag_set
        found = [
            (seq, await mbx.get(cached.uid, cached))
            for seq, cached in selected.messages.get_all(sequence_set)
        ]
        await mbx.update_many([m for _, m in found if not m.expunged], permanent, mode)
        await mbx._refresh()
        result = []
        for seq, message in found:
            current = mbx.state.messages.get(message.uid, message)
            if not current.expunged:
                selected.session_flags.update(message.uid, flag_set, mode)
            result.append((seq, current))
        return result, await mbx.update_selected(selected)

    async def _transfer(self, selected, sequence_set, mailbox, *, move: bool):
        mbx = await self._get_selected(selected)
        if move and selected.readonly:
            raise MailboxReadOnly()
        dest = await self._get_mailbox(mailbox, try_create=True)
        if dest.readonly:
            raise MailboxReadOnly(mailbox)
        uids = [uid for _, uid in selected.messages.get_uids(sequence_set)]
        pairs = await mbx.copy_many(uids, dest, move=move) if uids else []
        copy_uid = CopyUid(dest.uid_validity, pairs) if pairs else None
        return copy_uid, await mbx.update_selected(selected)

    async def copy_messages(self, selected, sequence_set, mailbox):
        return await self._transfer(selected, sequence_set, mailbox, move=False)

    async def move_messages(self, selected, sequence_set, mailbox):
        return await self._transfer(selected, sequence_set, mailbox, move=True)

    async def append_messages(self, name: str, messages: Sequence[AppendMessage], selected=None):
        mbx = await self._get_mailbox(name, try_create=True)
        if mbx.readonly:
            raise MailboxReadOnly(name)
        dest_selected = self._pick_selected(selected, mbx)
        uids = []
        for message in messages:
            uid = (await mbx.append(message, recent=dest_selected is None)).uid
            if dest_selected is not None:
                dest_selected.session_flags.add_recent(uid)
            uids.append(uid)
        return AppendUid(mbx.uid_validity, uids), await self._load_updates(selected, mbx)
