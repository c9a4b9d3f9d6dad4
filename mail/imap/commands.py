"""IMAP commands Everlock adds to pymap's: NAMESPACE (RFC 2342), the read side of ACL
(RFC 4314: MYRIGHTS, GETACL, LISTRIGHTS; SETACL and DELETEACL answer that grants are made on
the console), QUOTA (RFC 9208: GETQUOTA, GETQUOTAROOT; SETQUOTA likewise) and UNSELECT
(RFC 3691). Each is a pymap Command registered in the parser and a `do_<name>` method of the
connection state, pymap's seams for new commands.
"""

from __future__ import annotations

import re

from pymap.imap.state import ConnectionState
from pymap.parsing import EndLine, Params, Space
from pymap.parsing.command import CommandAny, CommandAuth, CommandNoArgs, CommandSelect
from pymap.parsing.command.auth import ListCommand
from pymap.parsing.commands import Commands, InvalidCommand
from pymap.parsing.exceptions import NotParseable
from pymap.parsing.modutf7 import modutf7_decode
from pymap.parsing.primitives import Number
from pymap.parsing.response import ResponseBad, ResponseNo, ResponseOk, UntaggedResponse
from pymap.parsing.response.code import ResponseCode
from pymap.parsing.response.specials import ListResponse, StatusResponse
from pymap.parsing.specials import AString, Mailbox, StatusAttribute

from mail.imap import store
from mail.imap.session import MailboxSet
from mail.imap.threads import run

CAPABILITIES = (
    b"LIST-EXTENDED",
    b"LIST-STATUS",
    b"NAMESPACE",
    b"ACL",
    b"RIGHTS=kxte",
    b"QUOTA",
    b"QUOTA=RES-STORAGE",
    b"SPECIAL-USE",
    b"UNSELECT",
)

_SPECIAL_USE_ATTRIBUTES = {use.encode()[1:] for use in store.SPECIAL_USE.values()}

# RFC 4314 rights of the two grant roles. Neither has "a": grants change on the console only.
WRITER_RIGHTS = "lrswipkxte"
READER_RIGHTS = "lr"
_NO_ACL_CHANGES = b"Access is granted on the Everlock console (/users grant)."
_NO_QUOTA_CHANGES = b"Quotas are set on the Everlock console (/mail mailboxes set ADDRESS quota=...)."


class _MailboxArgCommand(CommandAuth):
    def __init__(self, tag: bytes, mailbox: Mailbox, rest: tuple[bytes, ...] = ()) -> None:
        super().__init__(tag)
        self.mailbox = str(mailbox)
        self.rest = rest

    extra_args = 0

    @classmethod
    def parse(cls, buf: memoryview, params: Params):
        _, buf = Space.parse(buf, params)
        mailbox, buf = Mailbox.parse(buf, params)
        rest = []
        for _ in range(cls.extra_args):
            _, buf = Space.parse(buf, params)
            value, buf = AString.parse(buf, params)
            rest.append(value.value)
        _, buf = EndLine.parse(buf, params)
        return cls(params.tag, mailbox, tuple(rest)), buf


class _AStringArgsCommand(CommandAuth):
    args = 1

    def __init__(self, tag: bytes, values: tuple[bytes, ...]) -> None:
        super().__init__(tag)
        self.values = values

    @classmethod
    def parse(cls, buf: memoryview, params: Params):
        values = []
        for _ in range(cls.args):
            _, buf = Space.parse(buf, params)
            value, buf = AString.parse(buf, params)
            values.append(value.value)
        _, buf = EndLine.parse(buf, params)
        return cls(params.tag, tuple(values)), buf


class NamespaceCommand(CommandNoArgs, CommandAuth):
    command = b"NAMESPACE"


class MyRightsCommand(_MailboxArgCommand):
    command = b"MYRIGHTS"


class GetAclCommand(_MailboxArgCommand):
    command = b"GETACL"


class ListRightsCommand(_MailboxArgCommand):
    command = b"LISTRIGHTS"
    extra_args = 1


class SetAclCommand(_MailboxArgCommand):
    command = b"SETACL"
    extra_args = 2


class DeleteAclCommand(_MailboxArgCommand):
    command = b"DELETEACL"
    extra_args = 1


class GetQuotaRootCommand(_MailboxArgCommand):
    command = b"GETQUOTAROOT"


class GetQuotaCommand(_AStringArgsCommand):
    command = b"GETQUOTA"


class SetQuotaCommand(CommandAuth):
    command = b"SETQUOTA"

    @classmethod
    def parse(cls, buf: memoryview, params: Params):
        # Whatever the limits asked: quotas are not set over IMAP.
        end = bytes(buf).find(b"\n")
        return cls(params.tag), buf[end + 1 :] if end >= 0 else buf[len(buf) :]


class UnselectCommand(CommandNoArgs, CommandSelect):
    command = b"UNSELECT"


# What the listener puts in place of a command line longer than EVERLOCK_IMAP_MAX_LINE.
TOO_LONG = b"XTOOLONG"


class LineTooLongCommand(CommandNoArgs, CommandAny):
    command = TOO_LONG


class ExtendedListCommand(ListCommand):
    """LIST with the RFC 5258 extensions: selection options (SUBSCRIBED, SPECIAL-USE, REMOTE),
    several patterns, return options (SUBSCRIBED, CHILDREN, SPECIAL-USE, and STATUS of RFC
    5819). A plain LIST parses as pymap's own."""

    _options = re.compile(rb"\(([A-Za-z0-9 -]*)\) ")
    _return = re.compile(rb" RETURN \((.*)\)\r?\n$", re.IGNORECASE | re.DOTALL)
    _status = re.compile(rb"STATUS \(([A-Za-z ]*)\)", re.IGNORECASE)
    _selections = frozenset({b"SUBSCRIBED", b"SPECIAL-USE", b"REMOTE", b"RECURSIVEMATCH"})
    _returns = frozenset({b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE"})
    _status_items = frozenset({b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"})

    def __init__(self, tag: bytes, ref_name: str, patterns: list[str], **options) -> None:
        super().__init__(tag, ref_name, patterns[0])
        self.patterns = patterns
        self.extended = options.pop("extended", False)
        self.select: frozenset[bytes] = options.pop("select", frozenset())
        self.returns: frozenset[bytes] = options.pop("returns", frozenset())
        self.status: tuple[bytes, ...] = options.pop("status", ())

    @classmethod
    def parse(cls, buf: memoryview, params: Params):
        raw = bytes(buf)
        select = returns = frozenset()
        status: tuple[bytes, ...] = ()
        extended = False
        selection = cls._options.match(raw, 1) if raw[:2] == b" (" else None
        if selection:
            extended = True
            select = frozenset(selection.group(1).upper().split())
            # RFC 5258 §3.1: RECURSIVEMATCH only modifies another option, and not REMOTE alone.
            if not select <= cls._selections or (
                b"RECURSIVEMATCH" in select and not select & {b"SUBSCRIBED", b"SPECIAL-USE"}
            ):
                raise NotParseable(buf)
            raw = b" " + raw[selection.end() :]
        tail = cls._return.search(raw)
        if tail:
            extended = True
            text = tail.group(1)
            found = cls._status.search(text)
            if found:
                status = tuple(found.group(1).upper().split())
                if not set(status) <= cls._status_items or not status:
                    raise NotParseable(buf)
                text = text[: found.start()] + text[found.end() :]
            returns = frozenset(text.upper().split())
            if not returns <= cls._returns:
                raise NotParseable(buf)
            raw = raw[: tail.start()] + b"\r\n"
        patterns_list = re.match(rb" (\S+|\"[^\"]*\") \((.*)\)\r?\n$", raw)
        if patterns_list:
            # Several patterns: LIST "" ("INBOX" "Drafts")
            extended = True
            names = [part.strip(b'"') for part in re.findall(rb'"[^"]*"|[^ ()]+', patterns_list.group(2))]
            if not names:
                raise NotParseable(buf)
            plain, _ = ListCommand.parse(memoryview(b" " + patterns_list.group(1) + b" x\r\n"), params)
            patterns = [modutf7_decode(name) for name in names]
            ref_name = plain.ref_name
        else:
            plain, _ = ListCommand.parse(memoryview(raw), params)
            patterns, ref_name = [plain.filter], plain.ref_name
        return (
            cls(
                params.tag,
                ref_name,
                patterns,
                extended=extended,
                select=select,
                returns=returns,
                status=status,
            ),
            buf[len(buf) :],
        )


class ChildInfoListResponse(ListResponse):
    """A LIST line of a parent listed for its subscribed children (RFC 5258 §3.5 CHILDINFO)."""

    @property
    def text(self) -> bytes:
        return super().text + b' (CHILDINFO ("SUBSCRIBED"))'


EXTRA_COMMANDS = (
    ExtendedListCommand,
    NamespaceCommand,
    MyRightsCommand,
    GetAclCommand,
    ListRightsCommand,
    SetAclCommand,
    DeleteAclCommand,
    GetQuotaRootCommand,
    GetQuotaCommand,
    SetQuotaCommand,
    UnselectCommand,
    LineTooLongCommand,
)


# Commands with mailbox names among their arguments (RFC 9051, 2342, 4314, 9208).
_MAILBOX_COMMANDS = frozenset(
    b"SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS APPEND COPY MOVE "
    b"GETACL MYRIGHTS LISTRIGHTS SETACL DELETEACL GETQUOTAROOT".split()
)
# A "&" that does not start a complete modified-UTF-7 shift sequence ("&...-", RFC 3501 §5.1.3).
_UNCLOSED_SHIFT = re.compile(rb"&(?![A-Za-z0-9+,]*-)")
_LITERAL_MAILBOX = re.compile(rb"^\S+ APPEND \{(\d+)\+?\}\r?\n", re.IGNORECASE)


def _bad_mailbox_name(buf: bytes) -> bytes | None:
    """The command name when a mailbox command carries a name pymap's decoder cannot take (it
    loops for ever on an unclosed shift sequence, so such a line must never reach it)."""
    words = buf.split(None, 3)
    name = words[1].upper() if len(words) > 1 else b""
    command = name
    if name == b"UID" and len(words) > 2:
        name = words[2].upper()
        command = b"UID " + name
    if name not in _MAILBOX_COMMANDS:
        return None
    if name == b"APPEND":
        # Only the mailbox: the message literal that follows may hold anything.
        literal = _LITERAL_MAILBOX.match(buf)
        if literal:
            start = literal.end()
            buf = buf[start : start + int(literal.group(1))]
        else:
            buf = buf.split(b"\n", 1)[0]
    return command if _UNCLOSED_SHIFT.search(buf) else None


class EverlockCommands(Commands):
    """pymap's command parser, answering BAD for a mailbox name that is not valid modified
    UTF-7 (RFC 3501 §5.1.3) instead of failing the connection or, for an unclosed shift
    sequence, looping for ever."""

    def parse(self, buf: memoryview, params: Params):
        command = _bad_mailbox_name(bytes(buf))
        if command is None:
            try:
                return super().parse(buf, params)
            except UnicodeError:
                command = bytes(buf).split(None, 2)[1].upper()
        tag = bytes(buf).split(None, 1)[0]
        return InvalidCommand(params.copy(tag=tag), None, command, self.commands.get(command)), buf[0:0]


def commands() -> Commands:
    """pymap's commands and Everlock's."""
    registry = EverlockCommands()
    for command in EXTRA_COMMANDS:
        registry.register(command)
    return registry


def _quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _data(text: bytes) -> UntaggedResponse:
    return UntaggedResponse(text)


class EverlockConnectionState(ConnectionState):
    """pymap's connection state with Everlock's extra commands."""

    @property
    def _mailboxes(self) -> MailboxSet:
        return self.session.mailbox_set

    def _access(self, name: str) -> store.Access | None:
        try:
            access, _ = self._mailboxes.locate(name)
        except KeyError:
            return None
        return access

    async def do_namespace(self, cmd: NamespaceCommand):
        accesses = self._mailboxes.accesses
        personal = b'(("" "/"))' if accesses and not accesses[0].prefix else b"NIL"
        shared = (
            b'(("' + store.SHARED_PREFIX.encode() + b'/" "/"))' if any(a.prefix for a in accesses) else b"NIL"
        )
        response = ResponseOk(cmd.tag, b"NAMESPACE completed.")
        response.add_untagged(_data(b"NAMESPACE " + personal + b" NIL " + shared))
        return response, None

    async def _rights_of(self, cmd) -> tuple[store.Access, str] | None:
        access = self._access(cmd.mailbox)
        if access is None:
            return None
        return access, WRITER_RIGHTS if access.writable else READER_RIGHTS

    async def do_myrights(self, cmd: MyRightsCommand):
        found = await self._rights_of(cmd)
        if found is None:
            return ResponseNo(cmd.tag, b"No such mailbox.", ResponseCode.of(b"NONEXISTENT")), None
        _, rights = found
        response = ResponseOk(cmd.tag, b"MYRIGHTS completed.")
        response.add_untagged(_data(b"MYRIGHTS " + bytes(Mailbox(cmd.mailbox)) + b" " + rights.encode()))
        return response, None

    async def do_getacl(self, cmd: GetAclCommand):
        found = await self._rights_of(cmd)
        if found is None:
            return ResponseNo(cmd.tag, b"No such mailbox.", ResponseCode.of(b"NONEXISTENT")), None
        access, _ = found
        holders = await run(store.acl, access.mailbox_id)
        entries = b"".join(
            b" " + _quoted(name) + b" " + (WRITER_RIGHTS if writable else READER_RIGHTS).encode()
            for name, writable in holders
        )
        response = ResponseOk(cmd.tag, b"GETACL completed.")
        response.add_untagged(_data(b"ACL " + bytes(Mailbox(cmd.mailbox)) + entries))
        return response, None

    async def do_listrights(self, cmd: ListRightsCommand):
        if self._access(cmd.mailbox) is None:
            return ResponseNo(cmd.tag, b"No such mailbox.", ResponseCode.of(b"NONEXISTENT")), None
        identifier = cmd.rest[0].decode("utf-8", "replace")
        response = ResponseOk(cmd.tag, b"LISTRIGHTS completed.")
        # Rights come as the two roles give them: "lr" always together, the rest of the
        # writer's rights as one more group.
        response.add_untagged(
            _data(
                b"LISTRIGHTS "
                + bytes(Mailbox(cmd.mailbox))
                + b" "
                + _quoted(identifier)
                + b' "" '
                + READER_RIGHTS.encode()
                + b" "
                + WRITER_RIGHTS[len(READER_RIGHTS) :].encode()
            )
        )
        return response, None

    async def do_setacl(self, cmd: SetAclCommand):
        return ResponseNo(cmd.tag, _NO_ACL_CHANGES, ResponseCode.of(b"NOPERM")), None

    async def do_deleteacl(self, cmd: DeleteAclCommand):
        return ResponseNo(cmd.tag, _NO_ACL_CHANGES, ResponseCode.of(b"NOPERM")), None

    async def do_setquota(self, cmd: SetQuotaCommand):
        return ResponseNo(cmd.tag, _NO_QUOTA_CHANGES, ResponseCode.of(b"NOPERM")), None

    @staticmethod
    def _quota_line(root: str, usage: int, limit: int) -> UntaggedResponse:
        # RFC 9208 §5.1: STORAGE in units of 1024 octets.
        return _data(
            b"QUOTA " + _quoted(root) + b" (STORAGE %d %d)" % ((usage + 1023) // 1024, limit // 1024)
        )

    async def do_getquotaroot(self, cmd: GetQuotaRootCommand):
        access = self._access(cmd.mailbox)
        if access is None:
            return ResponseNo(cmd.tag, b"No such mailbox.", ResponseCode.of(b"NONEXISTENT")), None
        usage, limit = await run(store.mailbox_quota, access.mailbox_id)
        response = ResponseOk(cmd.tag, b"GETQUOTAROOT completed.")
        if limit is None:
            response.add_untagged(_data(b"QUOTAROOT " + bytes(Mailbox(cmd.mailbox))))
        else:
            response.add_untagged(
                _data(b"QUOTAROOT " + bytes(Mailbox(cmd.mailbox)) + b" " + _quoted(access.address))
            )
            response.add_untagged(self._quota_line(access.address, usage, limit))
        return response, None

    async def do_getquota(self, cmd: GetQuotaCommand):
        root = cmd.values[0].decode("utf-8", "replace")
        for access in self._mailboxes.accesses:
            if access.address.casefold() == root.casefold():
                usage, limit = await run(store.mailbox_quota, access.mailbox_id)
                if limit is None:
                    break
                response = ResponseOk(cmd.tag, b"GETQUOTA completed.")
                response.add_untagged(self._quota_line(access.address, usage, limit))
                return response, None
        return ResponseNo(cmd.tag, b"No such quota root.", ResponseCode.of(b"NONEXISTENT")), None

    async def do_xtoolong(self, cmd: LineTooLongCommand):
        return ResponseBad(cmd.tag, b"Command line too long.", ResponseCode.of(b"TOOBIG")), None

    async def do_list(self, cmd):
        if not getattr(cmd, "extended", False):
            return await super().do_list(cmd)
        subscribed_only = b"SUBSCRIBED" in cmd.select
        recursive = b"RECURSIVEMATCH" in cmd.select
        subscribed = {
            name for name, is_subscribed, _ in await self._mailboxes.folder_names() if is_subscribed
        }
        listed: dict[str, tuple[str | None, list[bytes]]] = {}
        updates = None
        for pattern in cmd.patterns:
            # With RECURSIVEMATCH every matching name counts: a parent is listed for the
            # subscribed children below it (CHILDINFO), subscribed or not itself.
            found, updates = await self.session.list_mailboxes(
                cmd.ref_name, pattern, subscribed=subscribed_only and not recursive, selected=self._selected
            )
            for name, delimiter, attributes in found:
                listed.setdefault(name, (delimiter, list(attributes)))
        response = ResponseOk(cmd.tag, b"LIST completed.")
        for name, (delimiter, attributes) in listed.items():
            # CHILDINFO tells of subscribed children the patterns did not match (RFC 5258 §3.5).
            child_info = recursive and any(
                other.startswith(name + store.DELIMITER) and other not in listed for other in subscribed
            )
            if subscribed_only and name not in subscribed and not child_info:
                continue
            if b"SPECIAL-USE" in cmd.select and not set(attributes) & _SPECIAL_USE_ATTRIBUTES:
                continue
            if (subscribed_only or b"SUBSCRIBED" in cmd.returns) and name in subscribed:
                attributes = [*attributes, b"Subscribed"]
            if child_info and name not in subscribed:
                response.add_untagged(ChildInfoListResponse(name, delimiter, attributes))
            else:
                response.add_untagged(ListResponse(name, delimiter, attributes))
            if cmd.status and b"Noselect" not in attributes and b"NonExistent" not in attributes:
                mailbox, _ = await self.session.get_mailbox(name)
                values = {
                    b"MESSAGES": mailbox.exists,
                    b"RECENT": mailbox.recent,
                    b"UIDNEXT": mailbox.next_uid,
                    b"UIDVALIDITY": mailbox.uid_validity,
                    b"UNSEEN": mailbox.unseen,
                }
                data = {StatusAttribute(item): Number(values[item]) for item in cmd.status}
                response.add_untagged(StatusResponse(name, data))
        return response, updates

    async def do_unselect(self, cmd: UnselectCommand):
        self._selected = None
        return ResponseOk(cmd.tag, b"UNSELECT completed."), None

    async def do_close(self, cmd):
        # RFC 9051 §6.4.1: CLOSE of a mailbox opened read-only expunges nothing and succeeds.
        if not self.selected.readonly:
            await self.session.expunge_mailbox(self.selected)
        self._selected = None
        return ResponseOk(cmd.tag, cmd.command + b" completed."), None
