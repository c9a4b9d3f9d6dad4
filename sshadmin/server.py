"""The admin SSH console listener (asyncssh), authenticated through accounts.authentication.

Who may log in: active users with the admin role on the `admin` resource (superusers have it),
by password (through the login throttle) or by public key. A user's authorized keys are the
`ssh_authorized_keys` field of the user (Django admin, "Admin console"): one OpenSSH public
key per line. The host key is generated once in DATA_DIR/ssh_host_ed25519_key and reused, so
clients see the same host key across restarts.

Sessions are the console (sshadmin.session) and nothing else: no port forwarding, no agent
or X11 forwarding, no SFTP, SCP or other subsystem.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

import asyncssh
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from accounts.authentication import Throttled, authenticate, is_admin, resolve_login
from accounts.models import User
from everlock_site.files import write_private_file
from everlock_site.listen import ListenAddress, binding, stop_on_signals
from sshadmin.commands import load_commands
from sshadmin.session import run_session

log = logging.getLogger("sshadmin")

HOST_KEY_NAME = "ssh_host_ed25519_key"
# An unauthenticated connection is dropped after this many seconds.
LOGIN_TIMEOUT = 60


def host_key_path() -> Path:
    return Path(settings.DATA_DIR) / HOST_KEY_NAME


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The Ed25519 host key stored at `path`, generated there (mode 0600) on first use.

    Safe when several processes start at once: the key is written to a temporary file and
    linked into place, so exactly one key wins and everyone reads that one.
    """
    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        pass
    key = asyncssh.generate_private_key("ssh-ed25519")
    if write_private_file(path, key.export_private_key(), keep_existing=True):
        log.info("generated SSH host key %s", path)
    return asyncssh.read_private_key(str(path))


def password_login(username: str, password: str, client_address: str) -> User | None:
    """The admin user for a password login, or None. Raises Throttled. Runs in a thread."""
    close_old_connections()
    try:
        user = authenticate(username, password, client_address=client_address, service="ssh")
        if user is None:
            return None
        if not is_admin(user):
            log.warning("ssh: %s from %s has no admin rights; login refused", user.username, client_address)
            return None
        return user
    finally:
        close_old_connections()


def public_key_login(username: str, key: asyncssh.SSHKey) -> User | None:
    """The admin user whose authorized keys include `key`, or None. Runs in a thread."""
    close_old_connections()
    try:
        user = resolve_login(username)
        if user is None or not is_admin(user):
            return None
        wanted = key.public_data
        for line in user.ssh_authorized_keys.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if asyncssh.import_public_key(line).public_data == wanted:
                    return user
            except (asyncssh.KeyImportError, ValueError):
                log.warning("ssh: ignoring an unreadable authorized key of %s", user.username)
        return None
    finally:
        close_old_connections()


class ConsoleProcess(asyncssh.SSHServerProcess):
    """A session channel that runs the console and refuses every subsystem (SFTP and others)."""

    def subsystem_requested(self, subsystem: str) -> bool:
        log.warning("ssh: subsystem %r refused", subsystem)
        return False


class ConsoleServer(asyncssh.SSHServer):
    """One SSH connection: authentication, then console sessions for the logged-in admin."""

    def __init__(self) -> None:
        self.client_address = ""
        self.user: User | None = None
        self._conn: asyncssh.SSHServerConnection | None = None
        # username -> user whose credentials checked out; taken when auth completes, since a
        # public key is validated before its signature is.
        self._verified: dict[str, tuple[User, str]] = {}

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.client_address = peer[0] if peer else ""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        try:
            user = await sync_to_async(password_login, thread_sensitive=False)(
                username, password, self.client_address
            )
        except Throttled:
            return False
        except Exception:
            log.exception("ssh: password check for %r failed", username)
            return False
        if user is None:
            return False
        self._verified[username] = (user, "password")
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        try:
            user = await sync_to_async(public_key_login, thread_sensitive=False)(username, key)
        except Exception:
            log.exception("ssh: public key check for %r failed", username)
            return False
        if user is None:
            return False
        self._verified[username] = (user, "public key")
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None
        username = self._conn.get_extra_info("username")
        self.user, method = self._verified[username]
        log.info("ssh: %s logged in from %s (%s)", self.user.username, self.client_address, method)

    def session_requested(self):
        if self.user is None:
            return False
        handler = partial(run_session, user=self.user, client_address=self.client_address)
        return ConsoleProcess(handler, None, asyncssh.sftp.MIN_SFTP_VERSION, False)


async def prepare_console(*, listens: dict) -> None:
    """The console backend of `everlock serve`: load the command registry (no listener)."""
    load_commands()
    return None


async def start_console(*, listens: dict) -> asyncssh.SSHAcceptor:
    """Bind the console listener on listens["ssh"] (a ListenAddress); return the acceptor.

    The acceptor's close() and wait_closed() stop it. The second log line names the address
    actually bound (the real port when port 0 was asked for).
    """
    listen: ListenAddress = listens["ssh"]
    log.info("frontend-ssh: binding admin console listener on %s", listen)
    load_commands()
    key = await asyncio.to_thread(load_host_key, host_key_path())
    with binding(listen):
        acceptor = await asyncssh.create_server(
            ConsoleServer,
            listen.host,
            listen.port,
            server_host_keys=[key],
            login_timeout=LOGIN_TIMEOUT,
            allow_pty=True,
            line_editor=True,
            line_history=1000,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            sftp_factory=None,
            encoding="utf-8",
            reuse_address=True,
        )
    host, port = acceptor.sockets[0].getsockname()[:2]
    log.info("SSH admin console listener on %s", ListenAddress(host, port))
    return acceptor


async def serve_console(listen: ListenAddress) -> None:
    """Run the console listener until SIGINT or SIGTERM (runadminssh)."""
    await prepare_console(listens={"ssh": listen})
    acceptor = await start_console(listens={"ssh": listen})
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        acceptor.close()
        await acceptor.wait_closed()
        log.info("stopped")
