"""The SMTP listeners: aiosmtpd protocol objects wired to Django services.

Each SMTP decision (a recipient, a sender, a login) is one call of a synchronous service in
a worker thread (`call_service`), unless the directory's memory already holds the answer
(mail.services.directory); the message itself goes to the group commit (`call_batched`),
in the commit thread of this process. The ORM never runs on the event loop.
SMTPReject from a service becomes its reply; any other failure is ours and answers 451 4.3.0
(logged, never shown to the client).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import ipaddress
import logging
import re
import ssl
import time
from base64 import b64decode
from collections import Counter, OrderedDict
from dataclasses import dataclass

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, TLSSetupException, syntax
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from everlock_site import metrics
from mail import replies
from mail.replies import Reply, SMTPReject
from mail.smtp.data import read_data
from mail.smtp.extensions import MailParams, RcptParams, take_mail_params, take_rcpt_params
from mail.smtp.group_commit import GroupCommitter, heal_connections
from tls.store import listener_store

log = logging.getLogger("mail.smtp")

# aiosmtpd counts each command per session; only AUTH gets a low budget (brute force), the
# rest stay effectively unlimited (RCPT is limited by max_recipients per message).
AUTH_ATTEMPTS_PER_SESSION = 3
_CALL_LIMITS = {"AUTH": AUTH_ATTEMPTS_PER_SESSION, "*": 1_000_000}

# The longest line of message data kept, not counting its CRLF: longer lines are refused
# with 500 5.5.6. RFC 5321 section 4.5.3.1.6 asks for 1,000 at least; mail with longer lines
# is common, and Postfix takes 2,048 before it folds. Lines are kept byte for byte.
MAX_LINE_LENGTH = 8192
# RFC 3030 section 2: BDAT chunks are read in pieces of this size, whatever their length.
_BDAT_PIECE = 64 * 1024
# The reverse-path or forward-path most commands carry (RFC 5321 section 4.1.2): "<>", or
# an ASCII dot-atom local part at a domain name, and no parameter left for aiosmtpd. Such a
# path is read here; any other (a quoted local part, a source route, an address literal,
# UTF-8, parameters) goes to aiosmtpd's parser, the email package's header parser, which
# costs some 60 microseconds a command (a class built per call and a token tree).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<((?:{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)?)>")


def plain_path(arg: str | None, keyword: str) -> str | None:
    """The address of `arg` ("FROM:<a@example.com>" for keyword "FROM:"; "<>" for the null
    path) when it is a plain path as aiosmtpd would read it, else None (aiosmtpd reads it)."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    path = _PLAIN_PATH.fullmatch(arg, len(keyword)) or _PLAIN_PATH.fullmatch(arg[len(keyword) :].strip())
    if path is None:
        return None
    return path[1] or "<>"


# aiosmtpd's idle timer fires this long after ours, should ours not have closed the session.
IDLE_BACKSTOP = 30.0
# How long a connection we closed may still take to send its last bytes to a client that
# does not read them, before the socket is aborted.
CLOSE_GRACE = 5.0
# Commands a client refused at connection may send before it is let go (Postfix: 20).
MAX_COMMANDS_REFUSED = 20


@dataclass(frozen=True)
class SMTPConfig:
    """What a listener needs from the settings, read once at start."""

    hostname: str
    tls_context: ssl.SSLContext | None
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_hops: int = 50
    idle_timeout: float = 300
    session_timeout: float = 1800
    max_connections_per_client: int = 20
    # Open connections per listener; more are answered 421 (see fitted_to_open_files).
    max_connections: int = 2000
    # When a listener is full, a connection silent this long gives its place to a new one
    # (as Postfix shortens its timeouts to 10 s under stress).
    evict_silent_after: float = 10.0
    plaintext_auth: bool = False
    # Loopback clients may use plain-text AUTH without TLS (the product doc's local test).
    trust_loopback: bool = True
    # Clients that may submit without AUTH for domains whose submission auth is "none".
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def trusts(self, host: str) -> bool:
        """Whether the client at `host` is in one of the trusted networks."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)

    @classmethod
    def from_settings(cls) -> SMTPConfig:
        return cls(
            hostname=settings.EVERLOCK_HOSTNAME,
            tls_context=listener_store().context,
            max_message_size=settings.EVERLOCK_SMTP_MAX_MESSAGE_SIZE,
            max_recipients=settings.EVERLOCK_SMTP_MAX_RECIPIENTS,
            max_hops=settings.EVERLOCK_SMTP_MAX_HOPS,
            idle_timeout=settings.EVERLOCK_SMTP_IDLE_TIMEOUT,
            session_timeout=settings.EVERLOCK_SMTP_SESSION_TIMEOUT,
            max_connections_per_client=settings.EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT,
            max_connections=settings.EVERLOCK_SMTP_MAX_CONNECTIONS,
            plaintext_auth=settings.EVERLOCK_SUBMISSION_PLAINTEXT_AUTH,
            trusted_networks=trusted_networks(settings.EVERLOCK_SUBMISSION_TRUSTED_NETWORKS),
        )


# File descriptors kept for everything but SMTP connections: database and broker
# connections, message files, the writer's pipes, the other listeners of the process.
RESERVED_OPEN_FILES = 256


def fitted_to_open_files(config: SMTPConfig, *, listeners: int, open_files: int) -> SMTPConfig:
    """`config` with max_connections lowered, when needed, so that `listeners` full listeners
    still leave RESERVED_OPEN_FILES of the process's `open_files`: a connection over the
    limit is answered 421 instead of accept() failing for want of a file descriptor."""
    fitting = max(1, (open_files - RESERVED_OPEN_FILES) // max(1, listeners))
    if config.max_connections <= fitting:
        return config
    log.warning(
        "SMTP: at most %d connections per listener (EVERLOCK_SMTP_MAX_CONNECTIONS is %d, "
        "the open file limit %d)",
        fitting,
        config.max_connections,
        open_files,
    )
    return dataclasses.replace(config, max_connections=fitting)


def trusted_networks(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """EVERLOCK_SUBMISSION_TRUSTED_NETWORKS parsed. Raises ImproperlyConfigured naming a bad one."""
    try:
        return tuple(ipaddress.ip_network(v.strip()) for v in values if v.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"EVERLOCK_SUBMISSION_TRUSTED_NETWORKS: {exc}") from None


def _run_service(func, kwargs):
    heal_connections()
    return func(**kwargs)


async def call_service(func, /, **kwargs):
    """Run the sync service `func` in a worker thread.

    Returns (True, result) or (False, reply line): the SMTPReject's reply, or 451 4.3.0 for
    any other exception (logged with its traceback).
    """
    loop = asyncio.get_running_loop()
    try:
        # The loop's executor directly: asgiref's sync_to_async costs several times more
        # per call, and these calls are short and many (several per message).
        return True, await loop.run_in_executor(None, _run_service, func, kwargs)
    except SMTPReject as exc:
        return False, exc.reply
    except Exception:
        log.exception("SMTP: %s failed", getattr(func, "__name__", func))
        return False, replies.LOCAL_ERROR


async def call_batched(committer: GroupCommitter, func, /, **kwargs):
    """call_service for a message delivery, run in the group commit (mail.smtp.group_commit)."""
    try:
        return True, await committer.call(func, **kwargs)
    except SMTPReject as exc:
        return False, exc.reply
    except Exception:
        log.exception("SMTP: %s failed", getattr(func, "__name__", func))
        return False, replies.LOCAL_ERROR


class ConnectionCounter:
    """Open connections per client address, shared by the listeners of one process."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def acquire(self, host: str, limit: int) -> bool:
        if self.counts[host] >= limit:
            return False
        self.counts[host] += 1
        return True

    def release(self, host: str) -> None:
        self.counts[host] -= 1
        if self.counts[host] <= 0:
            del self.counts[host]


class _Refusal(asyncio.Protocol):
    """A connection over the listener's total: `421` and closed (RFC 5321 section 3.8),
    without an SMTP session (and its buffers and timers) ever being set up."""

    def __init__(self, reply: Reply):
        self.reply = reply

    def connection_made(self, transport) -> None:
        transport.write(wire(self.reply) + b"\r\n")
        transport.close()


class SMTPProtocolFactory:
    """The protocol factory of one listener (loop.create_server): an EverlockSMTP per
    connection while fewer than `config.max_connections` are open. When the listener is
    full, the connection that has been silent longest makes room if it has been silent for
    `config.evict_silent_after` seconds (it is told 421 4.4.2, RFC 5321 section 4.5.3.2); otherwise
    the new one gets a _Refusal. So idle connections cannot keep out clients that talk."""

    def __init__(
        self,
        handler,
        *,
        config: SMTPConfig,
        counter: ConnectionCounter,
        offers_auth: bool,
        implicit_tls: bool = False,
    ):
        self.handler = handler
        self.config = config
        self.counter = counter
        self.offers_auth = offers_auth
        self.implicit_tls = implicit_tls
        # The open connections, the one that received something longest ago first.
        self.connections: OrderedDict[EverlockSMTP, None] = OrderedDict()
        self.listener = listener_name(offers_auth=offers_auth, implicit_tls=implicit_tls)
        self._refused_logged_at = float("-inf")
        self._refused = 0

    @property
    def open(self) -> int:
        return len(self.connections)

    def __call__(self) -> asyncio.Protocol:
        if len(self.connections) >= self.config.max_connections and not self._evict_silent():
            self._log_refusal()
            metrics.SMTP_REFUSED.labels(self.listener, "CONNECT", "server_busy").inc()
            return _Refusal(replies.SERVER_BUSY)
        protocol = EverlockSMTP(
            self.handler,
            config=self.config,
            counter=self.counter,
            offers_auth=self.offers_auth,
            factory=self,
            implicit_tls=self.implicit_tls,
        )
        self.connections[protocol] = None
        return protocol

    def heard(self, protocol: EverlockSMTP) -> None:
        """`protocol` received or sent something just now."""
        self.connections.move_to_end(protocol)

    def closed(self, protocol: EverlockSMTP) -> None:
        """`protocol` gave up its place."""
        self.connections.pop(protocol, None)

    def _evict_silent(self) -> bool:
        oldest = next(iter(self.connections))
        if oldest.loop.time() - oldest.heard_at < self.config.evict_silent_after:
            return False
        oldest.evict()
        return True

    def _log_refusal(self) -> None:
        # At most one line a second, however fast connections are refused.
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 1.0:
            log.warning(
                "SMTP: %d connection(s) refused, %d open (EVERLOCK_SMTP_MAX_CONNECTIONS)",
                self._refused,
                self.open,
            )
            self._refused = 0
            self._refused_logged_at = now


def peer_host(peer) -> str:
    return peer[0] if isinstance(peer, tuple) and peer else str(peer or "")


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# aiosmtpd's own texts for limits it enforces, replaced by the standard replies
# (RFC 5321 section 4.5.3.1, RFC 1870 section 6 for SIZE, RFC 3463 codes).
_REWRITES = {
    "552 Error: Too much mail data": replies.MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": replies.MESSAGE_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": replies.LINE_TOO_LONG,
    "500 Command line too long": replies.COMMAND_TOO_LONG,
    # RFC 2034 section 3: with ENHANCEDSTATUSCODES every reply but the greeting and EHLO's
    # carries one; aiosmtpd's own texts get theirs here.
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "252 Cannot VRFY user, but will accept message and attempt delivery": (
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
    ),
    "500 Error: bad syntax": "500 5.5.2 Syntax error",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "503 Error: send HELO first": "503 5.5.1 Send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Send EHLO first",
    "501 Syntax: DATA": "501 5.5.4 Syntax: DATA",
    "501 Syntax: RSET": "501 5.5.4 Syntax: RSET",
    "501 Syntax: QUIT": "501 5.5.4 Syntax: QUIT",
    "501 Syntax: STARTTLS": "501 5.5.4 Syntax: STARTTLS",
    "501 Syntax: EHLO hostname": "501 5.5.4 Syntax: EHLO hostname",
    "501 Syntax: HELO hostname": "501 5.5.4 Syntax: HELO hostname",
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": "501 5.5.4 Syntax: MAIL FROM:<address>",
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": "501 5.5.4 Syntax: RCPT TO:<address>",
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 SMTPUTF8 takes no arguments",
    "555 MAIL FROM parameters not recognized or not implemented": (
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    ),
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": "501 5.5.4 BODY must be 7BIT, 8BITMIME, BINARYMIME",
    "554 Command refused due to lack of security": "554 5.7.0 Command refused due to lack of security",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Nested MAIL command",
}


def wire(reply: Reply | str) -> bytes:
    """The one place a reply becomes its wire line (without CRLF): our Reply values, and
    aiosmtpd's own texts, some rewritten to the standard replies (_REWRITES)."""
    if isinstance(reply, str):
        reply = _REWRITES.get(reply, reply)
        if isinstance(reply, str) and reply.startswith("500 Error: command "):
            reply = "500 5.5.2 Command " + reply[19:].replace(" not recognized", " unrecognized")
    return str(reply).encode("utf-8")


def listener_name(*, offers_auth: bool, implicit_tls: bool) -> str:
    """The listener label of the metrics: inbound, submission or submissions."""
    return "submissions" if implicit_tls else "submission" if offers_auth else "inbound"


# The reason label of a refusal: the name of one of our replies, by its wire line.
_REASONS = {wire(value): name.lower() for name, value in vars(replies).items() if isinstance(value, Reply)}
_ENHANCED = re.compile(rb"^[45]\d\d ([45]\.\d{1,3}\.\d{1,3}) ")
_ACCEPTED = wire(replies.ACCEPTED)


def refusal_reason(line: bytes) -> str:
    """The reason label for a 4xx or 5xx wire line: the reply's name in mail.replies
    ("relay_denied"), else its enhanced status code ("5.5.4"), else its code ("554")."""
    reason = _REASONS.get(line)
    if reason is not None:
        return reason
    enhanced = _ENHANCED.match(line)
    return (enhanced[1] if enhanced else line[:3]).decode("ascii", "replace")


@functools.cache
def seam_names(cls: type, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """The attributes of `cls` whose names start with one of `prefixes`, found once."""
    return tuple(name for name in dir(cls) if name.startswith(prefixes))


class EverlockSMTP(SMTP):
    """aiosmtpd's protocol with our session rules: connection and session limits, one
    STARTTLS (or TLS from the first byte, RFC 8314), AUTH PLAIN/LOGIN checked in a worker
    thread, our reply texts, and the extensions aiosmtpd lacks: BDAT (RFC 3030) and the
    MAIL/RCPT parameters of mail.smtp.extensions (DSN, REQUIRETLS, BODY=BINARYMIME)."""

    line_length_limit = MAX_LINE_LENGTH + 2

    def __dir__(self):
        # SMTP.__init__ builds its tables of commands and AUTH mechanisms from dir() of the
        # protocol (inspect.getmembers, which reads and sorts every attribute), for every
        # connection: about 630 microseconds a connection on a busy two-core machine, 130
        # when dir() names only what it looks for (test_aiosmtpd_seams checks that it looks
        # for nothing else).
        return seam_names(type(self), ("smtp_", "auth_"))

    def __init__(
        self,
        handler,
        *,
        config: SMTPConfig,
        counter: ConnectionCounter,
        offers_auth: bool,
        implicit_tls: bool = False,
        factory: SMTPProtocolFactory | None = None,
    ):
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="ESMTP Everlock",
            # With TLS from the first byte there is no STARTTLS to offer.
            tls_context=None if implicit_tls else config.tls_context,
            # Our idle timer (_idle_check) closes idle sessions first, with 421; aiosmtpd's
            # own, which closes without a word, only backs it up.
            timeout=config.idle_timeout + IDLE_BACKSTOP,
            # MAIL without AUTH is refused by the submission handler with 530 5.7.0, and
            # smtp_AUTH below decides where plain-text AUTH may be used.
            auth_required=False,
            auth_require_tls=False,
            command_call_limit=_CALL_LIMITS,
            loop=asyncio.get_running_loop(),
        )
        # RFC 5321 section 4.5.3.1.4 (512) plus what the extensions add: RFC 3461 section 5
        # (100 on MAIL, 500 on RCPT), RFC 8689 and RFC 3030 (their MAIL keywords). aiosmtpd
        # adds SIZE and SMTPUTF8 at EHLO.
        self.command_size_limits = collections.defaultdict(
            lambda: 512, {"MAIL": 512 + 100 + 11 + 16, "RCPT": 512 + 500}
        )
        self.implicit_tls = implicit_tls

        self.config = config
        self.counter = counter
        self.offers_auth = offers_auth
        # The listener whose total counts this connection (see _free_slot).
        self._factory = factory
        self.heard_at = self.loop.time()
        self._counted_host: str | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        # The TCP connection, under the TLS transport once STARTTLS succeeded.
        self._tcp_transport: asyncio.BaseTransport | None = None
        self._reply_lines: list[bytes] = []
        self.listener = listener_name(offers_auth=offers_auth, implicit_tls=implicit_tls)
        # The transaction command (MAIL, RCPT, DATA, BDAT) whose final reply is still to be
        # counted for the metrics (see _count).
        self._counting: str | None = None
        self._greeted = False
        # Once the greeting was a refusal: what the client sent since, not yet a whole line
        # (see _answer_refused), and how many commands it has sent.
        self._refused_input: bytearray | None = None
        self._commands_refused = 0

    async def push(self, status):
        if not self._greeted:
            self._greeted = True
            status = await self._greeting(status)
        if not isinstance(status, bytes):
            status = wire(status)
        # The lines of a multi-line reply (RFC 5321 section 4.2.1: "250-...", then "250 ...")
        # go out in one write with the last one, not in one system call each.
        if status[3:4] == b"-":
            self._reply_lines.append(status)
            return
        if self._counting is not None and status[:1] != b"3":  # 354 is not DATA's answer yet
            self._count(status)
        if self._reply_lines:
            status = b"\r\n".join([*self._reply_lines, status])
            self._reply_lines.clear()
        self._heard()  # our replies count as activity too
        await super().push(status)

    async def _greeting(self, greeting: str) -> str | Reply:
        """`greeting`, or the refusal the handler's handle_CONNECT hook gives for the client
        instead (RFC 5321 section 3.1 allows a 554 greeting; only QUIT is answered after it,
        see _answer_refused). A hook that fails greets: its trouble is logged, not the
        client's."""
        hook = getattr(self.event_handler, "handle_CONNECT", None)
        if hook is None:
            return greeting
        try:
            refusal = await hook(self, self.session)
        except Exception:
            log.exception("SMTP: handle_CONNECT failed; greeting %s", self._counted_host)
            return greeting
        if refusal is None:
            return greeting
        metrics.SMTP_REFUSED.labels(self.listener, "CONNECT", refusal_reason(wire(refusal))).inc()
        self._refused_input = bytearray()
        return refusal

    def _answer_refused(self, data: bytes) -> None:
        """What a client refused at the greeting gets, in place of aiosmtpd's command loop:
        503 to each command, 221 and the close for QUIT (RFC 5321 section 3.1), 421 and the
        close after MAX_COMMANDS_REFUSED commands."""
        pending = self._refused_input
        pending += data
        *lines, rest = pending.split(b"\n")
        if len(rest) > self.command_size_limit:  # a line without end counts as a command
            lines.append(rest)
            rest = b""
        self._refused_input = bytearray(rest)
        answers = []
        for line in lines:
            self._commands_refused += 1
            words = line.split(None, 1)
            if words and words[0].upper() == b"QUIT":
                answers.append(wire(replies.BYE))
            elif self._commands_refused > MAX_COMMANDS_REFUSED:
                answers.append(wire(replies.TOO_MANY_ERRORS))
            else:
                answers.append(wire(replies.REFUSED_AT_CONNECT))
                continue
            self.transport.write(b"\r\n".join(answers) + b"\r\n")
            self.end_connection()
            return
        if answers:
            self.transport.write(b"\r\n".join(answers) + b"\r\n")

    def _count(self, line: bytes) -> None:
        """Count the final reply `line` to the transaction command being counted: a refusal,
        or a message accepted."""
        command, self._counting = self._counting, None
        if line[:1] in b"45":
            metrics.SMTP_REFUSED.labels(self.listener, command, refusal_reason(line)).inc()
        elif line == _ACCEPTED and command in ("DATA", "BDAT"):
            metrics.SMTP_ACCEPTED.labels(self.listener).inc()

    def _idle_check(self) -> None:
        # One timer per connection, moved on only when it fires before the deadline: the
        # same limit as a timer replaced at every command, for a fraction of the cost.
        deadline = self.heard_at + self.config.idle_timeout
        if self.loop.time() < deadline:
            self._idle_timer = self.loop.call_at(deadline, self._idle_check)
            return
        # RFC 5321 section 4.5.3.2: the server may close an idle session; say so with 421.
        log.info("SMTP: idle connection from %s closed", self._counted_host)
        self._idle_timer = None
        if self.transport is not None:
            self.transport.write(wire(replies.IDLE_TIMEOUT) + b"\r\n")
        self.end_connection()

    # -- session limits -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        # Called for the TCP connection, and again (with the TLS transport) after STARTTLS.
        if self.transport is None:
            host = peer_host(transport.get_extra_info("peername"))
            if not self.counter.acquire(host, self.config.max_connections_per_client):
                log.warning("SMTP: too many connections from %s", host, extra={"client": host})
                metrics.SMTP_REFUSED.labels(self.listener, "CONNECT", "too_many_connections").inc()
                self._free_slot()
                transport.write(wire(replies.TOO_MANY_CONNECTIONS) + b"\r\n")
                transport.close()
                return
            self._counted_host = host
            self._tcp_transport = transport
            self._session_timer = self.loop.call_later(self.config.session_timeout, self._session_expired)
            self._idle_timer = self.loop.call_later(self.config.idle_timeout, self._idle_check)
        super().connection_made(transport)
        # When AUTH succeeded (loop time): its check of the directory holds for the MAIL FROM
        # that follows at once (mail.smtp.submission.AUTH_CHECK_HOLDS).
        self.session.authenticated_at = float("-inf")
        if self.implicit_tls and not self.session.ssl:
            # What aiosmtpd records after STARTTLS, for the Received field.
            self.session.ssl = {
                "cipher": transport.get_extra_info("cipher"),
                "peercert": transport.get_extra_info("peercert"),
            }

    def _free_slot(self) -> None:
        """Give up this connection's places in the listener's total and the client's count
        (once, whichever comes first: we end the session, or the connection is lost)."""
        if self._factory is not None:
            self._factory.closed(self)
            self._factory = None
        if self._counted_host is not None:
            self.counter.release(self._counted_host)
            self._counted_host = None
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def end_connection(self) -> None:
        """End the connection from our side. Its slot is free at once, whatever the client
        does: over TLS our close_notify goes out and the socket closes without waiting for
        the client's (RFC 8446 section 6.1 allows it); a socket whose client does not read
        what is left to send is aborted after CLOSE_GRACE seconds."""
        self._free_slot()
        socket_transport = self._tcp_transport or self.transport
        if self.transport is not None:
            self.transport.close()
        if socket_transport is not None:
            socket_transport.close()
            if socket_transport.get_write_buffer_size():
                self.loop.call_later(CLOSE_GRACE, socket_transport.abort)

    def _heard(self) -> None:
        self.heard_at = self.loop.time()
        if self._factory is not None:
            self._factory.heard(self)

    def data_received(self, data: bytes) -> None:
        self._heard()
        if self._refused_input is not None:
            self._answer_refused(data)
            return
        super().data_received(data)

    def evict(self) -> None:
        """Make room on a full listener: this silent connection is closed with 421."""
        log.debug("SMTP: silent connection from %s closed for a new one", self._counted_host)
        if self.transport is not None:
            self.transport.write(wire(replies.IDLE_TIMEOUT) + b"\r\n")
        self.end_connection()

    def _session_expired(self) -> None:
        if self.transport is not None:
            self.transport.write(wire(replies.SESSION_TOO_LONG) + b"\r\n")
            self.end_connection()

    def connection_lost(self, error) -> None:
        self._free_slot()
        if self.session is None:  # refused in connection_made: no SMTP session to end
            return
        super().connection_lost(error)

    async def smtp_QUIT(self, arg: str) -> None:
        await super().smtp_QUIT(arg)
        if not arg:
            self.end_connection()

    async def handle_exception(self, error: Exception):
        if isinstance(error, TLSSetupException):
            # A client that gave up or failed the TLS handshake: nothing of ours went wrong.
            client = peer_host(self.session.peer)
            log.info(
                "SMTP: TLS handshake with %s failed: %r", client, error.__cause__, extra={"client": client}
            )
            return replies.LOCAL_ERROR
        return await super().handle_exception(error)

    # -- TLS --------------------------------------------------------------------------------

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str):
        # RFC 3207 section 4.2: once TLS is up, a second STARTTLS is refused. aiosmtpd
        # itself drops bytes pipelined after STARTTLS (RFC 3207 section 4.2, CVE-2024-34083).
        if self.tls_active:
            await self.push(replies.TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    @property
    def tls_active(self) -> bool:
        # aiosmtpd records the TLS session in session.ssl after STARTTLS; connection_made
        # records it for implicit TLS.
        return self.session is not None and self.session.ssl is not None

    # -- MAIL and RCPT parameters, BDAT (RFC 3461, RFC 8689, RFC 3030) ---------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        # Our parameters come off the argument; aiosmtpd reads the rest (and refuses what
        # neither knows with 555). The values go on the envelope once MAIL is accepted.
        self._counting = "MAIL"
        params = MailParams()
        if arg is not None and self.session.extended_smtp:
            try:
                arg, params = take_mail_params(arg, tls=self.tls_active)
            except SMTPReject as exc:
                await self.push(exc.reply)
                return
        had_sender = bool(self.envelope.mail_from)
        address = plain_path(arg, "FROM:")
        if address is None:
            await super().smtp_MAIL(arg)
        elif not (await self.check_helo_needed() or await self.check_auth_needed("MAIL")):
            # aiosmtpd's MAIL for a plain path without parameters (see _PLAIN_PATH).
            if had_sender:
                await self.push("503 Error: nested MAIL command")
                return
            self.envelope.smtp_utf8 = False
            status = await self.event_handler.handle_MAIL(self, self.session, self.envelope, address, [])
            await self.push(status)
        if not had_sender and self.envelope.mail_from:
            self.envelope.mail_params = params

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._counting = "RCPT"
        params = RcptParams()
        if arg is not None and self.session.extended_smtp:
            try:
                arg, params = take_rcpt_params(arg)
            except SMTPReject as exc:
                await self.push(exc.reply)
                return
        count = len(self.envelope.rcpt_tos)
        address = plain_path(arg, "TO:")
        if address is None or address == "<>":
            await super().smtp_RCPT(arg)
        elif not (await self.check_helo_needed() or await self.check_auth_needed("RCPT")):
            # aiosmtpd's RCPT for a plain path without parameters (see _PLAIN_PATH).
            if not self.envelope.mail_from:
                await self.push("503 Error: need MAIL command")
                return
            status = await self.event_handler.handle_RCPT(self, self.session, self.envelope, address, [])
            await self.push(status)
        if len(self.envelope.rcpt_tos) > count:
            rcpt_params = getattr(self.envelope, "rcpt_params", None)
            if rcpt_params is None:
                rcpt_params = self.envelope.rcpt_params = {}
            rcpt_params[self.envelope.rcpt_tos[-1]] = params

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's DATA reads the message a line at a time; this one reads it in blocks of
        # up to the reader's limit, with the same replies (RFC 5321 sections 3.3, 4.5.2).
        # RFC 3030 section 3: BODY=BINARYMIME comes with BDAT only; section 2: no DATA
        # once BDAT has begun.
        self._counting = "DATA"
        if getattr(self.envelope, "mail_params", MailParams()).binarymime:
            await self.push("503 5.5.1 BODY=BINARYMIME requires BDAT")
            return
        if getattr(self.envelope, "chunks", None) is not None:
            await self.push("503 5.5.1 DATA after BDAT")
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # The connection's StreamReader, as aiosmtpd's own smtp_DATA reads it: aiosmtpd 1.4
        # offers no public way to it (it creates the reader in its constructor and keeps it in
        # _reader; asyncio's StreamReaderProtocol hands it only to the client_connected_cb
        # aiosmtpd itself takes). test_aiosmtpd_seams pins that attribute.
        content, failure = await read_data(
            self._reader, size_limit=self.data_size_limit, line_limit=MAX_LINE_LENGTH
        )
        if failure is None:
            self.envelope.content = self.envelope.original_content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self.envelope = Envelope()
        await self.push(failure or status)

    @syntax("BDAT <chunk-size> [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        self._counting = "BDAT"
        words = (arg or "").split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or [w.upper() for w in words[1:]] not in ([], ["LAST"])
        ):
            # Without a size, nothing tells where the chunk ends: what follows is read as
            # commands, as Postfix does.
            await self.push("501 5.5.4 Syntax: BDAT <chunk-size> [LAST]")
            return
        size, last = int(words[0]), len(words) == 2
        envelope = self.envelope
        failure = getattr(envelope, "bdat_failure", None)
        if failure is None and not self.session.host_name:
            failure = "503 5.5.1 Send EHLO first"
        elif failure is None and not envelope.mail_from:
            failure = "503 5.5.1 Need MAIL command"
        elif failure is None and not envelope.rcpt_tos:
            failure = "503 5.5.1 Need RCPT command"
        chunks = getattr(envelope, "chunks", None)
        if chunks is None:
            chunks = envelope.chunks = bytearray()
        if failure is None and len(chunks) + size > self.data_size_limit:
            failure = replies.MESSAGE_TOO_BIG
            chunks.clear()
        # The chunk is read whatever the answer: its bytes are not commands.
        remaining = size
        while remaining:
            piece = await self._reader.readexactly(min(remaining, _BDAT_PIECE))
            remaining -= len(piece)
            if failure is None:
                chunks += piece
        if failure is not None:
            if envelope.mail_from:
                envelope.bdat_failure = failure  # for the chunks that follow, until LAST
            if last or not envelope.mail_from:
                self.envelope = Envelope()
            await self.push(failure)
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        envelope.original_content = envelope.content = bytes(chunks)
        chunks.clear()
        status = await self.event_handler.handle_DATA(self, self.session, envelope)
        self.envelope = Envelope()
        await self.push(status)

    # -- AUTH (RFC 4954) ------------------------------------------------------------------

    def may_offer_auth(self) -> bool:
        """Plain-text mechanisms only over TLS, from loopback, or when the setting allows."""
        if not self.offers_auth:
            return False
        if self.tls_active or self.config.plaintext_auth:
            return True
        return self.config.trust_loopback and is_loopback(peer_host(self.session.peer))

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.offers_auth:
            await self.push(replies.AUTH_NOT_OFFERED)
            return
        if not self.may_offer_auth():
            await self.push(replies.AUTH_NEEDS_TLS)
            return
        await super().smtp_AUTH(arg)

    async def _verify(self, login: bytes, password: bytes) -> AuthResult:
        try:
            login_text, password_text = login.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        ok, result = await call_service(
            self.event_handler.authenticate,
            login=login_text,
            password=password_text,
            client_address=peer_host(self.session.peer),
        )
        if not ok:
            return AuthResult(success=False, handled=False, message=result)
        if result is None:
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        # The login was checked against the directory's latest change just now.
        self.session.authenticated_at = self.loop.time()
        return AuthResult(success=True, auth_data=result, message=replies.AUTH_OK)

    async def _decode_initial(self, args: list[str]) -> bytes | None:
        try:
            return b64decode(args[1].encode(), validate=True)
        except Exception:
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)
        else:
            blob = await self._decode_initial(args)
            if blob is None:
                return AuthResult(success=False, handled=True)
        # RFC 4616 section 2: [authzid] NUL authcid NUL passwd
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Cannot split auth value")
            return AuthResult(success=False, handled=True)
        return await self._verify(parts[1], parts[2])

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            login = await self._decode_initial(args)
            if login is None:
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        return await self._verify(login, password)
