"""A message's MIME structure as IMAP shows it: ENVELOPE, BODY and BODYSTRUCTURE
(RFC 9051 §7.5.2), and the exact bytes of a body section (BODY[1.2.MIME], ...).

The email package reads header fields and their parameters (through mail.message, where all
header parsing lives); the tree of parts is split here on the raw bytes, so a section is the
very bytes the message holds, and its offsets and sizes are what a client counts.
"""

from __future__ import annotations

import base64
import re
from email.utils import collapse_rfc2231_value

from mail.imap.responses import string
from mail.message import EntityFields, entity_fields

# Between two fields: a line break not followed by white space (which would fold the field).
_FIELD_SPLIT = re.compile(rb"\r?\n(?![ \t])")


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header section with its closing empty line, body)."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    if raw.startswith(b"\n"):
        return b"\n", raw[1:]
    crlf = raw.find(b"\r\n\r\n")
    # An LF-only empty line counts when it comes first: looked for only before the CRLF one.
    lf = raw.find(b"\n\n", 0, crlf if crlf >= 0 else len(raw))
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return raw[: crlf + 4], raw[crlf + 4 :]
    if lf >= 0:
        return raw[: lf + 2], raw[lf + 2 :]
    return raw, b""


def header_lines(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-case field name, the field's raw lines) in order."""
    fields: list[tuple[str, bytes]] = []
    header = header.removesuffix(b"\r\n\r\n").removesuffix(b"\n\n")
    for chunk in _FIELD_SPLIT.split(header):
        colon = chunk.find(b":")
        if colon <= 0:
            continue
        fields.append((chunk[:colon].strip().decode("ascii", "replace").lower(), chunk + b"\r\n"))
    return fields


def header_fields(header: bytes, names: list[str], *, exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the chosen fields, then the empty line."""
    wanted = {name.lower() for name in names}
    chosen = [raw for name, raw in header_lines(header) if (name in wanted) != exclude]
    return b"".join(chosen) + b"\r\n"


class Part:
    """One entity: its header section and body, its children when multipart, the embedded
    message when message/rfc822."""

    __slots__ = ("_children", "_fields", "_message", "body", "default_type", "header")

    def __init__(self, raw: bytes, *, default_type: str = "text/plain") -> None:
        self.header, self.body = split_header(raw)
        self.default_type = default_type
        # Read when asked: a FETCH of one part or of header fields parses no more than that.
        self._fields: EntityFields | None = None
        self._children: list[Part] | None = None
        self._message: Part | bool | None = False

    @property
    def fields(self) -> EntityFields:
        if self._fields is None:
            self._fields = entity_fields(self.header)
            self._fields.set_default_type(self.default_type)
        return self._fields

    @property
    def children(self) -> list[Part]:
        if self._children is None:
            self._children = []
            if self.fields.get_content_maintype() == "multipart":
                boundary = self.fields.get_param("boundary")
                if isinstance(boundary, str) and boundary:
                    child_type = "message/rfc822" if self.content_type[1] == "digest" else "text/plain"
                    self._children = [
                        Part(chunk, default_type=child_type) for chunk in _split(self.body, boundary)
                    ]
        return self._children

    @property
    def message(self) -> Part | None:
        if self._message is False:
            self._message = Part(self.body) if self.fields.get_content_type() == "message/rfc822" else None
        return self._message

    @property
    def content_type(self) -> tuple[str, str]:
        maintype, _, subtype = self.fields.get_content_type().partition("/")
        return maintype, subtype

    def field(self, name: str) -> str | None:
        value = self.fields.get(name)
        if value is None:
            return None
        return _unfold(str(value))

    def params(self, header: str = "content-type") -> bytes:
        params = self.fields.get_params(header=header)
        if not params or len(params) <= 1:
            return b"NIL"
        items = []
        for name, value in params[1:]:
            if isinstance(value, tuple):
                value = collapse_rfc2231_value(value)
            items.append(string(name.upper()) + b" " + string(value))
        return b"(" + b" ".join(items) + b")"

    def find(self, numbers: list[int]) -> Part | None:
        """The part a section number names (RFC 9051 §6.4.5), from this message."""
        current: Part = self
        for depth, number in enumerate(numbers):
            if depth and current.message is not None:
                current = current.message
            if current.children:
                if number > len(current.children):
                    return None
                current = current.children[number - 1]
            elif number != 1:
                return None
        return current

    # -- ENVELOPE, BODY, BODYSTRUCTURE -----------------------------------------------------

    def envelope(self) -> bytes:
        def field(name):
            return string(self.field(name))

        items = [
            field("date"),
            field("subject"),
            addresses(self.field("from")),
            addresses(self.field("sender") if self.fields.get("sender") else self.field("from")),
            addresses(self.field("reply-to") if self.fields.get("reply-to") else self.field("from")),
            addresses(self.field("to")),
            addresses(self.field("cc")),
            addresses(self.field("bcc")),
            field("in-reply-to"),
            field("message-id"),
        ]
        return b"(" + b" ".join(items) + b")"

    def structure(self, *, extended: bool = True) -> bytes:
        maintype, subtype = self.content_type
        if self.children:
            inner = b"".join(child.structure(extended=extended) for child in self.children)
            out = inner + b" " + string(subtype.upper())
            if extended:
                out += b" " + self.params() + b" " + self._disposition() + b" " + self._language()
                out += b" " + string(self.field("content-location"))
            return b"(" + out + b")"
        if maintype == "multipart":
            # A multipart without parts (no boundary found): shown as an empty text part.
            maintype, subtype = "text", "plain"
        encoding = (self.field("content-transfer-encoding") or "7BIT").strip().upper()
        params = self.params()
        if params == b"NIL" and maintype == "text":
            params = b'("CHARSET" "us-ascii")'
        items = [
            string(maintype.upper()),
            string(subtype.upper()),
            params,
            string(self.field("content-id")),
            string(self.field("content-description")),
            string(encoding),
            b"%d" % len(self.body),
        ]
        if self.message is not None:
            items += [
                self.message.envelope(),
                self.message.structure(extended=extended),
                b"%d" % _lines(self.body),
            ]
        elif maintype == "text":
            items.append(b"%d" % _lines(self.body))
        if extended:
            items += [
                string(self.field("content-md5")),
                self._disposition(),
                self._language(),
                string(self.field("content-location")),
            ]
        return b"(" + b" ".join(items) + b")"

    def _disposition(self) -> bytes:
        value = self.fields.get("content-disposition")
        if value is None:
            return b"NIL"
        kind = str(value).split(";", 1)[0].strip()
        if not kind:
            return b"NIL"
        return b"(" + string(kind.upper()) + b" " + self.params("content-disposition") + b")"

    def _language(self) -> bytes:
        value = self.field("content-language")
        if value is None:
            return b"NIL"
        tags = [tag.strip() for tag in value.split(",") if tag.strip()]
        if not tags:
            return b"NIL"
        if len(tags) == 1:
            return string(tags[0])
        return b"(" + b" ".join(string(tag) for tag in tags) + b")"


def imap_summary(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(ENVELOPE, BODYSTRUCTURE, BODY) of a message."""
    part = Part(raw)
    return part.envelope(), part.structure(), part.structure(extended=False)


def without_nul(raw: bytes) -> bytes:
    """The message with each part whose content holds NUL octets re-encoded as base64: such
    content cannot be sent in a plain literal (RFC 3516 §4.2), and an APPEND of binary
    content (literal8) is stored so every client can read it."""
    if b"\0" not in raw:
        return raw
    for part in list(_leaves(Part(raw))):
        if b"\0" not in part.body:
            continue
        kept = b"".join(
            line for name, line in header_lines(part.header) if name != "content-transfer-encoding"
        )
        encoded = base64.encodebytes(part.body).replace(b"\n", b"\r\n")
        entity = kept + b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
        raw = raw.replace(part.header + part.body, entity, 1)
    return raw


def _leaves(part: Part):
    if part.children:
        for child in part.children:
            yield from _leaves(child)
    elif part.message is not None:
        yield from _leaves(part.message)
    else:
        yield part


def decode_transfer(part: Part) -> bytes:
    """The part's body with its Content-Transfer-Encoding undone (RFC 2045 §6). Raises
    ValueError for an encoding that is none of 7bit, 8bit, binary, base64,
    quoted-printable."""
    encoding = (part.field("content-transfer-encoding") or "7bit").strip().lower()
    if encoding in ("7bit", "8bit", "binary"):
        return part.body
    if encoding == "base64":
        data = re.sub(rb"[^A-Za-z0-9+/]", b"", part.body)
        return base64.b64decode(data[: len(data) // 4 * 4 + (len(data) % 4 > 1) * 4] + b"==")
    if encoding == "quoted-printable":
        return decode_quoted_printable(part.body)
    raise ValueError(encoding)


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7: trailing white space of each line dropped, "=" at a line's end joins it
    to the next, =XX is the octet XX; anything else stays as it is."""
    out = []
    for line in data.splitlines(keepends=True):
        body = line.rstrip(b"\r\n")
        ending = line[len(body) :]
        body = body.rstrip(b" \t")
        if body.endswith(b"="):
            body, ending = body[:-1], b""
        out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), body) + ending)
    return b"".join(out)


def _split(body: bytes, boundary: str) -> list[bytes]:
    """The parts between the boundary delimiters (RFC 2046 §5.1.1): the line break before a
    delimiter belongs to it; the preamble and the epilogue are no parts.

    A delimiter is "--" and the boundary at the start of a line (one the previous delimiter
    line did not end), then "--" for the closing one, white space, and the line's end (or the
    body's). Found with bytes.find: a regular expression that starts with a choice of line
    breaks cannot skip ahead and steps through every byte of a large body."""
    marker = b"--" + boundary.encode("utf-8", "surrogateescape")
    size = len(body)
    parts = []
    start = None  # where the current part begins
    taken = 0  # the end of the last delimiter line
    found = body.find(marker)
    while found >= 0:
        if found == 0:
            begin = 0
        elif body[found - 1] == 10 and found - 1 >= taken:  # "\n"
            begin = found - 2 if found - 2 >= taken and body[found - 2] == 13 else found - 1  # "\r"
        else:
            found = body.find(marker, found + 1)
            continue
        end = found + len(marker)
        closing = body.startswith(b"--", end)
        after = end + 2 if closing else end
        while after < size and body[after] in (32, 9):  # transport padding
            after += 1
        if body.startswith(b"\r\n", after):
            after += 2
        elif body.startswith(b"\n", after):
            after += 1
        elif after != size:
            found = body.find(marker, found + 1)
            continue
        if start is not None:
            parts.append(body[start:begin])
        if closing:
            return parts
        start = taken = after
        found = body.find(marker, after)
    if start is not None:
        parts.append(body[start:])
    return parts


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


# -- addresses (RFC 5322 §3.4) as ENVELOPE lists ---------------------------------------------

_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|[<>:;,@]|[^\s"(<>:;,@]+')


def addresses(value: str | None) -> bytes:
    """An address list as ENVELOPE shows it: ((name adl mailbox host) ...), groups as
    (NIL NIL group NIL) ... (NIL NIL NIL NIL); NIL when there is none."""
    if value is None or not value.strip():
        return b"NIL"
    out: list[bytes] = []
    for kind, name, adl, local, host in parse_addresses(value):
        if kind == "start":
            out.append(b"(NIL NIL " + string(name) + b" NIL)")
        elif kind == "end":
            out.append(b"(NIL NIL NIL NIL)")
        else:
            out.append(
                b"(" + string(name) + b" " + string(adl) + b" " + string(local) + b" " + string(host) + b")"
            )
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def parse_addresses(value: str) -> list[tuple[str, str | None, str | None, str | None, str | None]]:
    """(kind, name, source route, local part, host) of each entry: kind "addr", or "start" / "end" of a
    group (named by `name`)."""
    entries = []
    phrase: list[str] = []
    comment = None  # a comment after an address names it when no phrase does
    tokens = []
    for token in _TOKEN.findall(value):
        if token.startswith("("):
            comment = token[1:-1].strip() if token.endswith(")") else token[1:].strip()
            tokens.append(("(", comment))
        elif not token.isspace():
            tokens.append(token)
    tokens = _name_by_comments(tokens)
    in_group = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == ":" and not in_group:
            entries.append(("start", _phrase(phrase), None, None, None))
            phrase = []
            in_group = True
        elif token == ";" and in_group:
            if phrase:
                entries.append(_bare(phrase))
                phrase = []
            entries.append(("end", None, None, None, None))
            in_group = False
        elif token == "<":
            close = tokens.index(">", i) if ">" in tokens[i:] else len(tokens)
            route = tokens[i + 1 : close]
            adl = None
            if ":" in route:  # an obsolete source route (RFC 5322 §4.4)
                adl = "".join(route[: route.index(":")]) or None
                route = route[route.index(":") + 1 :]
            local, host = _addr_spec(route)
            entries.append(("addr", _phrase(phrase) or None, adl, local, host))
            phrase = []
            i = close
        elif token == ",":
            if phrase:
                entries.append(_bare(phrase))
                phrase = []
        else:
            phrase.append(token)
        i += 1
    if phrase:
        entries.append(_bare(phrase))
    if in_group:
        entries.append(("end", None, None, None, None))
    return entries


def _name_by_comments(tokens: list) -> list[str]:
    """Drop comments; an addr-spec without a phrase (user@host (Name)) takes the comment after
    it as its phrase."""
    out: list[str] = []
    start = 0  # where the current address began in out
    for index, token in enumerate(tokens):
        if isinstance(token, tuple):
            following = tokens[index + 1] if index + 1 < len(tokens) else ","
            segment = out[start:]
            if (
                following in (",", ";")
                and segment
                and "<" not in segment
                and "@" in segment
                and ":" not in segment
            ):
                out[start:start] = ["<"]
                out.insert(start, '"' + token[1].replace("\\", "\\\\").replace('"', '\\"') + '"')
                out.append(">")
            continue
        if token in (",", ":", ";"):
            out.append(token)
            start = len(out)
            continue
        out.append(token)
    return out


def _phrase(tokens: list[str]) -> str:
    words = [t[1:-1].replace('\\"', '"').replace("\\\\", "\\") if t.startswith('"') else t for t in tokens]
    return " ".join(words)


def _addr_spec(tokens: list[str]) -> tuple[str | None, str | None]:
    if "@" in tokens:
        at = len(tokens) - 1 - tokens[::-1].index("@")
        local = "".join(tokens[:at])
        host = "".join(tokens[at + 1 :])
        return local, host or None
    return "".join(tokens) or None, None


def _bare(tokens: list[str]) -> tuple:
    local, host = _addr_spec(tokens)
    return ("addr", None, None, local, host)
