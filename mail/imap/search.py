"""SEARCH keys (RFC 9051 §6.4.4, MODSEQ of RFC 7162, "$" of RFC 5182): parsed into a tree of
tuples, then matched against each message. Keys on flags, sizes, dates and numbers need no
message file; header and body keys read the message (in a worker thread).

Strings match case-insensitively as substrings, against header fields with their encoded
words decoded (RFC 2047) and against body parts with their transfer encoding and charset
undone.
"""

from __future__ import annotations

import re
from binascii import Error as Base64Error
from datetime import date, datetime
from email.utils import parsedate_to_datetime

from mail import message
from mail.imap import store
from mail.imap.mime import Part, decode_transfer, parse_addresses
from mail.imap.parser import Bad, Parser
from mail.imap.store import Row

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_CHARSETS = {"UTF-8", "US-ASCII"}
_ADDRESS_FIELDS = {"from", "to", "cc", "bcc", "sender", "reply-to"}


class BadCharset(Exception):
    pass


def _date(p: Parser) -> date:
    try:
        return datetime.strptime(p.date(), "%d-%b-%Y").date()
    except ValueError:
        raise Bad("bad date") from None


def _key(p: Parser) -> tuple:
    if p.peek() == b"(":
        return ("AND", p.paren_list(lambda: _keys_until(p)))
    if p.peek() == b"$":
        p.pos += 1
        return ("SAVED",)
    if p.peek().isdigit() or p.peek() == b"*":
        return ("SEQ", p.sequence_set())
    name = p.keyword()
    if name == "ALL":
        return ("ALL",)
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return ("FLAG", flag, wanted)
    if name in ("NEW", "OLD", "RECENT"):
        return (name,)
    if name in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        return ("FLAG", p.atom().decode("ascii", "replace"), name == "KEYWORD")
    if name in _DATE_KEYS:
        p.sp()
        return ("DATE", name, _date(p))
    if name in ("LARGER", "SMALLER"):
        p.sp()
        return ("SIZE", name, p.number())
    if name in _HEADER_KEYS:
        p.sp()
        return ("HEADER", name.lower(), _needle(p.astring()))
    if name == "HEADER":
        p.sp()
        field = p.text(p.astring()).lower()
        p.sp()
        return ("HEADER", field, _needle(p.astring()))
    if name in ("BODY", "TEXT"):
        p.sp()
        return (name, _needle(p.astring()))
    if name == "NOT":
        p.sp()
        return ("NOT", _key(p))
    if name == "OR":
        p.sp()
        first = _key(p)
        p.sp()
        return ("OR", first, _key(p))
    if name == "UID":
        p.sp()
        if p.peek() == b"$":
            p.pos += 1
            return ("SAVED",)
        return ("UID", p.sequence_set())
    if name == "MODSEQ":
        p.sp()
        if p.peek() == b'"':
            p.string()  # entry name and type: flags have one modseq here
            p.sp()
            p.atom()
            p.sp()
        return ("MODSEQ", p.number())
    raise Bad(f"unknown search key {name}")


def _keys_until(p: Parser) -> tuple:
    keys = [_key(p)]
    while p.peek() == b" " and p.peek(2) != b" )":
        p.sp()
        keys.append(_key(p))
    return ("AND", keys) if len(keys) > 1 else keys[0]


def _needle(value: bytes) -> str:
    return value.decode("utf-8", "replace").casefold()


class Query:
    """A parsed SEARCH: its RETURN options (ESEARCH, RFC 4731), charset and keys."""

    def __init__(self, keys: tuple, returns: list[str] | None) -> None:
        self.keys = keys
        self.returns = returns

    @property
    def needs_content(self) -> bool:
        return _needs_content(self.keys)

    @property
    def uses_modseq(self) -> bool:
        return _mentions(self.keys, "MODSEQ")


def parse(p: Parser, *, allow_return: bool = True) -> Query:
    returns = None
    p.sp()
    if allow_return and p.skip(b"RETURN "):
        returns = p.paren_list(p.keyword)
        if not set(returns) <= {"MIN", "MAX", "ALL", "COUNT", "SAVE"}:
            raise Bad("bad return option")
        returns = returns or ["ALL"]
        p.sp()
    if p.skip(b"CHARSET "):
        charset = p.text(p.astring()).upper()
        if charset not in _CHARSETS:
            raise BadCharset(charset)
        p.sp()
    keys = [_key(p)]
    while p.skip(b" "):
        keys.append(_key(p))
    p.finish()
    return Query(("AND", keys) if len(keys) > 1 else keys[0], returns)


def parse_keys(p: Parser) -> tuple:
    """Search keys to the end of the command (SORT and THREAD, after their charset)."""
    keys = [_key(p)]
    while p.skip(b" "):
        keys.append(_key(p))
    p.finish()
    return ("AND", keys) if len(keys) > 1 else keys[0]


def _needs_content(keys: tuple) -> bool:
    kind = keys[0]
    if kind in ("HEADER", "BODY", "TEXT") or (kind == "DATE" and keys[1].startswith("SENT")):
        return True
    if kind == "AND":
        return any(_needs_content(k) for k in keys[1])
    if kind == "NOT":
        return _needs_content(keys[1])
    if kind == "OR":
        return _needs_content(keys[1]) or _needs_content(keys[2])
    return False


def _mentions(keys: tuple, name: str) -> bool:
    kind = keys[0]
    if kind == name:
        return True
    if kind == "AND":
        return any(_mentions(k, name) for k in keys[1])
    if kind == "NOT":
        return _mentions(keys[1], name)
    if kind == "OR":
        return _mentions(keys[1], name) or _mentions(keys[2], name)
    return False


class Candidate:
    """One message while a search looks at it; its content is read at most once."""

    __slots__ = ("_body_text", "_part", "recent", "row", "seq")

    def __init__(self, seq: int, row: Row, recent: bool) -> None:
        self.seq = seq
        self.row = row
        self.recent = recent
        self._part: Part | None = None
        self._body_text: str | None = None

    @property
    def part(self) -> Part:
        if self._part is None:
            raw = store.read_content(self.row) or b""
            self._part = Part(raw)
        return self._part

    def header(self, name: str) -> list[str]:
        values = [decode_words(str(value)) for value in self.part.fields.get_all(name) or []]
        if name in _ADDRESS_FIELDS:
            # Also each address as "name <local@host>", comments and quoting undone.
            for value in list(values):
                for kind, phrase, _, local, host in parse_addresses(value):
                    if kind == "addr":
                        values.append(f"{phrase or ''} <{local or ''}@{host or ''}>")
        return values

    def headers_text(self) -> str:
        return decode_words(self.part.header.decode("utf-8", "replace"))

    def body_text(self) -> str:
        if self._body_text is None:
            self._body_text = "\n".join(_texts(self.part, top=True))
        return self._body_text


def decode_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded, unfolded (each fold a space,
    as a client searching for words expects)."""
    return message.decode_words(re.sub(r"\r?\n[ \t]", " ", value))


def _decode_body(part: Part) -> str:
    try:
        data = decode_transfer(part)
    except (ValueError, Base64Error):
        data = part.body
    charset = part.fields.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _texts(part: Part, *, top: bool = False):
    if part.children:
        for child in part.children:
            yield from _texts(child)
    elif part.message is not None:
        yield part.message.header.decode("utf-8", "replace")
        yield from _texts(part.message, top=True)
    else:
        yield _decode_body(part)


def _sent_date(candidate: Candidate) -> date | None:
    values = candidate.part.fields.get_all("date") or []
    if not values:
        return None
    try:
        return parsedate_to_datetime(str(values[0])).date()
    except (TypeError, ValueError, IndexError):
        return None


def matches(keys: tuple, c: Candidate, context: dict) -> bool:
    """Whether the message `c` matches `keys`; `context` holds "largest_seq", "largest_uid",
    "saved" (UIDs)."""
    kind = keys[0]
    row = c.row
    if kind == "ALL":
        return True
    if kind == "AND":
        return all(matches(k, c, context) for k in keys[1])
    if kind == "FLAG":
        return (keys[1] in row.flags) == keys[2]
    if kind == "NOT":
        return not matches(keys[1], c, context)
    if kind == "OR":
        return matches(keys[1], c, context) or matches(keys[2], c, context)
    if kind == "SEQ":
        return keys[1].contains(c.seq, context["largest_seq"])
    if kind == "UID":
        return keys[1].contains(row.uid, context["largest_uid"])
    if kind == "SAVED":
        return row.uid in context["saved"]
    if kind == "RECENT":
        return c.recent
    if kind == "NEW":
        return c.recent and "\\Seen" not in row.flags
    if kind == "OLD":
        return not c.recent
    if kind == "SIZE":
        size = row.size + len(row.prepended)
        return size > keys[2] if keys[1] == "LARGER" else size < keys[2]
    if kind == "MODSEQ":
        return row.modseq >= keys[1]
    if kind == "DATE":
        if keys[1].startswith("SENT"):
            day = _sent_date(c)
            if day is None:
                return False
            which = keys[1][4:]
        else:
            day = row.internal_date.date()
            which = keys[1]
        if which == "BEFORE":
            return day < keys[2]
        if which == "ON":
            return day == keys[2]
        return day >= keys[2]
    if kind == "HEADER":
        needle = keys[2]
        values = c.header(keys[1])
        if not needle:
            return bool(values) or keys[1] in {name for name, _ in c.part.fields.items()}
        return any(needle in value.casefold() for value in values)
    if kind == "BODY":
        return keys[1] in c.body_text().casefold()
    if kind == "TEXT":
        return keys[1] in c.headers_text().casefold() or keys[1] in c.body_text().casefold()
    raise ValueError(kind)


def run_search(candidates: list[Candidate], keys: tuple, context: dict) -> list[Candidate]:
    """The candidates that match (reads message files when the keys need them: run in a
    worker thread then)."""
    return [c for c in candidates if matches(keys, c, context)]
