"""One logged-in session's folders: those of every mailbox the user may open, as one IMAP
hierarchy (the own mailbox at the top, granted ones under Shared/<address>/)."""

from __future__ import annotations

import re
import time

from mail.imap import store
from mail.imap.folders import FolderState, folder_state
from mail.imap.store import Access, FolderGone
from mail.imap.threads import run


class Folder:
    """A folder name as the session lists it."""

    __slots__ = ("access", "exists", "name", "special_use", "stored", "subscribed")

    def __init__(
        self,
        name: str,
        subscribed: bool,
        special_use: str | None,
        access: Access,
        stored: str,
        *,
        exists: bool = True,
    ):
        self.exists = exists
        self.name = name
        self.subscribed = subscribed
        self.special_use = special_use
        self.access = access
        self.stored = stored


class MailboxSet:
    """The folders of every mailbox the user may open, as one IMAP hierarchy."""

    delimiter = store.DELIMITER

    # How long a session trusts what it learned of a folder name (another session may rename
    # or delete it; a deleted folder is noticed at once by the refresh of its messages).
    NAME_MEMORY = 2.0

    def __init__(self, accesses: list[Access]) -> None:
        self.accesses = accesses
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

    def writable(self, name: str) -> tuple[Access, str]:
        access, folder = self.locate(name)
        if not access.writable:
            raise store.StoreError("NOPERM", "Mailbox is read-only.")
        return access, folder

    async def folders(self) -> list[Folder]:
        """Every folder the user sees, and the subscribed names without a folder
        (exists=False)."""

        def names():
            result = []
            for access in self.accesses:
                for stored, shown, subscribed in store.folder_rows(access):
                    use = store.special_use(stored) if not access.prefix else None
                    result.append(Folder(shown, subscribed, use, access, stored))
                for shown in store.orphan_subscriptions(access):
                    result.append(Folder(shown, True, None, access, shown, exists=False))
            return result

        return await run(names)

    async def info(self, name: str, *, fresh: bool = False) -> tuple[Access, store.FolderInfo]:
        """The folder `name`. Raises KeyError when there is no such folder."""
        access, folder = self.locate(name)
        remembered = self._known.get(name)
        if not fresh and remembered is not None and time.monotonic() - remembered[0] < self.NAME_MEMORY:
            return access, remembered[1]
        try:
            info = await run(store.find_folder, access, folder)
        except FolderGone:
            self._known.pop(name, None)
            raise KeyError(name) from None
        self._known[name] = (time.monotonic(), info)
        return access, info

    async def state(self, name: str) -> tuple[Access, FolderState]:
        access, info = await self.info(name)
        return access, folder_state(info.id)

    def forget(self) -> None:
        self._known.clear()


def pattern_regex(reference: str, pattern: str, delimiter: str = store.DELIMITER) -> re.Pattern:
    """LIST's reference and mailbox pattern (RFC 9051 §6.3.9) as a regex: "*" matches
    anything, "%" anything but the delimiter."""
    full = reference + pattern
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append("[^" + re.escape(delimiter) + "]*")
        else:
            out.append(re.escape(char))
    regex = "".join(out)
    # INBOX is case-insensitive (RFC 9051 §5.1).
    if full.upper().startswith("INBOX"):
        regex = "(?i:" + regex[:5] + ")" + regex[5:]
    return re.compile(regex + r"\Z", re.S)
