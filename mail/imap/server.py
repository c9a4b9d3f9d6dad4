"""One IMAP connection: reading commands with their literals, the session's state (RFC 9051
§3: not authenticated, authenticated, selected, logout), and the commands of any state
(CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE, ENABLE, ID, COMPRESS, IDLE).

The commands of the other states are in mail.imap.mailboxes (authenticated) and
mail.imap.selected (selected). A handler reads its arguments with a Parser, appends untagged
responses to `conn.out` and returns the tagged answer's text; it raises Bad (a tagged BAD) or
No (a tagged NO with a response code). Everything a command answers is written at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable

from django.conf import settings

from accounts.authentication import Throttled, authenticate
from everlock_site import metrics
from mail.imap import store
from mail.imap.folders import Selected
from mail.imap.parser import Bad, InvalidName, Parser, tag_of
from mail.imap.session import MailboxSet
from mail.imap.threads import ServerTrouble, run

log = logging.getLogger("mail.imap")

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "notauth", "auth", "selected", "logout"
ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
AUTH = frozenset({AUTHENTICATED, SELECTED})
SEL = frozenset({SELECTED})

# What a logged-in session is offered (RFC 9051 §7.2.2).
CAPABILITIES = (
    b"IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN "
    b"MULTIAPPEND BINARY SPECIAL-USE LIST-EXTENDED LIST-STATUS STATUS=SIZE CONDSTORE QRESYNC "
    b"ESEARCH SEARCHRES SORT SORT=DISPLAY ESORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT QUOTA "
    b"QUOTA=RES-STORAGE ACL RIGHTS=kxte COMPRESS=DEFLATE CATENATE"
)
_PRE_LOGIN = b"IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE"

_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,20})(\+?)\}\r?\n\Z")


class No(Exception):
    """A tagged NO: `code` is the response code (RFC 5530) or empty."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class LineTooLong(Exception):
    pass


Handler = Callable[["Connection", bytes, Parser], Awaitable[bytes]]
# name -> (handler, states it is allowed in)
COMMANDS: dict[str, tuple[Handler, frozenset[str]]] = {}


def command(name: str, states: frozenset[str]):
    def register(func: Handler) -> Handler:
        COMMANDS[name] = (func, states)
        return func

    return register


# Logged-in sessions of this process, by user id.
_sessions: dict[int, int] = {}


class Connection:
    """The state of one client connection. Kept small: a server holds thousands in IDLE."""

    __slots__ = (
        "buf",
        "deflate",
        "enabled",
        "inflate",
        "last_activity",
        "listener",
        "login_name",
        "mailboxes",
        "max_line",
        "max_literal",
        "out",
        "peer",
        "reader",
        "saved",
        "selected",
        "state",
        "tls",
        "user_id",
        "writer",
    )

    def __init__(self, listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.listener = listener
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.out = bytearray()
        self.state = NOT_AUTHENTICATED
        self.tls = listener.implicit_tls is not None
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        self.user_id: int | None = None  # the logged-in user's
        self.login_name = ""
        self.mailboxes: MailboxSet | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.saved: list[int] = []  # the saved search result (RFC 5182), as UIDs
        self.inflate = None
        self.deflate = None
        self.last_activity = time.monotonic()
        self.max_line = settings.EVERLOCK_IMAP_MAX_LINE
        self.max_literal = listener.max_literal

    # -- reading ---------------------------------------------------------------------------

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            return False
        self.last_activity = time.monotonic()
        if self.inflate is not None:
            data = self.inflate.decompress(data)
        self.buf += data
        return True

    async def read_line(self) -> bytes | None:
        """A line with its line break; None at the end of input. Raises LineTooLong after
        reading a line longer than the limit to its end."""
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if 0 <= end <= self.max_line:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > self.max_line:
                head = bytes(self.buf[:64])
                if end >= 0:
                    del self.buf[: end + 1]
                    raise LineTooLong(head)
                self.buf.clear()
                while True:
                    if not await self._fill():
                        return None
                    end = self.buf.find(b"\n")
                    if end >= 0:
                        del self.buf[: end + 1]
                        raise LineTooLong(head)
                    self.buf.clear()
            start = len(self.buf)
            if not await self._fill():
                return None

    async def read_exactly(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            if not await self._fill():
                return None
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_command(self) -> bytes | None:
        """One command with its literals, line breaks made CRLF; None at the end of input
        (or a literal too large to read: the connection then ends, RFC 7888 §4)."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = await self.read_line()
            if line is None:
                return None
            if not line.endswith(b"\r\n"):
                line = line[:-1] + b"\r\n"
            parts.append(line)
            found = _LITERAL_AT_END.search(line)
            if found is None:
                return b"".join(parts)[:-2]
            size = int(found.group(1))
            total += size
            if total > self.max_literal:
                if found.group(2):
                    log.info("imap: %s sent a literal of %d bytes: disconnected", self.peer, size)
                    return None
                tag = tag_of(parts[0]) or b"*"
                self.out += tag + b" BAD [TOOBIG] Literal too large.\r\n"
                await self.flush()
                return b""
            if not found.group(2):
                self.out += b"+ Ready for literal data\r\n"
                await self.flush()
            data = await self.read_exactly(size)
            if data is None:
                return None
            parts.append(data)

    # -- writing ---------------------------------------------------------------------------

    async def flush(self) -> None:
        if not self.out:
            return
        data = bytes(self.out)
        self.out.clear()
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.writer.write(data)
        await self.writer.drain()

    # -- running ---------------------------------------------------------------------------

    def capabilities(self) -> bytes:
        if self.state != NOT_AUTHENTICATED:
            return CAPABILITIES + b" APPENDLIMIT=%d" % settings.EVERLOCK_SMTP_MAX_MESSAGE_SIZE
        caps = _PRE_LOGIN
        if not self.tls and self.listener.starttls is not None:
            caps += b" STARTTLS"
        caps += b" AUTH=PLAIN AUTH=LOGIN" if self.login_allowed() else b" LOGINDISABLED"
        return caps

    def login_allowed(self) -> bool:
        """Passwords travel encrypted, or over loopback (the submission policy)."""
        if self.tls:
            return True
        try:
            return ipaddress.ip_address(self.peer.split("%")[0]).is_loopback
        except ValueError:
            return False

    async def run(self) -> None:
        hostname = settings.EVERLOCK_HOSTNAME
        self.out += (
            b"* OK [CAPABILITY "
            + self.capabilities()
            + b"] "
            + hostname.encode()
            + b" Everlock IMAP ready\r\n"
        )
        await self.flush()
        try:
            while self.state != LOGOUT:
                try:
                    data = await self.read_command()
                except LineTooLong as exc:
                    tag = tag_of(exc.args[0]) or b"*"
                    self.out += tag + b" BAD [TOOBIG] Command line too long.\r\n"
                    await self.flush()
                    continue
                if data is None:
                    break
                if data:
                    await self.execute(data)
                await self.flush()
        finally:
            self.logout()

    def logout(self) -> None:
        self.selected = None
        if self.user_id is not None:
            metrics.IMAP_SESSIONS_CLOSED.inc()
            count = _sessions.get(self.user_id, 0) - 1
            if count > 0:
                _sessions[self.user_id] = count
            else:
                _sessions.pop(self.user_id, None)
            self.user_id = None

    async def execute(self, data: bytes) -> None:
        parser = Parser(data)
        tag = tag_of(data)
        if tag is None or not parser.skip(tag) or not parser.skip(b" "):
            self.out += b"* BAD Invalid tag.\r\n"
            return
        name_raw = parser._match(re.compile(rb"[A-Za-z.-]+"))
        name = (name_raw or b"").decode().upper()
        if name == "UID" and parser.skip(b" "):
            sub = parser._match(re.compile(rb"[A-Za-z]+"))
            name = "UID " + (sub or b"").decode().upper()
        entry = COMMANDS.get(name)
        shown = name.encode() or b"Command"
        if entry is None:
            self.out += tag + b" BAD " + (name_raw or b"Command") + b": Unknown command.\r\n"
            return
        handler, states = entry
        if self.state not in states:
            if self.state == NOT_AUTHENTICATED:
                reason = b"Log in first."
            elif states == SEL:
                reason = b"Must select a mailbox first."
            else:
                reason = b"Already logged in."
            self.out += tag + b" BAD " + shown + b": " + reason + b"\r\n"
            return
        try:
            answer = await handler(self, tag, parser)
        except Bad as exc:
            log.debug("imap: %s: %s", name, exc)
            self.out += tag + b" BAD " + shown + b": Invalid arguments.\r\n"
            return
        except No as exc:
            code = b"[" + exc.code.encode() + b"] " if exc.code else b""
            self.out += tag + b" NO " + code + str(exc).encode() + b"\r\n"
            return
        except store.FolderGone:
            self.out += tag + b" NO [NONEXISTENT] No such mailbox.\r\n"
            return
        except InvalidName:
            self.out += tag + b" NO [CANNOT] Invalid mailbox name.\r\n"
            return
        except store.StoreError as exc:
            self.out += tag + b" NO [" + exc.code.encode() + b"] " + str(exc).encode() + b"\r\n"
            return
        except ServerTrouble:
            self.out += tag + b" NO [UNAVAILABLE] Temporary server problem, try again later.\r\n"
            return
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("imap: %s from %s failed", name, self.peer)
            self.out += tag + b" NO [UNAVAILABLE] Temporary server problem, try again later.\r\n"
            return
        if answer is not None:  # None: the handler answered already (STARTTLS, COMPRESS)
            self.out += tag + b" " + answer + b"\r\n"

    async def sync(self, *, expunges: bool = True, uid_fetch: bool = False) -> None:
        """Tell the session what changed in its selected folder (untagged responses)."""
        selected = self.selected
        if selected is None:
            return
        state = selected.state
        try:
            await state.refresh()
        except store.FolderGone:
            # Deleted by another session: commands on it answer NO until another SELECT.
            selected.gone = True
            return
        if not selected.readonly and state.info is not None and state.info.uid_next > state.claimed_up_to:
            state.claimed_up_to = state.info.uid_next
            selected.recent.update(await run(store.claim_recent, state.folder_id))
        self.out += b"".join(
            selected.updates(expunges=expunges, condstore=self.condstore, uid_fetch=uid_fetch)
        )

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): with a mailbox selected, the first
        one tells its HIGHESTMODSEQ."""
        if "CONDSTORE" in self.enabled:
            return
        self.enabled.add("CONDSTORE")
        if self.selected is not None:
            self.out += b"* OK [HIGHESTMODSEQ %d] Highest.\r\n" % self.selected.state.modseq


# -- commands of any state ------------------------------------------------------------------


@command("CAPABILITY", ANY)
async def capability(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    conn.out += b"* CAPABILITY " + conn.capabilities() + b"\r\n"
    return b"OK CAPABILITY completed."


@command("NOOP", ANY)
async def noop(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    await conn.sync()
    return b"OK NOOP completed."


@command("CHECK", SEL)
async def check(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    await conn.sync()
    return b"OK CHECK completed."


@command("LOGOUT", ANY)
async def logout(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    conn.out += b"* BYE Logging out.\r\n"
    conn.state = LOGOUT
    return b"OK LOGOUT completed."


@command("ID", ANY)
async def id_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    # RFC 2971: the client's list (or NIL) is read and not kept.
    p.sp()
    if not p.skip(b"NIL"):
        p.paren_list(p.nstring)
    p.finish()
    conn.out += b'* ID ("name" "Everlock")\r\n'
    return b"OK ID completed."


@command("ENABLE", AUTH)
async def enable(conn: Connection, tag: bytes, p: Parser) -> bytes:
    names = []
    while p.skip(b" "):
        names.append(p.keyword())
    if not names:
        raise Bad("no capability")
    now = []
    for name in names:
        if name in ("CONDSTORE", "QRESYNC") and name not in conn.enabled:
            if name == "CONDSTORE":
                conn.enable_condstore()
            conn.enabled.add(name)
            now.append(name)
            if name == "QRESYNC":
                conn.enable_condstore()
    conn.out += b"* ENABLED" + b"".join(b" " + n.encode() for n in now) + b"\r\n"
    return b"OK ENABLE completed."


@command("STARTTLS", frozenset({NOT_AUTHENTICATED}))
async def starttls(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    if conn.tls or conn.listener.starttls is None:
        raise Bad("TLS is active")
    conn.out += tag + b" OK Begin TLS negotiation now.\r\n"
    await conn.flush()
    # RFC 9051 §6.2.1: what the client sent before the handshake is not kept.
    conn.buf.clear()
    await conn.writer.start_tls(conn.listener.starttls)
    conn.tls = True
    return None


@command("COMPRESS", AUTH)
async def compress(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    if p.keyword() != "DEFLATE":
        raise Bad("unknown mechanism")
    p.finish()
    if conn.deflate is not None:
        raise No("COMPRESSIONACTIVE", "DEFLATE active already.")
    conn.out += tag + b" OK DEFLATE active.\r\n"
    await conn.flush()
    # RFC 4978: raw DEFLATE both ways from here on.
    conn.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    conn.inflate = zlib.decompressobj(-15)
    if conn.buf:
        pending = bytes(conn.buf)
        conn.buf = bytearray(conn.inflate.decompress(pending))
    return None


# -- logging in -----------------------------------------------------------------------------


async def _log_in(conn: Connection, login: str, password: str) -> bytes:
    if not conn.login_allowed():
        raise No("PRIVACYREQUIRED", "Log in after STARTTLS.")
    try:
        user = await run(authenticate, login, password, client_address=conn.peer, service="imap")
    except Throttled:
        metrics.IMAP_LOGINS.labels("throttled").inc()
        raise No("UNAVAILABLE", "Too many failed logins, try again later.") from None
    if user is None:
        metrics.IMAP_LOGINS.labels("failed").inc()
        raise No("AUTHENTICATIONFAILED", "Invalid authentication credentials.")
    metrics.IMAP_LOGINS.labels("ok").inc()
    if _sessions.get(user.pk, 0) >= settings.EVERLOCK_IMAP_MAX_SESSIONS_PER_USER:
        log.warning("imap: session of %s refused: limit reached", user.username)
        raise No("LIMIT", "Too many sessions open for this user.")
    accesses = await run(_open_accesses, user)
    _sessions[user.pk] = _sessions.get(user.pk, 0) + 1
    metrics.IMAP_SESSIONS.inc()
    conn.user_id = user.pk
    conn.login_name = login
    conn.mailboxes = MailboxSet(accesses)
    conn.state = AUTHENTICATED
    return b"OK [CAPABILITY " + conn.capabilities() + b"] Logged in."


def _open_accesses(user) -> list[store.Access]:
    accesses = store.accesses(user)
    if accesses and not accesses[0].prefix:
        store.ensure_special_folders(accesses[0].mailbox_id)
    return accesses


@command("LOGIN", frozenset({NOT_AUTHENTICATED}))
async def login(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    user = p.astring()
    p.sp()
    password = p.astring()
    p.finish()
    return await _log_in(conn, p.text(user), p.text(password))


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Bad("not base64") from None


@command("AUTHENTICATE", frozenset({NOT_AUTHENTICATED}))
async def authenticate_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    mechanism = p.keyword()
    initial = None
    if p.skip(b" "):
        initial = p.atom()  # SASL-IR (RFC 4959): base64, or "=" for an empty one
    p.finish()
    if mechanism not in ("PLAIN", "LOGIN"):
        raise No("CANNOT", "Unsupported mechanism.")
    if not conn.login_allowed():
        raise No("PRIVACYREQUIRED", "Log in after STARTTLS.")

    async def ask(challenge: bytes) -> bytes:
        conn.out += b"+ " + challenge + b"\r\n"
        await conn.flush()
        line = await conn.read_line()
        if line is None:
            raise ConnectionError("closed during AUTHENTICATE")
        line = line.rstrip(b"\r\n")
        if line == b"*":
            raise Bad("cancelled")
        return _b64(line)

    if mechanism == "PLAIN":
        if initial is None:
            response = await ask(b"")
        else:
            response = b"" if initial == b"=" else _b64(initial)
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise Bad("bad PLAIN response")
        authzid, authcid, password = (part.decode("utf-8", "replace") for part in parts)
        if authzid and authzid != authcid:
            raise No("AUTHORIZATIONFAILED", "No acting as another user.")
    else:
        authcid = (_b64(initial) if initial not in (None, b"=") else await ask(b"VXNlcm5hbWU6")).decode(
            "utf-8", "replace"
        )
        password = (await ask(b"UGFzc3dvcmQ6")).decode("utf-8", "replace")
    return await _log_in(conn, authcid, password)


# -- IDLE (RFC 2177) ------------------------------------------------------------------------


@command("IDLE", AUTH)
async def idle(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    await conn.sync()
    conn.out += b"+ idling\r\n"
    await conn.flush()
    reading = asyncio.ensure_future(conn.read_line())
    try:
        while True:
            selected = conn.selected
            waiters = {reading}
            if selected is not None:
                waiters.add(selected.state.changed())
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                break
            await conn.sync()
            await conn.flush()
    finally:
        if not reading.done():
            reading.cancel()
    line = reading.result()
    if line is None:
        raise ConnectionError("closed during IDLE")
    if line.rstrip(b"\r\n").upper() != b"DONE":
        raise Bad("expected DONE")
    return b"OK IDLE terminated."
