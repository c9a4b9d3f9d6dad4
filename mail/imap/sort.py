"""SORT and THREAD (RFC 5256): the messages of the selected folder that match the search keys,
sorted (ARRIVAL, CC, DATE, FROM, SIZE, SUBJECT, TO, REVERSE; DISPLAYFROM and DISPLAYTO of
RFC 5957) or threaded (ORDEREDSUBJECT, REFERENCES)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from mail.imap import search
from mail.imap.mime import parse_addresses
from mail.imap.parser import Bad, Parser
from mail.imap.selected import matching, selected_folder
from mail.imap.server import SEL, Connection, No, command
from mail.imap.threads import run

_CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
_SUBJECT_LEADER = re.compile(r"^(?:\s*(?:re|fwd?)\s*(?:\[[^\[\]]*\]\s*)?:|\s*\[[^\[\]]*\]\s*(?=.))", re.I)
_SUBJECT_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$", re.I)
_MESSAGE_ID = re.compile(r"<[^<>]+>")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1: the subject without re:/fwd: leaders, [blob]s and (fwd) trailers."""
    text = " ".join(search.decode_words(subject).split())
    while True:
        before = text
        text = _SUBJECT_TRAILER.sub("", text).strip()
        while True:
            stripped = _SUBJECT_LEADER.sub("", text, count=1).strip()
            if stripped == text:
                break
            text = stripped
        if text.lower().startswith("[fwd:") and text.endswith("]"):
            text = text[5:-1].strip()
        if text == before:
            # Compared with i;ascii-casemap (RFC 5256 §2.1): ASCII letters as upper case.
            return text.upper()


def _sent(candidate: search.Candidate) -> datetime:
    """The Date: field, else the internal date (RFC 5256 §2.2)."""
    values = candidate.part.fields.get_all("date") or []
    if values:
        try:
            when = parsedate_to_datetime(str(values[0]))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when
        except (TypeError, ValueError, IndexError):
            pass
    return candidate.row.internal_date


def _first_address(candidate: search.Candidate, field: str, *, display: bool) -> str:
    """RFC 5256 §3: the mailbox of the first address (a group's name for a group); RFC 5957:
    its display name, else its address."""
    value = candidate.part.field(field)
    entries = parse_addresses(value) if value else []
    if not entries:
        return ""
    _, name, _, local, host = entries[0]
    if display:
        if name:
            return search.decode_words(name).upper()
        return f"{local or ''}@{host}".upper() if host else (local or "").upper()
    return (name if entries[0][0] == "start" else local or "").upper()


def _key(candidate: search.Candidate, criterion: str):
    if criterion == "ARRIVAL":
        return candidate.row.internal_date
    if criterion == "SIZE":
        return candidate.row.size + len(candidate.row.prepended)
    if criterion == "DATE":
        return _sent(candidate)
    if criterion == "SUBJECT":
        return base_subject(str(candidate.part.fields.get("subject") or ""))
    if criterion in ("FROM", "TO", "CC"):
        return _first_address(candidate, criterion.lower(), display=False)
    return _first_address(candidate, criterion[7:].lower(), display=True)


def sort_candidates(
    candidates: list[search.Candidate], criteria: list[tuple[str, bool]]
) -> list[search.Candidate]:
    """Sorted by the criteria, ties by sequence number (reads message files: worker thread)."""
    ordered = sorted(candidates, key=lambda c: c.seq)
    for criterion, reverse in reversed(criteria):
        ordered.sort(key=lambda c, name=criterion: _key(c, name), reverse=reverse)
    return ordered


def _charset_and_keys(p: Parser) -> tuple:
    p.sp()
    charset = p.text(p.astring()).upper()
    if charset not in ("UTF-8", "US-ASCII"):
        raise No("BADCHARSET (UTF-8 US-ASCII)", "Unsupported charset.")
    p.sp()
    return search.parse_keys(p)


async def _sort(conn: Connection, tag: bytes, p: Parser, *, uid: bool) -> bytes:
    selected = selected_folder(conn)
    p.sp()
    returns = None
    if p.skip(b"RETURN "):
        # ESORT (RFC 5267): the answer as ESEARCH.
        returns = p.paren_list(p.keyword) or ["ALL"]
        if not set(returns) <= {"MIN", "MAX", "ALL", "COUNT"}:
            raise Bad("bad return option")
        p.sp()
    words = p.paren_list(p.keyword)
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for word in words:
        if word == "REVERSE":
            if reverse:
                raise Bad("REVERSE twice")
            reverse = True
            continue
        if word not in _CRITERIA:
            raise Bad("unknown sort criterion")
        criteria.append((word, reverse))
        reverse = False
    if reverse or not criteria:
        raise Bad("bad sort criteria")
    keys = _charset_and_keys(p)
    await conn.sync(expunges=uid)
    found = await matching(conn, selected, keys)
    ordered = await run(sort_candidates, found, criteria)
    numbers = [c.row.uid if uid else c.seq for c in ordered]
    if returns is None:
        conn.out += b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n"
    else:
        line = b'* ESEARCH (TAG "' + tag + b'")' + (b" UID" if uid else b"")
        if numbers and "MIN" in returns:
            line += b" MIN %d" % numbers[0]
        if numbers and "MAX" in returns:
            line += b" MAX %d" % numbers[-1]
        if numbers and "ALL" in returns:
            line += b" ALL " + _in_order(numbers)
        if "COUNT" in returns:
            line += b" COUNT %d" % len(numbers)
        conn.out += line + b"\r\n"
    return b"OK %sSORT completed." % (b"UID " if uid else b"")


def _in_order(numbers: list[int]) -> bytes:
    """Numbers in the order given, ascending runs as ranges (RFC 5267 §3.2)."""
    parts: list[bytes] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        if n is not None:
            start = prev = n
    return b",".join(parts)


@command("SORT", SEL)
async def sort(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _sort(conn, tag, p, uid=False)


@command("UID SORT", SEL)
async def uid_sort(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _sort(conn, tag, p, uid=True)


# -- THREAD ----------------------------------------------------------------------------------


class _Node:
    __slots__ = ("candidate", "children", "parent")

    def __init__(self) -> None:
        self.candidate: search.Candidate | None = None
        self.parent: _Node | None = None
        self.children: list[_Node] = []


def _date_of(node: _Node) -> tuple[datetime, int]:
    """A node's sort key: its message's sent date, else its first child's (RFC 5256 §2.2)."""
    while node.candidate is None and node.children:
        node = node.children[0]
    if node.candidate is None:
        return (_EPOCH, 0)
    return (_sent(node.candidate), node.candidate.seq)


def _is_ancestor(node: _Node, other: _Node) -> bool:
    while other is not None:
        if other is node:
            return True
        other = other.parent
    return False


def thread_references(candidates: list[search.Candidate]) -> list[_Node]:
    """RFC 5256 §3 REFERENCES: the thread roots."""
    table: dict[str, _Node] = {}
    for candidate in candidates:
        fields = candidate.part.fields
        ids = _MESSAGE_ID.findall(str(fields.get("message-id") or ""))
        own = ids[0] if ids else None
        if own is None or (own in table and table[own].candidate is not None):
            own = f"<unique.{candidate.seq}>"  # no or duplicate Message-ID: a thread of its own
        node = table.setdefault(own, _Node())
        node.candidate = candidate
        references = _MESSAGE_ID.findall(str(fields.get("references") or ""))
        if not references:
            references = _MESSAGE_ID.findall(str(fields.get("in-reply-to") or ""))[:1]
        previous: _Node | None = None
        for ref in references:
            ref_node = table.setdefault(ref, _Node())
            if previous is not None and ref_node.parent is None and not _is_ancestor(ref_node, previous):
                ref_node.parent = previous
                previous.children.append(ref_node)
            previous = ref_node
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and not _is_ancestor(node, previous):
            node.parent = previous
            previous.children.append(node)
    roots = [node for node in table.values() if node.parent is None]

    def prune(nodes: list[_Node], *, top: bool) -> list[_Node]:
        kept: list[_Node] = []
        for node in nodes:
            node.children = prune(node.children, top=False)
            if node.candidate is None:
                if not node.children:
                    continue
                if not top or len(node.children) == 1:
                    for child in node.children:
                        child.parent = node.parent
                    kept.extend(node.children)
                    continue
            kept.append(node)
        return kept

    roots = prune(roots, top=True)
    # Group roots by base subject (RFC 5256 §3 step 5).
    by_subject: dict[str, _Node] = {}
    grouped: list[_Node] = []
    for root in sorted(roots, key=_date_of):
        source = root.candidate or (root.children[0].candidate if root.children else None)
        subject = base_subject(str(source.part.fields.get("subject") or "")) if source else ""
        if not subject:
            grouped.append(root)
            continue
        other = by_subject.get(subject)
        if other is None:
            by_subject[subject] = root
            grouped.append(root)
            continue
        if other.candidate is None and root.candidate is None:
            other.children.extend(root.children)
        elif other.candidate is None:
            other.children.append(root)
        elif root.candidate is None:
            root.children.append(other)
            grouped[grouped.index(other)] = root
            by_subject[subject] = root
        else:
            raw_subject = str(root.candidate.part.fields.get("subject") or "")
            if base_subject(raw_subject) != " ".join(raw_subject.split()).casefold():
                other.children.append(root)
            else:
                holder = _Node()
                holder.children = [other, root]
                grouped[grouped.index(other)] = holder
                by_subject[subject] = holder
    return grouped


def thread_ordered_subject(candidates: list[search.Candidate]) -> list[_Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: by base subject, then date; each thread flat."""
    groups: dict[str, list[search.Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: (_sent(c), c.seq)):
        subject = base_subject(str(candidate.part.fields.get("subject") or ""))
        groups.setdefault(subject, []).append(candidate)
    roots = []
    for members in groups.values():
        root = _Node()
        root.candidate = members[0]
        for member in members[1:]:
            child = _Node()
            child.candidate = member
            root.children.append(child)
        roots.append(root)
    return roots


def format_threads(roots: list[_Node], *, uid: bool) -> bytes:
    def number(node: _Node) -> bytes:
        return b"%d" % (node.candidate.row.uid if uid else node.candidate.seq)

    def one(node: _Node) -> bytes:
        # A chain of single children is written flat: (1 2 3); siblings as nested lists.
        parts = []
        while True:
            children = sorted(node.children, key=_date_of)
            if node.candidate is not None:
                parts.append(number(node))
            if len(children) == 1:
                node = children[0]
                continue
            parts.extend(one(child) for child in children)
            break
        return b"(" + b" ".join(parts) + b")"

    return b"".join(one(root) for root in sorted(roots, key=_date_of))


def _thread(candidates: list[search.Candidate], algorithm: str, uid: bool) -> bytes:
    if algorithm == "ORDEREDSUBJECT":
        roots = thread_ordered_subject(candidates)
    else:
        roots = thread_references(candidates)
    return format_threads(roots, uid=uid)


async def _thread_command(conn: Connection, p: Parser, *, uid: bool) -> bytes:
    selected = selected_folder(conn)
    p.sp()
    algorithm = p.keyword()
    if algorithm not in ("ORDEREDSUBJECT", "REFERENCES"):
        raise Bad("unknown thread algorithm")
    keys = _charset_and_keys(p)
    await conn.sync(expunges=uid)
    found = await matching(conn, selected, keys)
    data = await run(_thread, found, algorithm, uid)
    conn.out += b"* THREAD " + data + b"\r\n" if data else b"* THREAD\r\n"
    return b"OK %sTHREAD completed." % (b"UID " if uid else b"")


@command("THREAD", SEL)
async def thread(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _thread_command(conn, p, uid=False)


@command("UID THREAD", SEL)
async def uid_thread(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _thread_command(conn, p, uid=True)
