"""FETCH (RFC 9051 §6.4.5): its data items, parsed, and the response of each message, built
as bytes.

ENVELOPE and BODYSTRUCTURE are computed once per stored content and kept with it
(MessageContent.imap_envelope / imap_structure / imap_body), so listing a folder reads no
message file.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime

from mail.imap import store
from mail.imap.mime import Part, decode_transfer, header_fields, imap_summary, split_header
from mail.imap.parser import Bad, Parser
from mail.imap.store import Row

_ITEM = re.compile(rb"[A-Za-z0-9.]+")
_MACRO = re.compile(rb"[A-Za-z]+(?=[ )]|\Z)")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = {
    "UID",
    "FLAGS",
    "INTERNALDATE",
    "RFC822.SIZE",
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "MODSEQ",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.TEXT",
}


@dataclass
class Section:
    """BODY[...]<...>: `numbers` the part, `text` HEADER / HEADER.FIELDS / HEADER.FIELDS.NOT /
    TEXT / MIME or "", `fields` the header names, `partial` (origin, length)."""

    name: bytes  # as the response names it, without the partial
    numbers: list[int]
    text: str
    fields: list[str]
    partial: tuple[int, int] | None
    peek: bool
    kind: str = "BODY"  # or BINARY, BINARY.SIZE (RFC 3516)

    @property
    def header_only(self) -> bool:
        """The section lies in the message's header (HEADER, HEADER.FIELDS[.NOT])."""
        return self.kind == "BODY" and not self.numbers and self.text.startswith("HEADER")


@dataclass
class Request:
    items: list[str | Section]
    changed_since: int | None = None
    vanished: bool = False

    @property
    def needs_content(self) -> bool:
        return any(
            (isinstance(item, Section) and not item.header_only) or item in ("RFC822", "RFC822.TEXT")
            for item in self.items
        )

    @property
    def needs_header(self) -> bool:
        """Only the message's header section is read (when nothing needs more)."""
        return any(
            item == "RFC822.HEADER" or (isinstance(item, Section) and item.header_only) for item in self.items
        )

    @property
    def needs_summary(self) -> bool:
        return "ENVELOPE" in self.items or "BODYSTRUCTURE" in self.items or "BODY" in self.items

    @property
    def sets_seen(self) -> bool:
        return any(
            (isinstance(item, Section) and not item.peek) or item in ("RFC822", "RFC822.TEXT")
            for item in self.items
        )


def parse_section(p: Parser, peek: bool) -> Section:
    """A section spec after "BODY[", through its "]" and any <partial>."""
    numbers: list[int] = []
    text = ""
    fields: list[str] = []
    start = p.pos
    while p.peek().isdigit():
        numbers.append(p.number(nonzero=True))
        if not p.skip(b"."):
            break
    if p.peek() != b"]":
        text = p.atom().decode().upper()
        if text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
            raise Bad("bad section")
        if text == "MIME" and not numbers:
            raise Bad("MIME needs a part")
        if text.startswith("HEADER.FIELDS"):
            p.sp()
            fields = [p.text(value) for value in p.paren_list(p.astring)]
            if not fields:
                raise Bad("no fields")
    name_inside = p.data[start : p.pos]
    p.expect(b"]")
    partial = None
    if p.skip(b"<"):
        origin = p.number()
        p.expect(b".")
        length = p.number(nonzero=True)
        p.expect(b">")
        partial = (origin, length)
    if fields:
        spec = ".".join(str(n) for n in numbers) + ("." if numbers else "") + text
        name_inside = spec.encode() + b" (" + " ".join(f.upper() for f in fields).encode() + b")"
    else:
        name_inside = name_inside.upper()
    return Section(b"BODY[" + name_inside + b"]", numbers, text, fields, partial, peek)


def _binary_section(p: Parser, name: str) -> Section:
    """BINARY[1.2]<partial>, BINARY.PEEK[...], BINARY.SIZE[...]: part numbers only."""
    numbers: list[int] = []
    start = p.pos
    while p.peek().isdigit():
        numbers.append(p.number(nonzero=True))
        if not p.skip(b"."):
            break
    spec = p.data[start : p.pos]
    p.expect(b"]")
    partial = None
    if name != "BINARY.SIZE" and p.skip(b"<"):
        origin = p.number()
        p.expect(b".")
        length = p.number(nonzero=True)
        p.expect(b">")
        partial = (origin, length)
    kind = "BINARY.SIZE" if name == "BINARY.SIZE" else "BINARY"
    return Section(kind.encode() + b"[" + spec + b"]", numbers, "", [], partial, name != "BINARY", kind)


class UnknownEncoding(Exception):
    """BINARY of a part in a transfer encoding that cannot be undone (RFC 3516 §4.3)."""


def binary_bytes(raw: bytes, numbers: list[int]) -> bytes:
    """A part's content with its transfer encoding undone (the whole message for no part)."""
    if not numbers:
        return raw
    part = Part(raw).find(numbers)
    if part is None:
        return b""
    if part.children or part.message is not None:
        return part.body
    try:
        return decode_transfer(part)
    except (ValueError, binascii.Error):
        encoding = (part.field("content-transfer-encoding") or "").strip()
        raise UnknownEncoding(encoding) from None


def _item(p: Parser) -> list[str | Section]:
    word = p._match(_ITEM)
    if word is None:
        raise Bad("expected a fetch item")
    name = word.decode().upper()
    if name in ("BODY", "BODY.PEEK") and p.skip(b"["):
        return [parse_section(p, peek=name == "BODY.PEEK")]
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and p.skip(b"["):
        return [_binary_section(p, name)]
    if name in _SIMPLE:
        return [name]
    raise Bad(f"unknown fetch item {name}")


def parse(p: Parser, *, uid: bool) -> Request:
    """The fetch items (and the RFC 7162 modifiers) after the sequence set."""
    p.sp()
    items: list[str | Section] = []
    if p.peek() == b"(":
        for group in p.paren_list(lambda: _item(p)):
            items.extend(group)
    else:
        word = p._match(_MACRO)
        if word is not None and word.decode().upper() in _MACROS:
            items = list(_MACROS[word.decode().upper()])
        else:
            if word is not None:
                p.pos -= len(word)
            items = _item(p)
    request = Request(items)
    if p.skip(b" ("):
        while True:
            modifier = p.keyword()
            if modifier == "CHANGEDSINCE":
                p.sp()
                request.changed_since = p.number()
            elif modifier == "VANISHED" and uid:
                request.vanished = True
            else:
                raise Bad("unknown fetch modifier")
            if p.skip(b")"):
                break
            p.sp()
        if request.vanished and request.changed_since is None:
            raise Bad("VANISHED needs CHANGEDSINCE")
    p.finish()
    if uid and "UID" not in request.items:
        request.items.insert(0, "UID")
    if request.changed_since is not None and "MODSEQ" not in request.items:
        request.items.append("MODSEQ")
    return request


def internal_date(when: datetime) -> bytes:
    return b'"%02d-%s-%04d %02d:%02d:%02d %s"' % (
        when.day,
        _MONTHS[when.month - 1].encode(),
        when.year,
        when.hour,
        when.minute,
        when.second,
        when.strftime("%z").encode() or b"+0000",
    )


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def section_bytes(raw: bytes, section: Section) -> bytes:
    """The bytes BODY[section] names, before any partial (RFC 9051 §6.4.5)."""
    if not section.numbers:
        # The message itself: no MIME structure to read.
        if not section.text:
            return raw
        header, body = split_header(raw)
    else:
        part = Part(raw).find(section.numbers)
        if part is None:
            return b""
        if not section.text:
            return part.body
        if section.text == "MIME":
            return part.header
        # HEADER, HEADER.FIELDS, TEXT of a part: of the message the part holds.
        if part.message is None:
            return b""
        header, body = part.message.header, part.message.body
    if section.text == "HEADER":
        return header
    if section.text == "TEXT":
        return body
    return header_fields(header, section.fields, exclude=section.text.endswith(".NOT"))


def build(
    messages: list[tuple[int, Row, bytes]], request: Request
) -> tuple[bytes, dict[int, tuple[bytes, bytes, bytes]]]:
    """The FETCH responses of (seq, row, flag list) in order, and the summaries computed on
    the way (for the caller to keep). Reads the database and message files: run in a worker
    thread."""
    summaries = store.summaries([row.content_id for _, row, _ in messages]) if request.needs_summary else {}
    out = bytearray()
    computed: dict[int, tuple[bytes, bytes, bytes]] = {}
    items = request.items
    needs_content, needs_header, needs_summary = (
        request.needs_content,
        request.needs_header,
        request.needs_summary,
    )
    for seq, row, flags in messages:
        raw = None
        if needs_content or (needs_summary and row.content_id not in summaries):
            raw = store.read_content(row)
            if raw is None:
                continue  # expunged meanwhile: its content is gone
        elif needs_header:
            raw = store.read_content(row, header_only=True)
            if raw is None:
                continue
        if needs_summary and row.content_id not in summaries and raw is not None:
            summaries[row.content_id] = computed[row.content_id] = imap_summary(raw)
        parts = []
        for item in items:
            if isinstance(item, Section) and item.kind == "BINARY.SIZE":
                parts.append(item.name + b" %d" % len(binary_bytes(raw, item.numbers)))
            elif isinstance(item, Section) and item.kind == "BINARY":
                data = binary_bytes(raw, item.numbers)
                name = item.name
                if item.partial is not None:
                    origin, length = item.partial
                    data = data[origin : origin + length]
                    name += b"<%d>" % origin
                # RFC 3516 §4.2: content with NUL goes as a literal8.
                parts.append(name + b" " + (b"~" + _literal(data) if b"\0" in data else _literal(data)))
            elif isinstance(item, Section):
                data = section_bytes(raw, item)
                name = item.name
                if item.partial is not None:
                    origin, length = item.partial
                    data = data[origin : origin + length]
                    name += b"<%d>" % origin
                parts.append(name + b" " + _literal(data))
            elif item == "UID":
                parts.append(b"UID %d" % row.uid)
            elif item == "FLAGS":
                parts.append(b"FLAGS " + flags)
            elif item == "INTERNALDATE":
                parts.append(b"INTERNALDATE " + internal_date(row.internal_date))
            elif item == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % (row.size + len(row.prepended)))
            elif item == "ENVELOPE":
                parts.append(b"ENVELOPE " + summaries[row.content_id][0])
            elif item == "BODYSTRUCTURE":
                parts.append(b"BODYSTRUCTURE " + summaries[row.content_id][1])
            elif item == "BODY":
                parts.append(b"BODY " + summaries[row.content_id][2])
            elif item == "MODSEQ":
                parts.append(b"MODSEQ (%d)" % row.modseq)
            elif item == "RFC822":
                parts.append(b"RFC822 " + _literal(raw))
            elif item == "RFC822.HEADER":
                parts.append(b"RFC822.HEADER " + _literal(split_header(raw)[0]))
            elif item == "RFC822.TEXT":
                parts.append(b"RFC822.TEXT " + _literal(split_header(raw)[1]))
        out += b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"
    return bytes(out), computed
