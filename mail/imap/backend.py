"""The Everlock backend of pymap: its login, session and mailbox interfaces over mail.imap.store.

pymap speaks the protocol (parsing, responses, the selected-mailbox state of each session);
this module answers its questions from the database. Database work runs in a small thread pool
(`run`), never on the event loop.

A folder that sessions of this process have open is a FolderState: its messages as of the last
look (uid -> Message), shared by every session of the process, refreshed by one query that
returns only what changed since (mail.imap.store.changes), and a change log so each session is
told only what it has not seen yet. mail.imap.notify wakes IDLE sessions when another process
changes the folder.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from argparse import Namespace
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from proxyprotocol.sock import SocketInfo
from pymap.backend.session import BaseSession
from pymap.concurrent import Event, Subsystem
from pymap.config import BackendCapability, IMAPConfig
from pymap.context import socket_info
from pymap.exceptions import (
    AuthorizationFailure,
    InvalidAuth,
    MailboxError,
    MailboxNotFound,
    MailboxReadOnly,
    NotAllowedError,
    ResponseError,
)
from pymap.flags import FlagOp
from pymap.interfaces.login import IdentityInterface, LoginInterface
from pymap.interfaces.message import CachedMessage
from pymap.listtree import ListTree
from pymap.mailbox import MailboxSnapshot
from pymap.message import BaseLoadedMessage, BaseMessage
from pymap.mime import MessageContent
from pymap.parsing.message import AppendMessage
from pymap.parsing.response import ResponseNo
from pymap.parsing.response.code import AppendUid, CopyUid, ResponseCode
from pymap.parsing.specials import FetchRequirement, ObjectId, SequenceSet
from pymap.parsing.specials.flag import Flag, Seen
from pymap.selected import SelectedMailbox, SelectedSet
from pymap.token import AllTokens
from pysasl.creds.server import ServerCredentials

from accounts.authentication import Throttled, authenticate
from accounts.models import User
from mail.imap import store
from mail.imap.store import Access, FolderGone, Row, StoreError
from mail.services.storage import message_storage

log = logging.getLogger("mail.imap")

T = TypeVar("T")


class DatabaseThreads:
    """The worker threads IMAP sessions do their database and file work in: started with the
    listeners, ended with them (so their database connections close)."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imap-db")

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    async def run(self, func: Callable[..., T], *args, **kwargs) -> T:
        """Run the synchronous `func` in one of the threads.

        Raises ServerTrouble (a `NO [UNAVAILABLE]` answer, the session goes on) when the
        database or the message storage fails: our own trouble is temporary for the client."""
        self.start()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(_in_thread, func, *args, **kwargs))
        except (DatabaseError, OSError) as exc:
            log.exception("IMAP: %s failed", getattr(func, "__name__", func))
            raise ServerTrouble() from exc


class ServerTrouble(ResponseError):
    """The database or the message storage failed while answering a command."""

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, b"Temporary server problem, try again later.", ResponseCode.of(b"UNAVAILABLE"))


def _in_thread(func: Callable[..., T], *args, **kwargs) -> T:
    close_old_connections()
    return func(*args, **kwargs)


database_threads = DatabaseThreads()
run = database_threads.run


def _refused(exc: StoreError, mailbox: str | None = None) -> MailboxError:
    return MailboxError(mailbox, str(exc).encode(), ResponseCode.of(exc.code.encode()))


# --- configuration ---------------------------------------------------------------------------


class Config(IMAPConfig):
    """pymap's settings for one Everlock listener: `starttls` for the plain port (143), off
    for implicit TLS (993), where the socket is encrypted before the greeting."""

    def __init__(
        self,
        *,
        ssl_context,
        starttls: bool,
        hostname: str,
        max_append_len: int,
        extra_capabilities: Sequence[bytes] = (),
        commands: Callable[[], Any] | None = None,
    ) -> None:
        args = Namespace(passlib_cfg=None, proxy_protocol="noop", inherited_sockets=None)
        super().__init__(
            args,
            host=None,
            port=0,
            ssl_context=ssl_context,
            tls_enabled=starttls,
            cpu_subsystem=Subsystem.for_asyncio(),
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
            max_append_len=max_append_len,
            bad_command_limit=10,
        )
        self._hostname = hostname
        self._extra_capabilities = tuple(extra_capabilities)
        self._commands = commands

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(
            idle=True, object_id=True, multi_append=True, custom=self._extra_capabilities
        )

    @property
    def login_capability(self):
        # pymap announces BINARY (RFC 3516) but cannot answer BINARY.SIZE: not offered.
        return [cap for cap in super().login_capability if cap != b"BINARY"]

    @property
    def commands(self):
        return self._commands() if self._commands is not None else super().commands

    @property
    def greeting(self) -> bytes:
        return f"{self._hostname} Everlock IMAP ready".encode()

    @property
    def id_response(self):
        return {b"name": b"Everlock"}


# --- login -----------------------------------------------------------------------------------


class Login(LoginInterface):
    """Everlock users: the login of submission (exact name, then local part), the same
    password cache, throttle and timing (accounts.authentication)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tokens = AllTokens(config)

    @property
    def tokens(self) -> AllTokens:
        return self._tokens

    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        info: SocketInfo = socket_info.get()
        peer = info.peername
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        check = PasswordCheck(credentials.authcid, client_address=address)
        try:
            await run(credentials.verify, check)
        except Throttled:
            raise LoginThrottled() from None
        if check.user is None:
            raise InvalidAuth()
        return Identity(check.user, self.config, login=credentials.authcid)

    async def authorize(self, authenticated: IdentityInterface, authzid: str) -> Identity:
        assert isinstance(authenticated, Identity)
        # No acting as someone else: the authorization identity, when given, is the login.
        if authzid and authzid not in (authenticated.name, authenticated.login):
            raise AuthorizationFailure()
        return authenticated


class LoginThrottled(ResponseError):
    """Too many failed logins from the client's address: refused without checking."""

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, b"Too many failed logins, try again later.", ResponseCode.of(b"UNAVAILABLE"))


class TooManySessions(ResponseError):
    """The user has EVERLOCK_IMAP_MAX_SESSIONS_PER_USER sessions open in this process."""

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, b"Too many sessions open for this user.", ResponseCode.of(b"LIMIT"))


# Logged-in sessions of this process, by user id.
_sessions: Counter[int] = Counter()


class PasswordCheck:
    """A pysasl identity that checks the password its credentials carry with
    accounts.authentication (pysasl's seam: the server verifies credentials against an
    identity). Blocking: call `credentials.verify(check)` in a worker thread."""

    def __init__(self, login: str, *, client_address: str) -> None:
        self.login = login
        self.client_address = client_address
        self.user: User | None = None

    @property
    def authcid(self) -> str:
        return self.login

    def compare_authcid(self, authcid: str) -> bool:
        return authcid == self.login

    def compare_secret(self, secret: str) -> bool:
        self.user = authenticate(self.login, secret, client_address=self.client_address, service="imap")
        return self.user is not None

    def get_clear_secret(self) -> str | None:
        return None


class Identity(IdentityInterface):
    def __init__(self, user: User, config: IMAPConfig, *, login: str) -> None:
        self.user = user
        self.config = config
        self.login = login

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def roles(self) -> frozenset[str]:
        return frozenset()

    @asynccontextmanager
    async def new_session(self) -> AsyncIterator[Session]:
        limit = settings.EVERLOCK_IMAP_MAX_SESSIONS_PER_USER
        if _sessions[self.user.pk] >= limit:
            log.warning("imap: session of %s refused: %d sessions open", self.user.username, limit)
            raise TooManySessions()
        accesses = await run(_open_accesses, self.user)
        _sessions[self.user.pk] += 1
        try:
            yield Session(self.user.username, MailboxSet(accesses), self.config)
        finally:
            _sessions[self.user.pk] -= 1
            if not _sessions[self.user.pk]:
                del _sessions[self.user.pk]

    async def new_token(self, *, expiration: datetime | None = None) -> str | None:
        return None

    async def get(self):
        raise NotAllowedError("User metadata is managed in the Everlock console.")

    async def set(self, metadata) -> int | None:
        raise NotAllowedError("User metadata is managed in the Everlock console.")

    async def delete(self) -> None:
        raise NotAllowedError("Users are managed in the Everlock console.")


def _open_accesses(user: User) -> list[Access]:
    accesses = store.accesses(user)
    if accesses and not accesses[0].prefix:
        store.ensure_special_folders(accesses[0].mailbox_id)
    return accesses


# --- messages --------------------------------------------------------------------------------


class ContentCache:
    """Parsed message contents, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: OrderedDict[tuple[int, bool], tuple[MessageContent, int]] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, key: tuple[int, bool]) -> MessageContent | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple[int, bool], content: MessageContent, size: int) -> None:
        if size > self._max // 4 or key in self._entries:
            return
        self._entries[key] = (content, size)
        self._bytes += size
        while self._bytes > self._max:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


contents = ContentCache()


def _read(row: Row, header_only: bool) -> MessageContent | None:
    """The parsed content (its header only, when `header_only`); None when the file is gone
    (its last copy was expunged since the session listed it)."""
    try:
        fh = message_storage().open(row.storage_name, "rb")
    except FileNotFoundError:
        return None
    with fh:
        if header_only:
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                chunk = fh.read(65536)
                if not chunk:
                    break
                head += chunk
            end = head.find(b"\r\n\r\n")
            raw = head[: end + 4] if end >= 0 else head
        else:
            raw = fh.read()
    return MessageContent.parse(row.prepended + raw)


class Message(BaseMessage):
    """A message of a folder as sessions track it: UID, flags, internal date, and where its
    content is stored."""

    __slots__ = ["row"]

    def __init__(self, row: Row, *, expunged: bool = False) -> None:
        flags = frozenset(Flag(f.encode()) for f in row.flags)
        super().__init__(row.uid, row.internal_date, flags, expunged=expunged)
        self.row = row

    async def load_content(self, requirement: FetchRequirement) -> LoadedMessage:
        if requirement.has_none(FetchRequirement.CONTENT):
            return LoadedMessage(self, requirement, None)
        header_only = not requirement.has_all(FetchRequirement.BODY)
        key = (self.row.id, header_only)
        content = contents.get(key) or contents.get((self.row.id, False))
        if content is None:
            content = await run(_read, self.row, header_only)
            if content is None:
                return LoadedMessage(self, requirement, None)
            contents.put(key, content, self.row.size)
        return LoadedMessage(self, requirement, content)


class LoadedMessage(BaseLoadedMessage):
    pass


# --- folders ---------------------------------------------------------------------------------


class FolderState:
    """The messages of one folder as this process last saw them, shared by its sessions."""

    LOG_LENGTH = 1000

    def __init__(self, folder_id: int) -> None:
        self.folder_id = folder_id
        self.messages: dict[int, Message] = {}
        self.modseq = 0  # the folder's highest_modseq at the last refresh
        self.info: store.FolderInfo | None = None
        self.version = 0  # this process's count of refreshes that changed something
        self.log: deque[tuple[int, frozenset[int], frozenset[int]]] = deque(maxlen=self.LOG_LENGTH)
        self.selected_set = SelectedSet()
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.gone = False
        self.claimed_up_to = 0  # uid_next when sessions of this process last claimed \Recent
        self.keywords: set[str] = set()  # every keyword seen on a message of the folder

    def poke(self) -> None:
        """Wake the sessions waiting in IDLE: the folder may have changed."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def refresh(self) -> None:
        async with self.lock:
            try:
                delta = await run(store.changes, self.folder_id, self.modseq)
            except FolderGone:
                self.gone = True
                raise
            self.info = delta.folder
            changed = {row.uid for row in delta.rows}
            for row in delta.rows:
                self.messages[row.uid] = Message(row)
                self.keywords.update(flag for flag in row.flags if not flag.startswith("\\"))
            expunged: set[int] = set()
            if len(self.messages) != delta.count:
                present = await run(store.all_uids, self.folder_id)
                expunged = set(self.messages) - present
                for uid in expunged:
                    del self.messages[uid]
            self.modseq = delta.folder.highest_modseq
            if changed or expunged:
                self.version += 1
                self.log.append((self.version, frozenset(changed), frozenset(expunged)))

    def since(self, version: int | None) -> tuple[list[Message], frozenset[int]] | None:
        """(messages changed, UIDs expunged) after `version`, or None when the log no longer
        reaches back that far (the session then compares everything)."""
        if version is None:
            return None
        if version == self.version:
            return [], frozenset()
        if not self.log or self.log[0][0] > version + 1:
            return None
        changed: set[int] = set()
        expunged: set[int] = set()
        for entry_version, entry_changed, entry_expunged in self.log:
            if entry_version > version:
                changed |= entry_changed
                expunged |= entry_expunged
        return [self.messages[uid] for uid in sorted(changed) if uid in self.messages], frozenset(expunged)


_states: weakref.WeakValueDictionary[int, FolderState] = weakref.WeakValueDictionary()


def folder_state(folder_id: int) -> FolderState:
    state = _states.get(folder_id)
    if state is None:
        state = _states[folder_id] = FolderState(folder_id)
    return state


def open_states() -> list[FolderState]:
    """The folders sessions of this process have open (for mail.imap.notify)."""
    return list(_states.values())


class MailboxData:
    """One folder as pymap's MailboxDataInterface."""

    def __init__(self, access: Access, name: str, info: store.FolderInfo, state: FolderState) -> None:
        self.access = access
        self.name = name
        self.state = state
        self._info = info
        self._mailbox_id = ObjectId(b"F%d" % info.id)

    @property
    def mailbox_id(self) -> ObjectId:
        return self._mailbox_id

    @property
    def readonly(self) -> bool:
        return not self.access.writable

    @property
    def uid_validity(self) -> int:
        return self._info.uid_validity

    @property
    def permanent_flags(self) -> frozenset[Flag]:
        return frozenset(Flag(f.encode()) for f in store.SYSTEM_FLAGS) | {Flag(b"\\*")}

    @property
    def session_flags(self) -> frozenset[Flag]:
        return frozenset({Flag(b"\\Recent")})

    @property
    def selected_set(self) -> SelectedSet:
        return self.state.selected_set

    async def _refresh(self) -> None:
        try:
            await self.state.refresh()
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        assert self.state.info is not None
        self._info = self.state.info

    async def update_selected(
        self, selected: SelectedMailbox, *, wait_on: Event | None = None
    ) -> SelectedMailbox:
        if wait_on is not None:
            await _wait_either(wait_on, self.state.changed)
        try:
            await self._refresh()
        except MailboxNotFound:
            selected.set_deleted()
            return selected
        if not selected.readonly and self._info.uid_next > self.state.claimed_up_to:
            # New mail: the first read-write session to see it gets it as \Recent.
            self.state.claimed_up_to = self._info.uid_next
            await self.claim_recent(selected)
        delta = self.state.since(selected.mod_sequence)
        if delta is None:
            selected.set_messages(sorted(self.state.messages.values(), key=lambda m: m.uid))
        else:
            messages, expunged = delta
            selected.add_updates(messages, expunged)
        selected.mod_sequence = self.state.version
        return selected

    async def append(self, append_msg: AppendMessage, *, recent: bool = False) -> Message:
        if self.readonly:
            raise MailboxReadOnly(self.name)
        flags = frozenset(str(f) for f in append_msg.flag_set if str(f) != "\\Recent")
        when = append_msg.when if append_msg.when and append_msg.when.tzinfo else None
        try:
            _, uid = await run(
                store.append,
                self.state.folder_id,
                mailbox_id=self.access.mailbox_id,
                raw=bytes(append_msg.literal),
                flags=flags,
                when=when,
            )
        except StoreError as exc:
            raise _refused(exc, self.name) from None
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        self.state.poke()
        row = Row(0, uid, flags, when or datetime.now(UTC), len(append_msg.literal), "", b"")
        return Message(row)

    async def copy_many(
        self, uids: Sequence[int], destination: MailboxData, *, move: bool
    ) -> list[tuple[int, int]]:
        try:
            _, pairs = await run(
                store.copy,
                self.state.folder_id,
                list(uids),
                destination.state.folder_id,
                move=move,
                target_mailbox_id=destination.access.mailbox_id,
            )
        except StoreError as exc:
            raise _refused(exc, destination.name) from None
        except FolderGone:
            raise MailboxNotFound(destination.name) from None
        destination.state.poke()
        if move:
            self.state.poke()
        return pairs

    async def copy(self, uid: int, destination: MailboxData, *, recent: bool = False) -> int | None:
        pairs = await self.copy_many([uid], destination, move=False)
        return pairs[0][1] if pairs else None

    async def move(self, uid: int, destination: MailboxData, *, recent: bool = False) -> int | None:
        pairs = await self.copy_many([uid], destination, move=True)
        return pairs[0][1] if pairs else None

    async def get(self, uid: int, cached_msg: CachedMessage) -> Message:
        message = self.state.messages.get(uid)
        if message is None:
            if not isinstance(cached_msg, Message):
                raise TypeError(cached_msg)
            return Message(cached_msg.row, expunged=True)
        return message

    async def update_many(self, messages: Sequence[Message], flag_set: frozenset[Flag], mode: FlagOp) -> None:
        updates = []
        for message in messages:
            flags = mode.apply(message.permanent_flags, flag_set)
            if flags != message.permanent_flags:
                updates.append((message.uid, frozenset(str(f) for f in flags)))
        if updates:
            try:
                await run(store.set_flags, self.state.folder_id, updates)
            except FolderGone:
                raise MailboxNotFound(self.name) from None
            self.state.poke()

    async def update(
        self, uid: int, cached_msg: CachedMessage, flag_set: frozenset[Flag], mode: FlagOp
    ) -> Message:
        message = await self.get(uid, cached_msg)
        if not message.expunged:
            await self.update_many([message], flag_set, mode)
            await self._refresh()
            message = self.state.messages.get(uid, message)
        return message

    async def delete(self, uids: Iterable[int]) -> None:
        try:
            await run(store.expunge, self.state.folder_id, list(uids))
        except FolderGone:
            raise MailboxNotFound(self.name) from None
        self.state.poke()

    async def claim_recent(self, selected: SelectedMailbox) -> None:
        for uid in await run(store.claim_recent, self.state.folder_id):
            selected.session_flags.add_recent(uid)

    async def cleanup(self) -> None:
        pass

    async def snapshot(self) -> MailboxSnapshot:
        await self._refresh()
        messages = sorted(self.state.messages.values(), key=lambda m: m.uid)
        unseen = 0
        first_unseen = None
        for seq, message in enumerate(messages, 1):
            if Seen not in message.permanent_flags:
                unseen += 1
                if first_unseen is None:
                    first_unseen = seq
        # FLAGS and PERMANENTFLAGS name the system flags and the keywords in use; STORE
        # takes any keyword (self.permanent_flags has \*, for the selected state only).
        in_use = frozenset(Flag(k.encode()) for k in self.state.keywords)
        return MailboxSnapshot(
            self.mailbox_id,
            self.readonly,
            self.uid_validity,
            (self.permanent_flags - {Flag(b"\\*")}) | in_use,
            self.session_flags,
            len(messages),
            await run(store.recent_count, self.state.folder_id),
            unseen,
            first_unseen,
            self._info.uid_next,
        )

    async def find(
        self, seq_set: SequenceSet, selected: SelectedMailbox
    ) -> AsyncIterable[tuple[int, Message]]:
        for seq, cached in selected.messages.get_all(seq_set):
            message = await self.get(cached.uid, cached)
            yield seq, message

    async def find_deleted(self, seq_set: SequenceSet, selected: SelectedMailbox) -> Sequence[int]:
        deleted = Flag(b"\\Deleted")
        return [
            message.uid
            async for _, message in self.find(seq_set, selected)
            if not message.expunged and deleted in message.permanent_flags
        ]


async def _wait_either(done: Event, changed: asyncio.Event, recheck: float = 60.0) -> None:
    """Wait until IDLE ends (`done`), the folder may have changed, or `recheck` seconds pass."""
    waiters = {asyncio.ensure_future(done.wait(timeout=recheck)), asyncio.ensure_future(changed.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class MailboxSet:
    """The folders of every mailbox the user may open, as one IMAP hierarchy."""

    delimiter = store.DELIMITER

    def __init__(self, accesses: list[Access]) -> None:
        self.accesses = accesses
        # The states of the folders this session has looked at, kept while it lasts: the
        # process forgets a folder's state once no session holds it.
        self._states: dict[int, FolderState] = {}

    def locate(self, name: str) -> tuple[Access, str]:
        """The mailbox and the folder name within it for an IMAP name. Raises KeyError."""
        for access in self.accesses:
            if not access.prefix:
                continue
            if name.startswith(access.prefix + self.delimiter):
                return access, name[len(access.prefix) + 1 :]
        if name.upper().startswith(store.SHARED_PREFIX.upper() + self.delimiter) or name.upper() == "SHARED":
            raise KeyError(name)
        if self.accesses and not self.accesses[0].prefix:
            return self.accesses[0], name
        raise KeyError(name)

    async def _names(self) -> list[tuple[str, bool, str | None]]:
        def names():
            result = []
            for access in self.accesses:
                for stored, shown, subscribed in store.folder_rows(access):
                    result.append(
                        (shown, subscribed, store.special_use(stored) if not access.prefix else None)
                    )
            return result

        return await run(names)

    async def _tree(self, *, subscribed_only: bool) -> ListTree:
        names = await self._names()
        tree = ListTree(self.delimiter)
        tree.update(*(name for name, subscribed, _ in names if subscribed or not subscribed_only))
        return tree

    async def special_uses(self) -> dict[str, str]:
        return {name: use for name, _, use in await self._names() if use}

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        try:
            access, folder = self.locate(name)
            await run(store.set_subscribed, access, folder, subscribed)
        except KeyError:
            raise MailboxNotFound(name) from None
        except StoreError as exc:
            raise _refused(exc, name) from None

    async def list_subscribed(self) -> ListTree:
        return await self._tree(subscribed_only=True)

    async def list_mailboxes(self) -> ListTree:
        return await self._tree(subscribed_only=False)

    async def get_mailbox(self, name: str) -> MailboxData:
        access, folder = self.locate(name)
        try:
            info = await run(store.find_folder, access, folder)
        except FolderGone:
            raise KeyError(name) from None
        state = self._states.get(info.id)
        if state is None:
            state = self._states[info.id] = folder_state(info.id)
        return MailboxData(access, name, info, state)

    def _writable(self, name: str) -> tuple[Access, str]:
        access, folder = self.locate(name)
        if not access.writable:
            raise MailboxReadOnly(name)
        return access, folder

    async def add_mailbox(self, name: str) -> ObjectId:
        try:
            access, folder = self._writable(name)
        except KeyError:
            raise NotAllowedError(
                "Mailboxes are created in your own namespace or a shared one you may write."
            ) from None
        try:
            folder_id = await run(store.create_folder, access, folder)
        except StoreError as exc:
            if exc.code == "ALREADYEXISTS":
                raise ValueError(name) from None
            raise _refused(exc, name) from None
        return ObjectId(b"F%d" % folder_id)

    async def delete_mailbox(self, name: str) -> None:
        access, folder = self._writable(name)
        try:
            await run(store.delete_folder, access, folder)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise KeyError(name) from None
            raise _refused(exc, name) from None

    async def rename_mailbox(self, before: str, after: str) -> None:
        access, old = self._writable(before)
        target, new = self._writable(after)
        if target != access:
            raise NotAllowedError("Mailboxes are renamed within one mailbox.")
        try:
            await run(store.rename_folder, access, old, new)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise KeyError(before) from None
            if exc.code == "ALREADYEXISTS":
                raise ValueError(after) from None
            raise _refused(exc, before) from None


# --- the session -----------------------------------------------------------------------------


class Session(BaseSession[Message]):
    """One logged-in IMAP session. Flag changes, copies and moves of many messages go to the
    database as one change each, not one per message."""

    def __init__(self, owner: str, mailbox_set: MailboxSet, config: IMAPConfig) -> None:
        super().__init__(owner)
        self._mailbox_set = mailbox_set
        self._config = config

    @property
    def config(self) -> IMAPConfig:
        return self._config

    @property
    def mailbox_set(self) -> MailboxSet:
        return self._mailbox_set

    async def list_mailboxes(self, ref_name, filter_, subscribed=False, selected=None):
        found, updates = await super().list_mailboxes(ref_name, filter_, subscribed, selected)
        uses = await self._mailbox_set.special_uses()
        listed = []
        for name, delimiter, attributes in found:
            use = uses.get(name)
            if use is not None:
                attributes = [*attributes, use.encode()[1:]]
            listed.append((name, delimiter, attributes))
        return listed, updates

    async def fetch_messages(self, selected, sequence_set, set_seen):
        mbx = await self._get_selected(selected)
        found = [
            (seq, await mbx.get(cached.uid, cached))
            for seq, cached in selected.messages.get_all(sequence_set)
        ]
        if set_seen and not selected.readonly:
            await mbx.update_many([m for _, m in found if not m.expunged], frozenset({Seen}), FlagOp.ADD)
            await mbx._refresh()
            found = [(seq, mbx.state.messages.get(m.uid, m)) for seq, m in found]
        return found, await mbx.update_selected(selected)

    async def update_flags(self, selected, sequence_set, flag_set, mode=FlagOp.REPLACE):
        if selected.readonly:
            raise MailboxReadOnly()
        mbx = await self._get_selected(selected)
        permanent = selected.permanent_flags & flag_set
        found = [
            (seq, await mbx.get(cached.uid, cached))
            for seq, cached in selected.messages.get_all(sequence_set)
        ]
        await mbx.update_many([m for _, m in found if not m.expunged], permanent, mode)
        await mbx._refresh()
        result = []
        for seq, message in found:
            current = mbx.state.messages.get(message.uid, message)
            if not current.expunged:
                selected.session_flags.update(message.uid, flag_set, mode)
            result.append((seq, current))
        return result, await mbx.update_selected(selected)

    async def _transfer(self, selected, sequence_set, mailbox, *, move: bool):
        mbx = await self._get_selected(selected)
        if move and selected.readonly:
            raise MailboxReadOnly()
        dest = await self._get_mailbox(mailbox, try_create=True)
        if dest.readonly:
            raise MailboxReadOnly(mailbox)
        uids = [uid for _, uid in selected.messages.get_uids(sequence_set)]
        pairs = await mbx.copy_many(uids, dest, move=move) if uids else []
        copy_uid = CopyUid(dest.uid_validity, pairs) if pairs else None
        return copy_uid, await mbx.update_selected(selected)

    async def copy_messages(self, selected, sequence_set, mailbox):
        return await self._transfer(selected, sequence_set, mailbox, move=False)

    async def move_messages(self, selected, sequence_set, mailbox):
        return await self._transfer(selected, sequence_set, mailbox, move=True)

    async def append_messages(self, name: str, messages: Sequence[AppendMessage], selected=None):
        mbx = await self._get_mailbox(name, try_create=True)
        if mbx.readonly:
            raise MailboxReadOnly(name)
        uids = [(await mbx.append(message)).uid for message in messages]
        return AppendUid(mbx.uid_validity, uids), await self._load_updates(selected, mbx)
