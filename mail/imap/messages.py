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
    """Parsed message contents, least recently used first out, bounded in bytes.

    A parsed content takes far more memory than its bytes (measured with pymap 0.36: about
    14 KiB and 7 times the bytes parsed), so an entry is weighed as that."""

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

    @staticmethod
    def weight(parsed_bytes: int) -> int:
        return 16 * 1024 + 8 * parsed_bytes

    def put(self, key: tuple[int, bool], content: MessageContent, parsed_bytes: int) -> None:
        size = self.weight(parsed_bytes)
        if size > self._max // 4 or key in self._entries:
            return
        self._entries[key] = (content, size)
        self._bytes += size
        while self._bytes > self._max:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


contents = ContentCache()


def _read(row: Row, header_only: bool) -> tuple[MessageContent, int] | None:
    """The parsed content (its header only, when `header_only`) and the bytes parsed; None
    when the file is gone (its last copy was expunged since the session listed it)."""
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
    raw = row.prepended + raw
    return MessageContent.parse(raw), len(raw)


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
            read = await run(_read, self.row, header_only)
            if read is None:
                return LoadedMessage(self, requirement, None)
            content, parsed_bytes = read
            contents.put(key, content, parsed_bytes)
        return LoadedMessage(self, requirement, content)


class LoadedMessage(BaseLoadedMessage):
    pass
