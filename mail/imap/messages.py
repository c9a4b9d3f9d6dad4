"""Messages as pymap sees them, and their parsed contents, read from the `messages` storage
and kept in a bounded cache."""

from __future__ import annotations

from collections import OrderedDict

from pymap.message import BaseLoadedMessage, BaseMessage
from pymap.mime import MessageContent
from pymap.parsing.specials import FetchRequirement
from pymap.parsing.specials.flag import Flag

from mail.imap.store import Row
from mail.imap.threads import run
from mail.services.storage import message_storage


class ContentCache:
    """Parsed message contents, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: OrderedDict[tuple[int, bool], tuple[MessageContent, int]] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, key: tuple[int, bool]) -> MessageContent | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple[int, bool], content: MessageContent, size: int) -> None:
        if size > self._max // 4 or key in self._entries:
            return
        self._entries[key] = (content, size)
        self._bytes += size
        while self._bytes > self._max:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


contents = ContentCache()


def _read(row: Row, header_only: bool) -> MessageContent | None:
    """The parsed content (its header only, when `header_only`); None when the file is gone
    (its last copy was expunged since the session listed it)."""
    try:
        fh = message_storage().open(row.storage_name, "rb")
    except FileNotFoundError:
        return None
    with fh:
        if header_only:
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                chunk = fh.read(65536)
                if not chunk:
                    break
                head += chunk
            end = head.find(b"\r\n\r\n")
            raw = head[: end + 4] if end >= 0 else head
        else:
            raw = fh.read()
    return MessageContent.parse(row.prepended + raw)


class Message(BaseMessage):
    """A message of a folder as sessions track it: UID, flags, internal date, and where its
    content is stored."""

    __slots__ = ["row"]

    def __init__(self, row: Row, *, expunged: bool = False) -> None:
        flags = frozenset(Flag(f.encode()) for f in row.flags)
        super().__init__(row.uid, row.internal_date, flags, expunged=expunged)
        self.row = row

    async def load_content(self, requirement: FetchRequirement) -> LoadedMessage:
        if requirement.has_none(FetchRequirement.CONTENT):
            return LoadedMessage(self, requirement, None)
        header_only = not requirement.has_all(FetchRequirement.BODY)
        key = (self.row.id, header_only)
        content = contents.get(key) or contents.get((self.row.id, False))
        if content is None:
            content = await run(_read, self.row, header_only)
            if content is None:
                return LoadedMessage(self, requirement, None)
            contents.put(key, content, self.row.size)
        return LoadedMessage(self, requirement, content)


class LoadedMessage(BaseLoadedMessage):
    pass
