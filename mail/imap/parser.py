"""Reading the arguments of one IMAP command (RFC 9051 §9 grammar).

The connection hands over a complete command: its line with every literal in place, as it
came (`{n}` or `{n+}`, CRLF, then n bytes). A Parser walks it once, token by token; the
command handlers ask for what their syntax says comes next. Any mismatch raises Bad, which
the connection answers with a tagged BAD.
"""

from __future__ import annotations

import bisect
import re

from mail.imap.responses import BadName, decode_mutf7

_ATOM = re.compile(rb'[^(){ %*"\\\]\x00-\x20\x7f]+')
_ASTRING_ATOM = re.compile(rb'[^(){ %*"\\\x00-\x20\x7f]+')  # "]" allowed (RFC 9051 ASTRING-CHAR)
_LIST_MAILBOX = re.compile(rb'[^(){ "\\\x00-\x20\x7f]+')  # "%" and "*" allowed
_NUMBER = re.compile(rb"[0-9]+")
_LITERAL = re.compile(rb"~?\{([0-9]+)(\+?)\}\r\n")
_SEQ_SET = re.compile(rb"[0-9:*,$]+")
_TAG = re.compile(rb"[^ \r\n(){%*\"\\+]+")


class Bad(Exception):
    """The command's syntax is wrong: str() says how, for a tagged BAD."""


class InvalidName(Exception):
    """A mailbox name that is not valid modified UTF-7 (RFC 3501 §5.1.3): no such mailbox can
    exist, the command is answered NO."""


class Parser:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)

    # -- primitives ------------------------------------------------------------------------

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self, length: int = 1) -> bytes:
        return self.data[self.pos : self.pos + length]

    def skip(self, token: bytes) -> bool:
        """Consume `token` (case-insensitive) when it comes next."""
        if self.data[self.pos : self.pos + len(token)].upper() == token.upper():
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes) -> None:
        if not self.skip(token):
            raise Bad(f"expected {token.decode()!r}")

    def sp(self) -> None:
        self.expect(b" ")

    def finish(self) -> None:
        if self.pos != self.end:
            raise Bad("unexpected arguments")

    def _match(self, pattern: re.Pattern) -> bytes | None:
        found = pattern.match(self.data, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def atom(self) -> bytes:
        value = self._match(_ATOM)
        if value is None:
            raise Bad("expected an atom")
        return value

    def keyword(self) -> str:
        return self.atom().decode("ascii", "replace").upper()

    def number(self, *, nonzero: bool = False) -> int:
        value = self._match(_NUMBER)
        if value is None or len(value) > 20:
            raise Bad("expected a number")
        number = int(value)
        if nonzero and number == 0:
            raise Bad("expected a non-zero number")
        return number

    def literal(self) -> bytes | None:
        found = _LITERAL.match(self.data, self.pos)
        if found is None:
            return None
        start = found.end()
        stop = start + int(found.group(1))
        if stop > self.end:
            raise Bad("literal cut short")
        self.pos = stop
        return self.data[start:stop]

    def quoted(self) -> bytes | None:
        if self.peek() != b'"':
            return None
        out = bytearray()
        i = self.pos + 1
        data = self.data
        while i < self.end:
            byte = data[i]
            if byte == 0x22:
                self.pos = i + 1
                return bytes(out)
            if byte == 0x5C:
                i += 1
                if i >= self.end or data[i] not in (0x22, 0x5C):
                    raise Bad("bad quoted string")
                byte = data[i]
            elif byte in (0x0D, 0x0A):
                break
            out.append(byte)
            i += 1
        raise Bad("unterminated quoted string")

    def string(self) -> bytes:
        value = self.quoted()
        if value is None:
            value = self.literal()
        if value is None:
            raise Bad("expected a string")
        return value

    def astring(self) -> bytes:
        value = self.quoted()
        if value is None:
            value = self.literal()
        if value is None:
            value = self._match(_ASTRING_ATOM)
        if value is None:
            raise Bad("expected a string")
        return value

    def nstring(self) -> bytes | None:
        if self.skip(b"NIL"):
            return None
        return self.string()

    def text(self, value: bytes) -> str:
        return value.decode("utf-8", "surrogateescape")

    def mailbox(self) -> str:
        """A mailbox name: INBOX in any case is INBOX (RFC 9051 §5.1)."""
        return decode_name(self.astring())

    def list_mailbox(self) -> str:
        value = self.quoted()
        if value is None:
            value = self.literal()
        if value is None:
            value = self._match(_LIST_MAILBOX)
        if value is None:
            raise Bad("expected a mailbox pattern")
        try:
            return decode_name(value)
        except InvalidName:
            return "\0"  # no mailbox has such a name: the pattern matches none

    def paren_list(self, item) -> list:
        """ "(" item *(SP item) ")", possibly empty."""
        self.expect(b"(")
        items = []
        if self.skip(b")"):
            return items
        while True:
            items.append(item())
            if self.skip(b")"):
                return items
            self.sp()

    def flag(self) -> str:
        if self.skip(b"\\"):
            name = "\\" + self.atom().decode("ascii", "replace")
            return "\\" + name[1:].capitalize() if name.lower() in _SYSTEM_FLAGS_LOWER else name
        return self.atom().decode("ascii", "replace")

    def flags(self) -> list[str]:
        """A flag list, or one flag without parentheses (STORE allows it)."""
        if self.peek() == b"(":
            return self.paren_list(self.flag)
        flags = [self.flag()]
        while self.peek() == b" " and self.peek(2) != b" (":
            self.sp()
            flags.append(self.flag())
        return flags

    def sequence_set(self) -> SequenceSet:
        value = self._match(_SEQ_SET)
        if value is None:
            raise Bad("expected a sequence set")
        return SequenceSet.parse(value)

    def date(self) -> str:
        """date (RFC 9051 §9): d-MMM-yyyy, quoted or not."""
        value = self.quoted()
        if value is None:
            value = self.atom()
        return value.decode("ascii", "replace")


_SYSTEM_FLAGS_LOWER = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft", "\\recent"}


def decode_name(raw: bytes) -> str:
    """A mailbox name or pattern as sent (modified UTF-7), INBOX in any case as INBOX.
    Raises InvalidName."""
    try:
        name = decode_mutf7(raw)
    except BadName:
        raise InvalidName(raw) from None
    if name.upper() == "INBOX" or name.upper().startswith("INBOX/"):
        name = "INBOX" + name[5:]
    return name


class SequenceSet:
    """A set of message numbers or UIDs (RFC 9051 §9 sequence-set); "*" is the largest in use,
    "$" the saved search result (RFC 5182)."""

    __slots__ = ("ranges", "saved")

    def __init__(self, ranges: list[tuple[int | None, int | None]], saved: bool = False) -> None:
        self.ranges = ranges  # None stands for "*"
        self.saved = saved

    @classmethod
    def parse(cls, value: bytes) -> SequenceSet:
        if value == b"$":
            return cls([], saved=True)
        ranges = []
        for part in value.split(b","):
            bounds = part.split(b":")
            if len(bounds) > 2 or not all(bounds):
                raise Bad("bad sequence set")
            try:
                numbers = [None if b == b"*" else int(b) for b in bounds]
            except ValueError:
                raise Bad("bad sequence set") from None
            if any(n == 0 for n in numbers):
                raise Bad("bad sequence set")
            ranges.append((numbers[0], numbers[-1]))
        return cls(ranges)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """(low, high) ranges with "*" as `largest`."""
        out = []
        for low, high in self.ranges:
            low = largest if low is None else low
            high = largest if high is None else high
            if low > high:
                low, high = high, low
            out.append((low, high))
        return out

    def select(self, values: list[int], largest: int) -> list[int]:
        """The members of sorted `values` in the set."""
        chosen: set[int] = set()
        for low, high in self.resolve(largest):
            start = bisect.bisect_left(values, low)
            stop = bisect.bisect_right(values, high)
            chosen.update(values[start:stop])
        return sorted(chosen)

    def contains(self, value: int, largest: int) -> bool:
        return any(low <= value <= high for low, high in self.resolve(largest))


def tag_of(line: bytes) -> bytes | None:
    found = _TAG.match(line)
    return found.group() if found else None
