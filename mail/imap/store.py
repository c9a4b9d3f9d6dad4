"""What an IMAP session reads and changes, over the mail models: synchronous, one transaction
per call, run in worker threads (mail.imap.threads) by the protocol engine (mail.imap.server
and the command modules).

Numbering: filing (mail.services.filing, for SMTP, rules and bounces) leaves a new Message's
`uid` NULL (APPEND files through it too, numbered at once); the first IMAP
reader of the folder numbers every unnumbered message in id order, under the folder's row lock,
from `Folder.uid_next` (number_new). A message becomes visible to IMAP only once numbered, so
UIDs grow in the order clients can see the messages, whatever order concurrent deliveries
committed in (RFC 9051 §2.3.1.1).

Change tracking: every IMAP change raises the folder's `highest_modseq` and stamps the changed
rows with it, so a session learns what changed since it last looked with one indexed query.
Copies removed behind IMAP's back (the console, the admin, a deleted mailbox) show as a count
that no longer matches; the session then compares UIDs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Sum

from accounts.grants import GrantError, parse_resource, role_rank
from accounts.models import AccessGrant, User
from mail.imap.mime import imap_summary
from mail.message import ParsedMessage, parse_message
from mail.models import Folder, Mailbox, Message, MessageContent, OutboundDelivery
from mail.models.mailboxes import INBOX, SENT
from mail.services.filing import Copy, NewMessage, file_messages
from mail.services.filing import FolderGone as FilingFolderGone
from mail.services.mailboxes import mailbox_usage
from mail.services.storage import ContentWrites, StoredFiles, delete_content_file, message_storage

log = logging.getLogger("mail.imap")

# The folders every personal namespace offers (RFC 6154 SPECIAL-USE), created at first login.
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
# Folder names as stored -> as IMAP shows them (the stored names filing has always used).
_STORED_AS = {INBOX: "INBOX", SENT: "Sent"}
_SHOWN_AS = {shown.upper(): stored for stored, shown in _STORED_AS.items()}

SHARED_PREFIX = "Shared"
DELIMITER = "/"

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
_FLAG_FIELDS = {
    "\\Seen": "seen",
    "\\Answered": "answered",
    "\\Flagged": "flagged",
    "\\Deleted": "deleted",
    "\\Draft": "draft",
}


class StoreError(Exception):
    """A refused change; `code` is the IMAP response code (RFC 5530) and str() the text."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code


class FolderGone(Exception):
    """The folder was deleted (or renamed away) since the session looked it up."""


@dataclass(frozen=True)
class Access:
    """One mailbox a user may open over IMAP: `prefix` is where its folders appear ("" for the
    user's own, "Shared/<address>" for the others) and `writable` whether the grant allows
    changes (writer or above) or only reading (reader)."""

    mailbox_id: int
    address: str
    prefix: str
    writable: bool

    def imap_name(self, stored: str) -> str:
        shown = _STORED_AS.get(stored, stored)
        return f"{self.prefix}{DELIMITER}{shown}" if self.prefix else shown


@dataclass(frozen=True)
class FolderInfo:
    id: int
    uid_validity: int
    uid_next: int
    highest_modseq: int
    subscribed: bool


@dataclass(frozen=True)
class Row:
    """One message as a selected folder tracks it."""

    id: int
    uid: int
    flags: frozenset[str]
    internal_date: datetime
    size: int
    storage_name: str
    prepended: bytes
    modseq: int
    content_id: int


@dataclass(frozen=True)
class Changes:
    """What changed in a folder since a session's modseq: rows new or changed, and the
    number of messages now in it (numbered ones)."""

    folder: FolderInfo
    rows: list[Row]
    count: int


def accesses(user: User) -> list[Access]:
    """The mailboxes `user` may open, own mailbox first.

    A grant on smtp/mail/D:LOCAL gives that mailbox; a grant on the domain smtp/mail/D gives
    every mailbox of D. Broader grants (smtp, smtp/mail, admin) list no mailbox: reading
    someone's mail always takes a grant that names the mailbox or its domain. The user's own
    mailbox is the granted one whose address or local part is the user name (else the only
    mailbox granted with writer); the others appear under Shared/<address>/.
    """
    best: dict[int, tuple[int, Mailbox]] = {}
    for resource, role in user.grants.values_list("resource", "role"):
        try:
            parsed = parse_resource(resource)
            rank = role_rank(role)
        except GrantError:
            continue
        if len(parsed.segments) != 3 or parsed.segments[:2] != ("smtp", "mail"):
            continue
        boxes = Mailbox.objects.select_related("domain").filter(domain__name=parsed.segments[2])
        if parsed.local is not None:
            boxes = boxes.filter(local_part=parsed.local)
        for mailbox in boxes:
            if mailbox.id not in best or best[mailbox.id][0] < rank:
                best[mailbox.id] = (rank, mailbox)
    writer = role_rank("writer")
    name = user.username.casefold()
    own = [
        mb
        for rank, mb in best.values()
        if rank >= writer and name in (mb.address.casefold(), mb.local_part.casefold())
    ]
    if not own:
        writable = [mb for rank, mb in best.values() if rank >= writer]
        own = writable if len(writable) == 1 else []
    result = []
    if own:
        mailbox = own[0]
        result.append(Access(mailbox.id, mailbox.address, "", True))
    for rank, mailbox in sorted(best.values(), key=lambda item: item[1].address):
        if own and mailbox.id == own[0].id:
            continue
        prefix = f"{SHARED_PREFIX}{DELIMITER}{mailbox.address}"
        result.append(Access(mailbox.id, mailbox.address, prefix, rank >= writer))
    return result


def ensure_special_folders(mailbox_id: int) -> None:
    """Create the SPECIAL-USE folders the mailbox lacks (idempotent)."""
    wanted = [name for name in SPECIAL_USE if name != "Sent"]
    present = set(
        Folder.objects.filter(mailbox_id=mailbox_id, name__in=wanted).values_list("name", flat=True)
    )
    if present >= set(wanted):
        return  # the usual case: no write at login
    Folder.objects.bulk_create(
        [Folder(mailbox_id=mailbox_id, name=name) for name in wanted], ignore_conflicts=True
    )


def stored_name(access: Access, name: str) -> str:
    """The stored folder name for an IMAP name inside `access` (without its prefix)."""
    return _SHOWN_AS.get(name.upper(), name) if name.upper() in ("INBOX", "SENT") else name


# The queries sessions make for nearly every command are written in SQL: the ORM's query
# building took more time than the database (measured under imaptest's load).
_M = Message._meta.db_table
_F = Folder._meta.db_table
_C = MessageContent._meta.db_table
_MB = Mailbox._meta.db_table
_OUT = OutboundDelivery._meta.db_table
_FOLDER_INFO = "id, uid_validity, uid_next, highest_modseq, subscribed"


def _query(sql: str, params: Sequence = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def folder_rows(access: Access) -> list[tuple[str, str, bool]]:
    """(stored name, IMAP name, subscribed) of every folder of the mailbox."""
    rows = _query(
        f"SELECT name, subscribed FROM {_F} WHERE mailbox_id = %s ORDER BY name", [access.mailbox_id]
    )
    return [(name, access.imap_name(name), bool(subscribed)) for name, subscribed in rows]


def special_use(stored: str) -> str | None:
    return SPECIAL_USE.get(_STORED_AS.get(stored, stored))


def find_folder(access: Access, name: str) -> FolderInfo:
    """The folder `name` (IMAP name within the mailbox). Raises FolderGone."""
    rows = _query(
        f"SELECT {_FOLDER_INFO} FROM {_F} WHERE mailbox_id = %s AND name = %s",
        [access.mailbox_id, stored_name(access, name)],
    )
    if not rows:
        raise FolderGone(name)
    return _info(rows[0])


def _info(row: tuple) -> FolderInfo:
    pk, validity, uid_next, modseq, subscribed = row
    return FolderInfo(pk, validity, uid_next, modseq, bool(subscribed))


def create_folder(access: Access, name: str) -> int:
    """Create a folder, not subscribed (RFC 9051 §6.3.4: clients subscribe what they create).
    A trailing hierarchy delimiter only says that the name is a parent: it is not kept."""
    stored = stored_name(access, name.rstrip(DELIMITER))
    if not stored:
        raise StoreError("CANNOT", "Invalid mailbox name.")
    with writing():
        if Folder.objects.filter(mailbox_id=access.mailbox_id, name=stored).exists():
            raise StoreError("ALREADYEXISTS", "Mailbox already exists.")
        mailbox = Mailbox.objects.select_for_update().get(pk=access.mailbox_id)
        # A name subscribed before (and deleted since) is subscribed again.
        subscribed = stored in mailbox.orphan_subscriptions
        if subscribed:
            mailbox.orphan_subscriptions.remove(stored)
            Mailbox.objects.filter(pk=mailbox.pk).update(orphan_subscriptions=mailbox.orphan_subscriptions)
        folder = Folder.objects.create(
            mailbox=mailbox, name=stored, uid_validity=mailbox.next_uid_validity(), subscribed=subscribed
        )
    return folder.id


def delete_folder(access: Access, name: str) -> None:
    """Delete the folder with its messages (RFC 9051 §6.3.4); the stored content goes with
    its last copy."""
    stored = stored_name(access, name)
    if stored == INBOX:
        raise StoreError("CANNOT", "INBOX cannot be deleted.")
    with writing():
        folder = Folder.objects.filter(mailbox_id=access.mailbox_id, name=stored).first()
        if folder is None:
            raise StoreError("NONEXISTENT", "No such mailbox.")
        content_ids = set(Message.objects.filter(folder=folder).values_list("content_id", flat=True))
        Message.objects.filter(folder=folder).delete()
        folder.delete()
        if folder.subscribed:
            # RFC 9051 §6.3.4: deleting a mailbox leaves its subscription.
            _keep_orphan(access.mailbox_id, stored, keep=True)
        _remove_files_on_commit(_orphaned_contents(content_ids))


def rename_folder(access: Access, before: str, after: str) -> None:
    """Rename a folder and its children (RFC 9051 §6.3.6). Renaming INBOX moves its messages
    into the new folder and leaves INBOX empty."""
    old, new = stored_name(access, before), stored_name(access, after)
    with writing():
        folders = Folder.objects.select_for_update().filter(mailbox_id=access.mailbox_id)
        existing = {f.name: f for f in folders}
        if old not in existing:
            raise StoreError("NONEXISTENT", "No such mailbox.")
        if new in existing:
            raise StoreError("ALREADYEXISTS", "Mailbox already exists.")
        mailbox = Mailbox.objects.select_for_update().get(pk=access.mailbox_id)
        if old == INBOX:
            target = Folder.objects.create(
                mailbox=mailbox, name=new, uid_validity=mailbox.next_uid_validity()
            )
            moved = Message.objects.filter(folder=existing[INBOX]).order_by("uid", "id")
            _copy_rows(list(moved), target, move=True)
            return
        for name, folder in existing.items():
            if name == old or name.startswith(old + DELIMITER):
                folder.name = new + name[len(old) :]
                folder.uid_validity = mailbox.next_uid_validity()
                folder.save(update_fields=["name", "uid_validity"])


def set_subscribed(access: Access, name: str, subscribed: bool) -> None:
    stored = stored_name(access, name)
    updated = Folder.objects.filter(mailbox_id=access.mailbox_id, name=stored).update(subscribed=subscribed)
    if not updated:
        if subscribed:
            raise StoreError("NONEXISTENT", "No such mailbox.")
        with writing():
            _keep_orphan(access.mailbox_id, stored, keep=False)


def _keep_orphan(mailbox_id: int, stored: str, *, keep: bool) -> None:
    """Add `stored` to (or remove it from) the mailbox's subscriptions without a folder, in
    the caller's transaction."""
    mailbox = Mailbox.objects.select_for_update().filter(pk=mailbox_id).first()
    if mailbox is None:
        return
    names = [n for n in mailbox.orphan_subscriptions if n != stored]
    if keep:
        names.append(stored)
    if names != mailbox.orphan_subscriptions:
        Mailbox.objects.filter(pk=mailbox_id).update(orphan_subscriptions=sorted(names))


def orphan_subscriptions(access: Access) -> list[str]:
    """The IMAP names subscribed in the mailbox that no folder has."""
    rows = _query(f"SELECT orphan_subscriptions FROM {_MB} WHERE id = %s", [access.mailbox_id])
    names = rows[0][0] if rows else []
    if isinstance(names, str):  # SQLite hands back the JSON text
        names = json.loads(names)
    return [access.imap_name(name) for name in names or []]


def _datetime(value, converters) -> datetime:
    # SQLite hands back text; the backend's converters make it the aware datetime the ORM
    # would.
    for converter in converters:
        value = converter(value, _received_at, connection)
    return value


def _row_flags(seen, answered, flagged, deleted, draft, keywords) -> frozenset[str]:
    flags = [
        name for name, on in zip(SYSTEM_FLAGS, (seen, answered, flagged, deleted, draft), strict=True) if on
    ]
    return frozenset(flags + keywords.split())


_ROW_COLUMNS = (
    "m.id, m.uid, m.seen, m.answered, m.flagged, m.deleted, m.draft, m.keywords, m.received_at, m.size, "
    "c.storage_name, m.prepended_headers, m.modseq, m.content_id"
)
_received_at = Message._meta.get_field("received_at")


def _rows(results: list[tuple]) -> list[Row]:
    converters = connection.ops.get_db_converters(_received_at.get_col(_M))
    rows = []
    for values in results:
        (pk, uid, seen, answered, flagged, deleted, draft, keywords, received_at, size, name, prepended) = (
            values[:12]
        )
        rows.append(
            Row(
                id=pk,
                uid=uid,
                flags=_row_flags(seen, answered, flagged, deleted, draft, keywords),
                internal_date=_datetime(received_at, converters),
                size=size,
                storage_name=name,
                prepended=bytes(prepended),
                modseq=values[12],
                content_id=values[13],
            )
        )
    return rows


# SQLite has one writer at a time; its busy handler makes a waiting writer sleep (1 ms, then
# longer and longer). The sessions of one process take turns here instead, handing over at once.
_sqlite_writer = threading.RLock()


@contextmanager
def writing():
    """A write transaction, or part of the caller's (the group commits of mail.imap.threads
    give each change its own savepoint); on SQLite, one of this process at a time."""
    if connection.in_atomic_block:
        yield
        return
    if connection.vendor != "sqlite":
        with transaction.atomic():
            yield
        return
    with _sqlite_writer, transaction.atomic():
        yield


@contextmanager
def metadata_change():
    """A transaction that changes only IMAP state (flags, UIDs, \\Recent). On
    SQLite it commits without waiting for the disk (synchronous=NORMAL in WAL mode: a crash of
    the process loses nothing, a power failure at most the last moments of such changes, never
    a message); mail itself (APPEND, delivery) is committed with a sync as ever."""
    if connection.in_atomic_block:
        yield
        return
    if connection.vendor != "sqlite":
        with transaction.atomic():
            yield
        return
    with group_transaction(durable=False):
        yield


@contextmanager
def group_transaction(*, durable: bool):
    """One write transaction of this process on SQLite, committed with a sync when `durable`
    (else as metadata_change says)."""
    with _sqlite_writer:
        if not durable:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction.atomic():
                yield
        finally:
            if not durable:
                with connection.cursor() as cursor:
                    cursor.execute("PRAGMA synchronous=FULL")


def _save_counters(folder: Folder, *fields: str) -> None:
    """Store the folder's IMAP counters. Not through save(): a Folder save tells every SMTP
    listener to forget what it remembers of folders (mail.services.directory), and counters are
    no part of that."""
    Folder.objects.filter(pk=folder.pk).update(**{field: getattr(folder, field) for field in fields})


def number_new(folder_id: int) -> None:
    """Give the folder's unnumbered messages their UIDs, in id order, and stamp them with a
    new modseq; nothing when there are none. Called when _counted found some: the check is
    part of the query every refresh makes anyway."""
    with metadata_change():
        folder = Folder.objects.select_for_update().filter(pk=folder_id).first()
        if folder is None:
            return
        pending = [
            pk
            for (pk,) in _query(
                f"SELECT id FROM {_M} WHERE folder_id = %s AND uid IS NULL ORDER BY id", [folder_id]
            )
        ]
        if not pending:
            return
        folder.highest_modseq += 1
        with connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {_M} SET uid = %s, modseq = %s WHERE id = %s",
                [(folder.uid_next + offset, folder.highest_modseq, pk) for offset, pk in enumerate(pending)],
            )
        folder.uid_next += len(pending)
        _save_counters(folder, "uid_next", "highest_modseq")


_NUMBERED = f"(SELECT COUNT(*) FROM {_M} WHERE folder_id = f.id AND uid IS NOT NULL)"
_UNSEEN = f"(SELECT COUNT(*) FROM {_M} WHERE folder_id = f.id AND uid IS NOT NULL AND seen = %s)"
_RECENT = f"(SELECT COUNT(*) FROM {_M} WHERE folder_id = f.id AND uid >= f.first_recent_uid)"
_UNNUMBERED = f"EXISTS (SELECT 1 FROM {_M} WHERE folder_id = f.id AND uid IS NULL)"


def _counted(where: str, params: Sequence, *, status: bool = False) -> tuple[FolderInfo, list[int]]:
    """The folder `where` picks (one query) with the number of its messages, and with `status`
    also its unseen and \\Recent ones; new messages numbered first. Raises FolderGone."""
    counts = f"{_NUMBERED}, {_UNSEEN}, {_RECENT}" if status else _NUMBERED
    sql = f"SELECT {_FOLDER_INFO}, {counts}, {_UNNUMBERED} FROM {_F} f WHERE {where}"
    params = [False, *params] if status else list(params)
    rows = _query(sql, params)
    if rows and rows[0][-1]:
        number_new(rows[0][0])
        rows = _query(sql, params)
    if not rows:
        raise FolderGone(params[-1])
    info, counts = rows[0][:5], rows[0][5:-1]
    return _info(info), list(counts)


def changes(folder_id: int, since_modseq: int) -> Changes:
    """Number new messages, then everything that changed in the folder after `since_modseq`
    (0: every message). Raises FolderGone."""
    folder, (count,) = _counted("id = %s", [folder_id])
    if folder.highest_modseq <= since_modseq:
        return Changes(folder, [], count)
    changed = _query(
        f"SELECT {_ROW_COLUMNS} FROM {_M} m JOIN {_C} c ON c.id = m.content_id "
        f"WHERE m.folder_id = %s AND m.uid IS NOT NULL AND m.modseq > %s ORDER BY m.uid",
        [folder_id, since_modseq],
    )
    return Changes(folder, _rows(changed), count)


def claim_recent(folder_id: int) -> list[int]:
    """The UIDs still \\Recent in the folder, which stop being recent for anyone else."""
    if not _query(f"SELECT 1 FROM {_F} WHERE id = %s AND first_recent_uid < uid_next", [folder_id]):
        return []  # nothing to claim: no write transaction
    with metadata_change():
        folder = Folder.objects.select_for_update().filter(pk=folder_id).first()
        if folder is None or folder.first_recent_uid >= folder.uid_next:
            return []
        uids = list(
            Message.objects.filter(folder_id=folder_id, uid__gte=folder.first_recent_uid).values_list(
                "uid", flat=True
            )
        )
        folder.first_recent_uid = folder.uid_next
        _save_counters(folder, "first_recent_uid")
    return sorted(uids)


def recent_uids(folder_id: int) -> list[int]:
    """The UIDs still \\Recent in the folder, left so (a read-only look)."""
    rows = _query(
        f"SELECT m.uid FROM {_M} m JOIN {_F} f ON f.id = m.folder_id "
        f"WHERE m.folder_id = %s AND m.uid >= f.first_recent_uid ORDER BY m.uid",
        [folder_id],
    )
    return [uid for (uid,) in rows]


def all_uids(folder_id: int) -> set[int]:
    return {
        uid
        for (uid,) in _query(f"SELECT uid FROM {_M} WHERE folder_id = %s AND uid IS NOT NULL", [folder_id])
    }


def folder_status(access: Access, name: str) -> tuple[FolderInfo, int, int, int]:
    """(folder, messages, unseen, recent) of the folder `name` for STATUS, in one query.
    Raises FolderGone."""
    folder, (count, unseen, recent) = _counted(
        "mailbox_id = %s AND name = %s", [access.mailbox_id, stored_name(access, name)], status=True
    )
    return folder, count, unseen, recent


def _flag_values(flags: Iterable[str]) -> dict:
    flags = set(flags)
    values = {field: name in flags for name, field in _FLAG_FIELDS.items()}
    values["keywords"] = " ".join(sorted(f for f in flags if not f.startswith("\\")))[:1000]
    return values


def _bump(folder_id: int) -> int:
    """Raise the folder's highest_modseq (the UPDATE takes the row lock); the new value."""
    rows = _query(
        f"UPDATE {_F} SET highest_modseq = highest_modseq + 1 WHERE id = %s RETURNING highest_modseq",
        [folder_id],
    )
    if not rows:
        raise FolderGone(folder_id)
    return rows[0][0]


def set_flags(folder_id: int, updates: Sequence[tuple[int, frozenset[str]]]) -> int:
    """Give each (uid, flags) its flags: the complete new set; one UPDATE per distinct new
    set. Returns the modseq the changed messages now have."""
    if not updates:
        return 0
    by_flags: dict[frozenset[str], list[int]] = {}
    for uid, flags in updates:
        by_flags.setdefault(flags, []).append(uid)
    with metadata_change():
        modseq = _bump(folder_id)
        for flags, uids in by_flags.items():
            values = _flag_values(flags)
            assignments = ", ".join(f"{field} = %s" for field in values)
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {_M} SET modseq = %s, {assignments} "
                        f"WHERE folder_id = %s AND uid IN ({', '.join(['%s'] * len(chunk))})",
                        [modseq, *values.values(), folder_id, *chunk],
                    )
    return modseq


def mailbox_quota(mailbox_id: int) -> tuple[int, int | None]:
    """(usage in bytes, limit in bytes or None)."""
    limit = Mailbox.objects.filter(pk=mailbox_id).values_list("quota", flat=True).first()
    return mailbox_usage(mailbox_id), limit


def _check_quota(mailbox_id: int, adding: int) -> None:
    rows = _query(f"SELECT quota FROM {_MB} WHERE id = %s", [mailbox_id])
    limit = rows[0][0] if rows else None
    if limit is not None and mailbox_usage(mailbox_id) + adding > limit:
        raise StoreError("OVERQUOTA", "Mailbox is over its quota.")


@dataclass
class NewMessages:
    """Messages to APPEND, their files written and synced, their fields read."""

    messages: Sequence[tuple[bytes, frozenset[str], datetime | None]]
    names: list[str]
    parsed: list[ParsedMessage]
    summaries: list[tuple[bytes, bytes, bytes]]


def store_files(messages: Sequence[tuple[bytes, frozenset[str], datetime | None]]) -> NewMessages:
    """Write and sync the files of (raw, flags, internal date or None) messages, before the
    transaction that files them (append): the files of many sessions are written at once, the
    transaction holds its lock only for the rows."""
    with StoredFiles() as files:
        ContentWrites([raw for raw, _, _ in messages], files=files).wait()
        return NewMessages(
            messages,
            files.names,
            [parse_message(raw) for raw, _, _ in messages],
            [imap_summary(raw) for raw, _, _ in messages],
        )


def append(
    folder_id: int, *, access: Access, new: NewMessages, seen_by_appender: bool
) -> tuple[int, list[int]]:
    """File the messages of store_files as new messages of the folder, all in one
    transaction, through the filing of every other path (mail.services.filing), numbered at
    once: (uid validity, uids). With `seen_by_appender` (the appending session has the
    folder selected) the messages are \\Recent for that session only, as if it had claimed
    them. The files go when this fails.

    Raises StoreError OVERQUOTA when the mailbox has no room for them."""
    mailbox_id = access.mailbox_id
    with StoredFiles() as files:
        files.names = new.names
        with writing():
            _check_quota(mailbox_id, sum(len(raw) for raw, _, _ in new.messages))
            try:
                filed = file_messages(
                    [
                        NewMessage(
                            parsed=parsed,
                            copies=(
                                Copy(
                                    mailbox_id=mailbox_id,
                                    address=access.address,
                                    folder_id=folder_id,
                                    # The internal date of an APPEND is the client's when it
                                    # gives one.
                                    received_at=when,
                                    **_flag_values(flags),
                                ),
                            ),
                            raw=raw,
                            stored_as=name,
                            summary=summary,
                        )
                        for (raw, flags, when), parsed, name, summary in zip(
                            new.messages, new.parsed, new.names, new.summaries, strict=True
                        )
                    ],
                    files=files,
                    numbered=True,
                )
            except FilingFolderGone:
                raise FolderGone(folder_id) from None
            uids = [uid for result in filed for uid in result.uids]
            validity, uid_next, first_recent = _query(
                f"SELECT uid_validity, uid_next, first_recent_uid FROM {_F} WHERE id = %s", [folder_id]
            )[0]
            if seen_by_appender and first_recent == uids[0]:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {_F} SET first_recent_uid = %s WHERE id = %s", [uid_next, folder_id]
                    )
    return validity, uids


def _copy_rows(messages: list[Message], target: Folder, *, move: bool) -> list[tuple[int, int]]:
    """Copy (or move) `messages` into `target` under its row lock; (source uid, new uid)."""
    target.highest_modseq += 1
    pairs = []
    copies = []
    for offset, message in enumerate(messages):
        new_uid = target.uid_next + offset
        pairs.append((message.uid, new_uid))
        if move:
            message.folder = target
            message.uid = new_uid
            message.modseq = target.highest_modseq
        else:
            message.pk = None
            message.folder = target
            message.uid = new_uid
            message.modseq = target.highest_modseq
            copies.append(message)
    if move:
        Message.objects.bulk_update(messages, ["folder", "uid", "modseq"], batch_size=500)
    else:
        received = [m.received_at for m in copies]
        created = Message.objects.bulk_create(copies)
        for message, when in zip(created, received, strict=True):
            message.received_at = when
        Message.objects.bulk_update(created, ["received_at"], batch_size=500)
    target.uid_next += len(messages)
    _save_counters(target, "uid_next", "highest_modseq")
    return pairs


def copy(
    source_id: int, uids: Sequence[int], target_id: int, *, move: bool, target_mailbox_id: int
) -> tuple[int, list[tuple[int, int]]]:
    """COPY or MOVE (RFC 6851) `uids` from one folder to another, keeping flags and internal
    dates: (target uid validity, [(source uid, target uid)]). A move raises the source's
    modseq so its sessions see the expunges."""
    with writing():
        folders = {
            f.id: f for f in Folder.objects.select_for_update().filter(pk__in=sorted({source_id, target_id}))
        }
        if source_id not in folders or target_id not in folders:
            raise FolderGone(target_id)
        messages = list(Message.objects.filter(folder_id=source_id, uid__in=list(uids)).order_by("uid"))
        if not move:
            _check_quota(target_mailbox_id, sum(m.size for m in messages))
        target = folders[target_id]
        if move and source_id != target_id:
            folders[source_id].highest_modseq += 1
            _save_counters(folders[source_id], "highest_modseq")
        pairs = _copy_rows(messages, target, move=move)
    return target.uid_validity, pairs


def expunge(folder_id: int, uids: Iterable[int]) -> int:
    """Remove the copies `uids` (at least one) from the folder; a stored content goes with its
    last copy. Returns the folder's new highest modseq."""
    uids = list(uids)
    with writing():
        modseq = _bump(folder_id)
        content_ids: set[int] = set()
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            where = f"WHERE folder_id = %s AND uid IN ({', '.join(['%s'] * len(chunk))})"
            content_ids.update(
                cid for (cid,) in _query(f"SELECT content_id FROM {_M} {where}", [folder_id, *chunk])
            )
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {_M} {where}", [folder_id, *chunk])
        _remove_files_on_commit(_orphaned_contents(content_ids))
    return modseq


def _orphaned_contents(content_ids: set[int]) -> list[str]:
    """Delete the MessageContent rows among `content_ids` that no copy and no queue row uses
    any longer (in the caller's transaction); their storage names."""
    names = []
    ids = sorted(content_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        unused = _query(
            f"SELECT id, storage_name FROM {_C} c WHERE id IN ({', '.join(['%s'] * len(chunk))}) "
            f"AND NOT EXISTS (SELECT 1 FROM {_M} WHERE content_id = c.id) "
            f"AND NOT EXISTS (SELECT 1 FROM {_OUT} WHERE content_id = c.id)",
            chunk,
        )
        if unused:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {_C} WHERE id IN ({', '.join(['%s'] * len(unused))})",
                    [pk for pk, _ in unused],
                )
            names.extend(name for _, name in unused)
    return names


def _remove_files_on_commit(names: list[str]) -> None:
    # After the commit: a file goes only once no committed row can name it.
    def remove() -> None:
        for name in names:
            delete_content_file(name)

    if names:
        transaction.on_commit(remove)


def acl(mailbox_id: int) -> list[tuple[str, bool]]:
    """(user name, may write) of everyone whose grant opens the mailbox over IMAP: a grant on
    it or on its domain (see accesses)."""
    mailbox = Mailbox.objects.select_related("domain").get(pk=mailbox_id)
    resources = [f"smtp/mail/{mailbox.domain.name}", f"smtp/mail/{mailbox.domain.name}:{mailbox.local_part}"]
    writer = role_rank("writer")
    best: dict[str, int] = {}
    for name, role in AccessGrant.objects.filter(resource__in=resources, user__is_active=True).values_list(
        "user__username", "role"
    ):
        try:
            rank = role_rank(role)
        except GrantError:
            continue
        best[name] = max(best.get(name, -1), rank)
    return [(name, rank >= writer) for name, rank in sorted(best.items())]


def change_marks(folder_ids: list[int]) -> dict[int, tuple[int, int | None, int]]:
    """(highest_modseq, newest message id, messages) of each folder: one of them moves when
    the folder changes, whoever changed it (an IMAP session raises the modseq, filing adds
    rows, the console or the admin removes some)."""
    if not folder_ids:
        return {}
    rows = _query(
        f"SELECT id, highest_modseq, (SELECT MAX(id) FROM {_M} WHERE folder_id = f.id), "
        f"(SELECT COUNT(*) FROM {_M} WHERE folder_id = f.id) "
        f"FROM {_F} f WHERE id IN ({', '.join(['%s'] * len(folder_ids))})",
        list(folder_ids),
    )
    return {pk: (modseq, newest, count) for pk, modseq, newest, count in rows}


class SummaryCache:
    """The ENVELOPE, BODYSTRUCTURE and BODY of the contents read last, up to `budget` bytes,
    for every session of the process. A stored content never changes and its id is never
    given again (AUTOINCREMENT on SQLite, a sequence on PostgreSQL), so nothing kept here is
    ever stale. Used from the worker threads."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[int, tuple[bytes, bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, content_id: int) -> tuple[bytes, bytes, bytes] | None:
        with self._lock:
            value = self._entries.get(content_id)
            if value is not None:
                self._entries.move_to_end(content_id)
            return value

    def put(self, content_id: int, value: tuple[bytes, bytes, bytes]) -> None:
        size = sum(map(len, value))
        with self._lock:
            old = self._entries.pop(content_id, None)
            if old is not None:
                self.used -= sum(map(len, old))
            self._entries[content_id] = value
            self.used += size
            while self.used > self.budget and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self.used -= sum(map(len, dropped))


# A few thousand messages' worth: listing a folder again (clients do, for every check) reads
# no summary from the database.
summary_cache = SummaryCache(4 << 20)


def summaries(content_ids: Iterable[int]) -> dict[int, tuple[bytes, bytes, bytes]]:
    """(ENVELOPE, BODYSTRUCTURE, BODY) of the contents that have them stored."""
    found: dict[int, tuple[bytes, bytes, bytes]] = {}
    ids = []
    for pk in set(content_ids):
        kept = summary_cache.get(pk)
        if kept is None:
            ids.append(pk)
        else:
            found[pk] = kept
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        rows = _query(
            f"SELECT id, imap_envelope, imap_structure, imap_body FROM {_C} "
            f"WHERE id IN ({', '.join(['%s'] * len(chunk))}) AND imap_body IS NOT NULL",
            chunk,
        )
        for pk, envelope, structure, body in rows:
            found[pk] = (bytes(envelope), bytes(structure), bytes(body))
            summary_cache.put(pk, found[pk])
    return found


def save_summaries(computed: dict[int, tuple[bytes, bytes, bytes]]) -> None:
    """Keep the ENVELOPE, BODYSTRUCTURE and BODY computed for these contents."""
    if not computed:
        return
    with metadata_change(), connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {_C} SET imap_envelope = %s, imap_structure = %s, imap_body = %s WHERE id = %s",
            [(envelope, structure, body, pk) for pk, (envelope, structure, body) in computed.items()],
        )
    for pk, value in computed.items():
        summary_cache.put(pk, value)


def read_content(row: Row, *, header_only: bool = False) -> bytes | None:
    """The message as IMAP shows it (the copy's prepended header lines, then the stored
    content), or only its header section; None when the file is gone (its last copy was
    expunged since the session listed it)."""
    if not row.storage_name:
        return None
    try:
        fh = message_storage().open(row.storage_name, "rb")
    except FileNotFoundError:
        return None
    with fh:
        if not header_only:
            return row.prepended + fh.read()
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            chunk = fh.read(65536)
            if not chunk:
                break
            head += chunk
    return row.prepended + head


def folder_size(folder_id: int) -> int:
    """The bytes of the folder's messages (STATUS SIZE, RFC 8438)."""
    numbered = Message.objects.filter(folder_id=folder_id, uid__isnull=False)
    return numbered.aggregate(total=Sum("size"))["total"] or 0
