"""Filing: the one way messages become copies in mailbox folders.

Every path that puts mail into a mailbox calls file_messages: SMTP inbound and submission
(a group commit's whole batch in one call, or one message), the rules (fileinto, redirects
to local mailboxes, vacation replies), DSNs and bounces sent on (mail.services.dsn,
mail.services.delivery.forward_bounce), and IMAP APPEND with MULTIAPPEND and CATENATE
(mail.imap.store.append). So every copy has the same row shape, whoever filed it.

For one call, in the caller's transaction: the files of the messages are written (and
synced together, mail.services.storage.ContentWrites) while their rows are inserted with
two bulk INSERTs (the contents, then the copies), folders named by a filing rule are created
on demand, and the call returns once the files are durable, so the caller's commit never
names a file that could still be lost. A database change on the message table wakes IDLE
sessions (mail.imap.notify), whoever filed it.

UIDs (RFC 9051 section 2.3.1.1): with `numbered`, each copy gets its UID now from its folder's
`uid_next` under the folder's row lock, held until the caller commits; APPEND does, since it
answers with the UIDs (APPENDUID, RFC 4315). Otherwise the UID stays NULL until the first IMAP
reader of the folder numbers the new copies (mail.imap.store.number_new): concurrent
deliveries to one inbox from several listener processes then never wait for each other's
commit, and UIDs still grow in the order IMAP sees the messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from mail.message import ParsedMessage
from mail.models import Folder, Message, MessageContent
from mail.services.directory import directory
from mail.services.rows import RowInserter
from mail.services.storage import ContentWrites, StoredFiles


@dataclass(frozen=True)
class Copy:
    """One copy of a message to file: into the folder named `folder` of mailbox `mailbox_id`
    (created when missing), or into folder `folder_id`; `address` is the mailbox's address
    (the copy's envelope recipient); `prepended` are header lines (CRLF-terminated) put
    before the stored content for this copy only; `received_at` is its internal date (now
    when None)."""

    mailbox_id: int
    address: str
    folder: str = ""
    folder_id: int | None = None
    seen: bool = False
    flagged: bool = False
    answered: bool = False
    deleted: bool = False
    draft: bool = False
    keywords: str = ""
    prepended: bytes = b""
    received_at: datetime | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message to file: its header facts and the copies wanted (none: stored only, say
    for the queue). Its bytes are `raw`, written by file_messages; or `raw` already written
    and synced as `stored_as` (mail.services.storage.write_content), of which file_messages
    inserts the row; or `content`, a row stored before (its file durable), given no new row.
    `summary` is IMAP's (envelope, structure, body) of the content, kept with it."""

    parsed: ParsedMessage
    copies: tuple[Copy, ...] = ()
    envelope_from: str = ""
    raw: bytes = b""
    stored_as: str | None = None
    content: MessageContent | None = None
    summary: tuple[bytes, bytes, bytes] | None = None


@dataclass
class Filed:
    """What file_messages stored for one NewMessage: its content row and the ids of its
    copies (with `numbered`, their UIDs as well), in the order of its copies."""

    content: MessageContent
    message_ids: list[int] = field(default_factory=list)
    uids: list[int] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """The copies as model instances, read from the database (one query)."""
        found = Message.objects.in_bulk(self.message_ids)
        return [found[pk] for pk in self.message_ids]


class FolderGone(Exception):
    """A folder named by id no longer exists."""


def file_messages(
    messages: Sequence[NewMessage], *, files: StoredFiles, numbered: bool = False
) -> list[Filed]:
    """Store `messages` and file their copies in the caller's transaction (one bulk INSERT
    for the contents, one for the copies, however many messages); return what was filed, in
    the order of `messages`. Files written here are added to `files` at once (the caller
    removes them if it does not commit). Returns once every file is durable.

    With `numbered`, copies get their UIDs now, under their folders' row locks (see the
    module's docstring); raises FolderGone when a folder given by id is gone.
    Raises OSError when storage fails; nothing is left to undo but the caller's transaction.
    """
    writes = ContentWrites(
        [m.raw for m in messages if m.content is None and m.stored_as is None], files=files
    )
    try:
        filed = _insert(messages, iter(writes.names), numbered=numbered)
    except BaseException:
        writes.settle()  # nothing still writing when the caller removes the files
        raise
    writes.wait()
    return filed


# The columns filing gives (every column of the two tables). The rows go in as plain tuples
# through RowInserter: with QuerySet.bulk_create, which builds a model instance per row and
# prepares every value of it, filing a batch of 64 inbound messages took 238-271 microseconds
# of CPU a message against 111-170 (docs/architecture.md).
_CONTENT_ROWS = RowInserter(
    MessageContent, ["storage_name", "size", "created_at", "imap_envelope", "imap_structure", "imap_body"]
)
_MESSAGE_COLUMNS = [
    "folder",
    "content",
    "prepended_headers",
    "envelope_from",
    "envelope_to",
    "header_from",
    "header_to",
    "subject",
    "date",
    "message_id",
    "size",
    "received_at",
    "seen",
    "flagged",
    "answered",
    "deleted",
    "draft",
    "keywords",
    "uid",
    "modseq",
]
_MESSAGE_ROWS = RowInserter(Message, _MESSAGE_COLUMNS)
_FOLDER, _UID, _MODSEQ = (_MESSAGE_COLUMNS.index(name) for name in ("folder", "uid", "modseq"))


def _insert(messages: Sequence[NewMessage], names, *, numbered: bool) -> list[Filed]:
    now = timezone.now()
    new_contents = [
        (message.stored_as or next(names), len(message.raw), now, *(message.summary or (None, None, None)))
        for message in messages
        if message.content is None
    ]
    content_ids = iter(_CONTENT_ROWS.insert(new_contents, returning_ids=True))
    created = iter(new_contents)
    filed = []
    for message in messages:
        if message.content is not None:
            filed.append(Filed(message.content))
            continue
        name, size = next(created)[:2]
        filed.append(
            Filed(MessageContent(id=next(content_ids), storage_name=name, size=size, created_at=now))
        )
    folders = _folder_ids(
        {(c.mailbox_id, c.folder) for m in messages for c in m.copies if c.folder_id is None}
    )
    rows = []
    for message, stored in zip(messages, filed, strict=True):
        parsed = message.parsed
        envelope_from = message.envelope_from[:320]
        for copy in message.copies:
            rows.append(
                [
                    copy.folder_id if copy.folder_id is not None else folders[(copy.mailbox_id, copy.folder)],
                    stored.content.id,
                    copy.prepended,
                    envelope_from,
                    copy.address[:320],
                    parsed.header_from,
                    parsed.header_to,
                    parsed.subject,
                    parsed.date,
                    parsed.message_id,
                    stored.content.size + len(copy.prepended),
                    copy.received_at or now,
                    copy.seen,
                    copy.flagged,
                    copy.answered,
                    copy.deleted,
                    copy.draft,
                    copy.keywords,
                    None,
                    0,
                ]
            )
    if numbered:
        _number(rows)
    ids = iter(_MESSAGE_ROWS.insert(rows, returning_ids=True))
    numbers = iter(rows)
    for message, stored in zip(messages, filed, strict=True):
        for _ in message.copies:
            stored.message_ids.append(next(ids))
            uid = next(numbers)[_UID]
            if uid is not None:
                stored.uids.append(uid)
    return filed


def _number(rows: list[list]) -> None:
    """Give `rows` their UIDs and modseq from their folders, in order, under the folders' row
    locks (taken in id order, so two callers never wait for each other in a cycle)."""
    ids = sorted({row[_FOLDER] for row in rows})
    found = {f.id: f for f in Folder.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
    if len(found) != len(ids):
        raise FolderGone(next(i for i in ids if i not in found))
    for folder in found.values():
        folder.highest_modseq += 1
    for row in rows:
        folder = found[row[_FOLDER]]
        row[_UID], row[_MODSEQ] = folder.uid_next, folder.highest_modseq
        folder.uid_next += 1
    for folder in found.values():
        # Not through save(): a Folder save tells every process to forget what it remembers
        # of folders (mail.services.directory), and counters are no part of that.
        Folder.objects.filter(pk=folder.pk).update(
            uid_next=folder.uid_next, highest_modseq=folder.highest_modseq
        )


def _folder_ids(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Folder ids for (mailbox id, name) pairs, creating missing folders; those that existed
    are remembered in the directory (a folder goes only with its mailbox; one created here
    is remembered only once its transaction has committed, when a later call finds it)."""
    if not wanted:
        return {}
    directory.refresh()
    found = {key: directory.get(("folder", *key)) for key in wanted}
    missing = {key for key, folder_id in found.items() if folder_id is None}
    if not missing:
        return found
    mailbox_ids = {m for m, _ in missing}
    names = {n for _, n in missing}

    def fetch() -> dict[tuple[int, str], int]:
        rows = (
            Folder.objects.filter(mailbox_id__in=mailbox_ids, name__in=names)
            .order_by()
            .values_list("mailbox_id", "name", "id")
        )
        return {(m, n): i for m, n, i in rows if (m, n) in missing}

    existing = fetch()
    for key, folder_id in existing.items():
        found[key] = directory.remember(("folder", *key), lambda i=folder_id: i)
    absent = missing - existing.keys()
    if absent:
        Folder.objects.bulk_create(
            [Folder(mailbox_id=m, name=n) for m, n in sorted(absent)], ignore_conflicts=True
        )
        found.update(fetch())
    return found
