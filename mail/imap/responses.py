"""IMAP response pieces as bytes: strings (RFC 9051 §4.3), mailbox names in modified UTF-7
(RFC 3501 §5.1.3), flag lists and sequence sets. Responses are joined from these and written
once per command."""

from __future__ import annotations

import base64
from collections.abc import Iterable

_QUOTABLE = bytes(range(0x20, 0x7F))
# The bytes an atom may hold (RFC 9051 ATOM-CHAR): printable ASCII but atom-specials.
_ATOM_CHARS = bytes(b for b in range(0x21, 0x7F) if b not in b'(){ %*"\\]')


def string(value: bytes | str | None) -> bytes:
    """An nstring: NIL, a quoted string, or a literal when quoting cannot carry it."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    # translate(None, allowed) leaves the bytes outside `allowed`: none, the value is quotable.
    if len(value) < 1024 and not value.translate(None, _QUOTABLE):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def astring(value: bytes | str) -> bytes:
    """An atom when the value is one, else a string."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if value and not value.translate(None, _ATOM_CHARS):
        return value
    return string(value)


def mailbox(name: str) -> bytes:
    """A mailbox name as sent: modified UTF-7, INBOX as INBOX."""
    return astring(encode_mutf7(name))


def encode_mutf7(name: str) -> bytes:
    """RFC 3501 §5.1.3: printable ASCII as itself ("&" as "&-"), the rest as "&" + modified
    BASE64 of UTF-16BE + "-"."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.extend(b"&-" if char == "&" else char.encode())
        else:
            pending.append(char)
    flush()
    return bytes(out)


class BadName(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def decode_mutf7(raw: bytes) -> str:
    """The name a client sent. Raises BadName for an unclosed or malformed "&" sequence and
    for bytes outside printable ASCII."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte != 0x26:  # "&"
            if not 0x20 <= byte <= 0x7E:
                raise BadName(raw)
            out.append(chr(byte))
            i += 1
            continue
        end = raw.find(b"-", i + 1)
        if end < 0:
            raise BadName(raw)
        chunk = raw[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            try:
                padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
                decoded = base64.b64decode(padded, validate=True)
                if len(decoded) % 2:
                    raise ValueError
                out.append(decoded.decode("utf-16-be"))
            except ValueError as exc:
                raise BadName(raw) from exc
        i = end + 1
    return "".join(out)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode() + b")"


def sequence_set(numbers: Iterable[int]) -> bytes:
    """Ascending numbers as a compact set: 1:3,7,9:10."""
    parts: list[bytes] = []
    start = prev = None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = n
    if start is not None:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)
