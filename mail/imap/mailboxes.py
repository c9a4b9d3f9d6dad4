"""The commands of the authenticated state (RFC 9051 §6.3): SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (with LIST-EXTENDED, RFC 5258, and LIST-STATUS, RFC 5819),
LSUB, STATUS, APPEND; NAMESPACE (RFC 2342), the read side of ACL (RFC 4314: MYRIGHTS, GETACL,
LISTRIGHTS; SETACL and DELETEACL answer that grants are made on the console) and QUOTA
(RFC 9208: GETQUOTA, GETQUOTAROOT; SETQUOTA likewise)."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import unquote

from django.conf import settings

from mail.imap import fetch, store
from mail.imap.folders import Selected, folder_state, poke
from mail.imap.mime import without_nul
from mail.imap.parser import Bad, Parser, decode_name
from mail.imap.responses import flag_list, mailbox, sequence_set, string
from mail.imap.server import AUTH, AUTHENTICATED, SELECTED, Connection, No, command
from mail.imap.session import pattern_regex
from mail.imap.threads import run, write

# RFC 4314 rights of the two grant roles. Neither has "a": grants change on the console only.
WRITER_RIGHTS = b"lrswipkxte"
READER_RIGHTS = b"lr"
_NO_ACL_CHANGES = "Access is granted on the Everlock console (/users grant)."
_NO_QUOTA_CHANGES = "Quotas are set on the Everlock console (/mail mailboxes set ADDRESS quota=...)."


def _no_such(name: str) -> No:
    return No("NONEXISTENT", "No such mailbox.")


async def _folder(conn: Connection, name: str, *, fresh: bool = False):
    try:
        return await conn.mailboxes.info(name, fresh=fresh)
    except KeyError:
        raise _no_such(name) from None


# -- SELECT / EXAMINE -----------------------------------------------------------------------


async def _select(conn: Connection, p: Parser, *, examine: bool) -> bytes:
    p.sp()
    name = p.mailbox()
    qresync = None
    if p.skip(b" "):
        p.expect(b"(")
        keyword = p.keyword()
        if keyword == "CONDSTORE":
            conn.enabled.add("CONDSTORE")
        elif keyword == "QRESYNC" and "QRESYNC" in conn.enabled:
            p.sp()
            p.expect(b"(")
            validity = p.number(nonzero=True)
            p.sp()
            modseq = p.number(nonzero=True)
            known = None
            if p.skip(b" ") and p.peek() != b"(":
                known = p.sequence_set()
            if p.skip(b" ") or p.peek() == b"(":
                # The sequence match data is optional help for the server: read, not needed.
                p.paren_list(lambda: p.sequence_set())
            p.expect(b")")
            qresync = (validity, modseq, known)
        else:
            raise Bad("unknown select parameter")
        p.expect(b")")
    p.finish()
    had_selected = conn.selected is not None
    conn.selected = None
    conn.state = AUTHENTICATED
    if had_selected:
        conn.out += b"* OK [CLOSED] Previous mailbox closed.\r\n"
    access, info = await _folder(conn, name, fresh=True)
    state = folder_state(info.id)
    await state.refresh(force=True)
    readonly = examine or not access.writable
    selected = Selected(state, name=name, readonly=readonly, access=access)
    selected.load()
    if readonly:
        selected.recent.update(await run(store.recent_uids, info.id))
    else:
        state.claimed_up_to = max(state.claimed_up_to, state.info.uid_next)
        selected.recent.update(await run(store.claim_recent, info.id))
    uids = selected.uids
    # A message another session expunged while \Recent was claimed is still numbered here, as
    # it was; the session is told of the expunge at its next command.
    rows = [state.messages.get(uid) or state.removed.get(uid) for uid in uids]
    unseen_first = next(
        (seq for seq, row in enumerate(rows, 1) if row is None or "\\Seen" not in row.flags), None
    )
    out = conn.out
    out += selected.flags_lines()
    out += b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(uids), len(selected.recent))
    if unseen_first is not None:
        out += b"* OK [UNSEEN %d] First unseen.\r\n" % unseen_first
    info = state.info
    out += b"* OK [UIDVALIDITY %d] UIDs valid.\r\n" % info.uid_validity
    out += b"* OK [UIDNEXT %d] Predicted next UID.\r\n" % info.uid_next
    out += b"* OK [HIGHESTMODSEQ %d] Highest.\r\n" % state.modseq
    if qresync is not None and qresync[0] == info.uid_validity:
        _, since, known = qresync
        present = set(uids)
        if known is not None:
            asked = set(known.select(list(range(1, info.uid_next)), info.uid_next - 1))
        else:
            asked = set(range(1, info.uid_next))
        # No record of expunged UIDs is kept: every UID the client may know of that is no
        # longer here is reported (RFC 7162 §3.2.5.2 allows more than the needed ones).
        vanished = asked - present
        if vanished:
            out += b"* VANISHED (EARLIER) " + sequence_set(vanished) + b"\r\n"
        for seq, (uid, row) in enumerate(zip(uids, rows, strict=True), 1):
            if row is not None and row.modseq > since:
                out += b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                    seq,
                    uid,
                    selected.flag_list(uid, row),
                    row.modseq,
                )
    conn.selected = selected
    conn.state = SELECTED
    verb = b"EXAMINE" if examine else b"SELECT"
    return (b"OK [READ-ONLY] " if readonly else b"OK [READ-WRITE] ") + verb + b" completed."


@command("SELECT", AUTH)
async def select(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _select(conn, p, examine=False)


@command("EXAMINE", AUTH)
async def examine(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _select(conn, p, examine=True)


# -- folders --------------------------------------------------------------------------------


def _writable(conn: Connection, name: str):
    try:
        return conn.mailboxes.writable(name)
    except KeyError:
        raise No(
            "NOPERM", "Mailboxes are made in your own namespace or a shared one you may write."
        ) from None


@command("CREATE", AUTH)
async def create(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.finish()
    if name.rstrip("/").upper() == "INBOX":
        raise No("ALREADYEXISTS", "Mailbox already exists.")
    access, folder = _writable(conn, name)
    conn.mailboxes.forget()
    await run(store.create_folder, access, folder)
    return b"OK CREATE completed."


@command("DELETE", AUTH)
async def delete(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.finish()
    access, folder = _writable(conn, name)
    conn.mailboxes.forget()
    try:
        _, info = await conn.mailboxes.info(name, fresh=True)
    except KeyError:
        raise _no_such(name) from None
    await run(store.delete_folder, access, folder)
    poke(info.id)
    return b"OK DELETE completed."


@command("RENAME", AUTH)
async def rename(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    before = p.mailbox()
    p.sp()
    after = p.mailbox()
    p.finish()
    access, old = _writable(conn, before)
    target, new = _writable(conn, after)
    if target != access:
        raise No("CANNOT", "Mailboxes are renamed within one mailbox.")
    conn.mailboxes.forget()
    await run(store.rename_folder, access, old, new)
    return b"OK RENAME completed."


async def _subscribe(conn: Connection, p: Parser, subscribed: bool) -> None:
    p.sp()
    name = p.mailbox()
    p.finish()
    try:
        access, folder = conn.mailboxes.locate(name)
    except KeyError:
        raise _no_such(name) from None
    await run(store.set_subscribed, access, folder, subscribed)


@command("SUBSCRIBE", AUTH)
async def subscribe(conn: Connection, tag: bytes, p: Parser) -> bytes:
    await _subscribe(conn, p, True)
    return b"OK SUBSCRIBE completed."


@command("UNSUBSCRIBE", AUTH)
async def unsubscribe(conn: Connection, tag: bytes, p: Parser) -> bytes:
    await _subscribe(conn, p, False)
    return b"OK UNSUBSCRIBE completed."


# -- LIST, LSUB ----------------------------------------------------------------------------

_SELECTIONS = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_RETURNS = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}
_STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"}


def _status_items(p: Parser) -> list[str]:
    items = p.paren_list(p.keyword)
    if not items or not set(items) <= _STATUS_ITEMS:
        raise Bad("bad status items")
    return items


async def _list(conn: Connection, p: Parser, *, lsub: bool) -> None:
    p.sp()
    select: set[str] = set()
    if not lsub and p.peek() == b"(":
        select = set(p.paren_list(p.keyword))
        if not select <= _SELECTIONS or (
            "RECURSIVEMATCH" in select and not select & {"SUBSCRIBED", "SPECIAL-USE"}
        ):
            raise Bad("bad selection options")
        p.sp()
    reference = p.mailbox()
    p.sp()
    patterns = p.paren_list(p.list_mailbox) if not lsub and p.peek() == b"(" else [p.list_mailbox()]
    returns: set[str] = set()
    status: list[str] = []
    if not lsub and p.skip(b" RETURN "):
        p.expect(b"(")
        while not p.skip(b")"):
            option = p.keyword()
            if option not in _RETURNS:
                raise Bad("bad return option")
            returns.add(option)
            if option == "STATUS":
                p.sp()
                status = _status_items(p)
            p.skip(b" ")
    p.finish()
    if reference.upper() == "INBOX":
        reference = "INBOX"
    if patterns == [""] and not select:
        # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference.
        root = reference.split("/", 1)[0] + "/" if "/" in reference else ""
        conn.out += b'* %s (\\Noselect) "/" %s\r\n' % (b"LSUB" if lsub else b"LIST", string(root))
        return
    folders = await conn.mailboxes.folders()
    by_name = {f.name: f for f in folders if f.exists}
    names = set(by_name)
    subscribed = {f.name for f in folders if f.subscribed}
    regexes = [pattern_regex(reference, pattern) for pattern in patterns]
    subscribed_only = lsub or "SUBSCRIBED" in select
    recursive = "RECURSIVEMATCH" in select
    special_only = "SPECIAL-USE" in select
    shown = subscribed if subscribed_only else names
    candidates = set(shown)
    for name in shown:
        parts = name.split("/")
        candidates.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    matched = {name for name in candidates if any(regex.match(name) for regex in regexes)}
    listed = []
    for name in sorted(matched, key=lambda n: (n != "INBOX", n)):
        folder = by_name.get(name)
        child_info = False
        if subscribed_only and name not in subscribed:
            # RFC 5258 §3.5: a parent of subscribed children the patterns do not list
            # (CHILDINFO; LSUB shows it as \Noselect, RFC 3501 §6.3.9).
            unlisted = any(other.startswith(name + "/") and other not in matched for other in subscribed)
            if not unlisted or not (recursive or lsub):
                continue
            child_info = not lsub
        if special_only and (folder is None or folder.special_use is None):
            continue
        attributes = []
        if lsub and name not in subscribed:
            attributes.append("\\Noselect")  # listed for its subscribed children only
        elif folder is None:
            if subscribed_only and name in subscribed and not lsub:
                attributes.append("\\NonExistent")
            elif not child_info:
                attributes.append("\\Noselect")
        if not lsub and (folder is not None or not subscribed_only or child_info):
            has_children = any(other.startswith(name + "/") for other in names)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if folder is not None and folder.special_use and not lsub:
            attributes.append(folder.special_use)
        if not lsub and (subscribed_only or "SUBSCRIBED" in returns) and name in subscribed:
            attributes.append("\\Subscribed")
        line = b'* %s %s "/" %s' % (b"LSUB" if lsub else b"LIST", flag_list(attributes), mailbox(name))
        if child_info:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        listed.append(line + b"\r\n")
        if status and folder is not None:
            listed.append(await _status_line(conn, name, status))
    conn.out += b"".join(listed)


@command("LIST", AUTH)
async def list_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    await _list(conn, p, lsub=False)
    return b"OK LIST completed."


@command("LSUB", AUTH)
async def lsub(conn: Connection, tag: bytes, p: Parser) -> bytes:
    await _list(conn, p, lsub=True)
    return b"OK LSUB completed."


# -- STATUS ---------------------------------------------------------------------------------


async def _status_line(conn: Connection, name: str, items: list[str]) -> bytes:
    try:
        access, stored = conn.mailboxes.locate(name)
        folder, messages, unseen, recent = await run(store.folder_status, access, stored)
    except (KeyError, store.FolderGone):
        raise _no_such(name) from None
    values = {
        "MESSAGES": messages,
        "UIDNEXT": folder.uid_next,
        "UIDVALIDITY": folder.uid_validity,
        "UNSEEN": unseen,
        "HIGHESTMODSEQ": folder.highest_modseq,
        "RECENT": recent,
    }
    if "SIZE" in items:
        values["SIZE"] = await run(store.folder_size, folder.id)
    data = b" ".join(b"%s %d" % (item.encode(), values[item]) for item in items)
    return b"* STATUS " + mailbox(name) + b" (" + data + b")\r\n"


@command("STATUS", AUTH)
async def status(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.sp()
    items = _status_items(p)
    p.finish()
    conn.out += await _status_line(conn, name, items)
    return b"OK STATUS completed."


# -- APPEND ---------------------------------------------------------------------------------


def _date_time(value: bytes) -> datetime:
    """date-time (RFC 9051 §9): "dd-Mon-yyyy hh:mm:ss +zzzz", day possibly space-padded."""
    try:
        return datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except (UnicodeError, ValueError):
        raise Bad("bad date-time") from None


@command("APPEND", AUTH)
async def append(conn: Connection, tag: bytes, p: Parser) -> bytes:
    """APPEND, with several messages at once (MULTIAPPEND, RFC 3502): all are stored or none;
    a message may be put together from literals and parts of stored messages (CATENATE,
    RFC 4469)."""
    p.sp()
    name = p.mailbox()
    given: list[tuple[bytes | list, frozenset[str], datetime | None]] = []
    while p.skip(b" "):
        flags: list[str] = []
        when = None
        if p.peek() == b"(":
            flags = p.paren_list(p.flag)
            p.sp()
        if p.peek() == b'"':
            when = _date_time(p.string())
            p.sp()
        if p.skip(b"CATENATE "):
            content: bytes | list = p.paren_list(lambda: _catenate_part(p))
            if not content:
                raise Bad("empty CATENATE")
        else:
            content = p.literal()
            if content is None:
                raise Bad("expected the message literal")
        if any(flag.lower() == "\\recent" for flag in flags):
            raise Bad("\\Recent cannot be set")
        given.append((content, frozenset(flags), when))
    p.finish()
    if not given:
        raise Bad("no message")
    try:
        access, info = await conn.mailboxes.info(name)
    except KeyError:
        raise No("TRYCREATE", "No such mailbox.") from None
    messages = []
    for content, flags, when in given:
        if isinstance(content, list):
            content = b"".join([await _catenated(conn, part) for part in content])
        messages.append((without_nul(content), flags, when))
    if not access.writable:
        raise No("READ-ONLY", "Mailbox is read-only.")
    if any(not raw for raw, _, _ in messages):
        raise No("CANNOT", "An empty message is not stored.")
    if any(len(raw) > settings.EVERLOCK_SMTP_MAX_MESSAGE_SIZE for raw, _, _ in messages):
        # RFC 7889: larger than APPENDLIMIT.
        raise No("TOOBIG", "Message larger than the server accepts.")
    selected = conn.selected
    here = selected is not None and selected.folder_id == info.id
    try:
        new = await run(store.store_files, messages)
        validity, uids = await write(
            store.append, info.id, access=access, new=new, seen_by_appender=here, durable=True
        )
    except store.FolderGone:
        raise No("TRYCREATE", "No such mailbox.") from None
    poke(info.id)
    if here:
        # The APPEND made them \\Recent for this session only: nothing left to claim.
        selected.recent.update(uids)
        selected.state.claimed_up_to = max(selected.state.claimed_up_to, uids[-1] + 1)
        await conn.sync(expunges=False)
    return b"OK [APPENDUID %d %s] APPEND completed." % (validity, sequence_set(uids))


_IMAP_URL = re.compile(
    r"/(?P<mailbox>[^;/?]+)(?:;UIDVALIDITY=(?P<validity>[0-9]+))?/;UID=(?P<uid>[0-9]+)"
    r"(?:/;SECTION=(?P<section>[^/]+))?(?:/;PARTIAL=(?P<origin>[0-9]+)(?:\.(?P<length>[0-9]+))?)?",
    re.IGNORECASE,
)


def _catenate_part(p: Parser) -> tuple[str, bytes]:
    kind = p.keyword()
    p.sp()
    if kind == "TEXT":
        text = p.literal()
        if text is None:
            raise Bad("TEXT takes a literal")
        return ("TEXT", text)
    if kind == "URL":
        return ("URL", p.astring())
    raise Bad("unknown CATENATE part")


async def _catenated(conn: Connection, part: tuple[str, bytes]) -> bytes:
    """A CATENATE part's bytes: the text, or what an IMAP URL (RFC 5092) of this server names
    in a mailbox the user may read. Raises No BADURL (RFC 4469 §5) for any other URL."""
    kind, value = part
    if kind == "TEXT":
        return value
    url = value.decode("utf-8", "replace")
    found = _IMAP_URL.fullmatch(url)
    bad = No(f"BADURL {url}", "The URL names no message part of this server.")
    if found is None:
        raise bad
    name = decode_name(unquote(found["mailbox"]).encode("utf-8", "surrogateescape"))
    try:
        _, info = await conn.mailboxes.info(name)
    except KeyError:
        raise bad from None
    if found["validity"] and int(found["validity"]) != info.uid_validity:
        raise bad
    state = folder_state(info.id)
    await state.refresh()
    row = state.messages.get(int(found["uid"]))
    raw = await run(store.read_content, row) if row is not None else None
    if raw is None:
        raise bad
    if found["section"]:
        try:
            section = fetch.parse_section(Parser(unquote(found["section"]).encode() + b"]"), peek=True)
        except Bad:
            raise bad from None
        raw = fetch.section_bytes(raw, section)
    if found["origin"] is not None:
        origin = int(found["origin"])
        raw = raw[origin : origin + int(found["length"])] if found["length"] else raw[origin:]
    return raw


# -- NAMESPACE, ACL, QUOTA ------------------------------------------------------------------


@command("NAMESPACE", AUTH)
async def namespace(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    accesses = conn.mailboxes.accesses
    personal = b'(("" "/"))' if accesses and not accesses[0].prefix else b"NIL"
    shared = (
        b'(("' + store.SHARED_PREFIX.encode() + b'/" "/"))' if any(a.prefix for a in accesses) else b"NIL"
    )
    conn.out += b"* NAMESPACE " + personal + b" NIL " + shared + b"\r\n"
    return b"OK NAMESPACE completed."


def _access(conn: Connection, name: str) -> store.Access:
    try:
        return conn.mailboxes.locate(name)[0]
    except KeyError:
        raise _no_such(name) from None


def _rights(access: store.Access) -> bytes:
    return WRITER_RIGHTS if access.writable else READER_RIGHTS


@command("MYRIGHTS", AUTH)
async def myrights(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.finish()
    await _folder(conn, name)
    conn.out += b"* MYRIGHTS " + mailbox(name) + b" " + _rights(_access(conn, name)) + b"\r\n"
    return b"OK MYRIGHTS completed."


@command("GETACL", AUTH)
async def getacl(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.finish()
    access, _ = await _folder(conn, name)
    holders = await run(store.acl, access.mailbox_id)
    entries = b"".join(
        b" " + string(user) + b" " + (WRITER_RIGHTS if writable else READER_RIGHTS)
        for user, writable in holders
    )
    conn.out += b"* ACL " + mailbox(name) + entries + b"\r\n"
    return b"OK GETACL completed."


@command("LISTRIGHTS", AUTH)
async def listrights(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.sp()
    identifier = p.astring()
    p.finish()
    await _folder(conn, name)
    # Rights come as the two roles give them: "lr" always together, the rest of the writer's
    # rights as one more group.
    conn.out += (
        b"* LISTRIGHTS "
        + mailbox(name)
        + b" "
        + string(identifier)
        + b' "" '
        + READER_RIGHTS
        + b" "
        + WRITER_RIGHTS[len(READER_RIGHTS) :]
        + b"\r\n"
    )
    return b"OK LISTRIGHTS completed."


@command("SETACL", AUTH)
async def setacl(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    p.mailbox()
    p.sp()
    p.astring()
    p.sp()
    p.astring()
    p.finish()
    raise No("NOPERM", _NO_ACL_CHANGES)


@command("DELETEACL", AUTH)
async def deleteacl(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    p.mailbox()
    p.sp()
    p.astring()
    p.finish()
    raise No("NOPERM", _NO_ACL_CHANGES)


@command("SETQUOTA", AUTH)
async def setquota(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    p.astring()
    p.sp()
    p.paren_list(lambda: (p.atom(), p.sp(), p.number()))
    p.finish()
    raise No("NOPERM", _NO_QUOTA_CHANGES)


def _quota_line(root: str, usage: int, limit: int) -> bytes:
    # RFC 9208 §5.1: STORAGE in units of 1024 octets.
    return b"* QUOTA " + string(root) + b" (STORAGE %d %d)\r\n" % ((usage + 1023) // 1024, limit // 1024)


@command("GETQUOTAROOT", AUTH)
async def getquotaroot(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    name = p.mailbox()
    p.finish()
    access, _ = await _folder(conn, name)
    usage, limit = await run(store.mailbox_quota, access.mailbox_id)
    if limit is None:
        conn.out += b"* QUOTAROOT " + mailbox(name) + b"\r\n"
    else:
        conn.out += b"* QUOTAROOT " + mailbox(name) + b" " + string(access.address) + b"\r\n"
        conn.out += _quota_line(access.address, usage, limit)
    return b"OK GETQUOTAROOT completed."


@command("GETQUOTA", AUTH)
async def getquota(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    root = p.text(p.astring())
    p.finish()
    for access in conn.mailboxes.accesses:
        if access.address.casefold() == root.casefold():
            usage, limit = await run(store.mailbox_quota, access.mailbox_id)
            if limit is None:
                break
            conn.out += _quota_line(access.address, usage, limit)
            return b"OK GETQUOTA completed."
    raise No("NONEXISTENT", "No such quota root.")
