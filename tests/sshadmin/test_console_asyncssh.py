"""The admin console over a real socket with the asyncssh client: every command, every error."""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh
import pytest

from accounts.models import AccessGrant, User
from accounts.services import user_add
from tests.sshadmin.conftest import ADMIN_PASSWORD


def connect(port: int, *, username="admin", password=ADMIN_PASSWORD, **kw):
    return asyncssh.connect(
        "127.0.0.1", port, username=username, password=password, known_hosts=None, client_keys=None, **kw
    )


async def _run(port: int, command: str, **kw):
    async with connect(port, **kw) as conn:
        return await conn.run(command)


def run(console, command: str, **kw) -> asyncssh.SSHCompletedProcess:
    return asyncio.run(_run(console.port, command, **kw))


def ok(console, command: str) -> str:
    result = run(console, command)
    assert (result.exit_status, result.stderr) == (0, ""), (command, result.stderr)
    return result.stdout


def fails(console, command: str) -> str:
    result = run(console, command)
    assert (result.exit_status, result.stdout) == (1, ""), (command, result.stdout)
    return result.stderr


def test_users_commands_end_to_end(console):
    assert ok(console, "/users add alice alice-password-1") == "user alice added\n"
    assert ok(console, "/users add Alice another-password") == "user alice already exists (unchanged)\n"
    assert ok(console, "/users add alice@Example.com alice-password-2") == "user alice@example.com added\n"
    assert ok(console, "/users list") == (
        "USER               ADMIN      GRANTS\n"
        "admin              superuser  0\n"
        "alice              no         0\n"
        "alice@example.com  no         0\n"
    )
    assert fails(console, "/users passwd alice newpw") == (
        "error: weak password: This password is too short. It must contain at least 8 characters. "
        "(--allow-weak sets it anyway)\nusage: /users passwd NAME [PASSWORD] [--allow-weak]\n"
    )
    assert User.objects.get(username="alice").check_password("alice-password-1")
    assert ok(console, "/users passwd alice newpw --allow-weak") == "password of alice changed\n"
    assert User.objects.get(username="alice").check_password("newpw")
    assert ok(console, "/users grant alice smtp/mail/Example.COM:Alice writer") == (
        "granted alice writer on smtp/mail/example.com:alice\n"
    )
    assert ok(console, "/users grant alice smtp/mail/bücher.example reader") == (
        "granted alice reader on smtp/mail/xn--bcher-kva.example\n"
    )
    # Granting again replaces the role.
    assert ok(console, "/users grant alice smtp/mail/xn--bcher-kva.example admin") == (
        "granted alice admin on smtp/mail/xn--bcher-kva.example\n"
    )
    assert ok(console, "/users grants alice") == (
        "USER   RESOURCE                         ROLE\n"
        "alice  smtp/mail/example.com:alice      writer\n"
        "alice  smtp/mail/xn--bcher-kva.example  admin\n"
    )
    assert ok(console, "/users grants") == ok(console, "/users grants alice")
    assert ok(console, "/users grants admin") == "no grants for admin\n"
    assert ok(console, "/users revoke alice smtp/mail/XN--BCHER-KVA.example") == (
        "revoked alice on smtp/mail/xn--bcher-kva.example\n"
    )
    assert ok(console, "/users del alice@example.com") == "user alice@example.com deleted\n"
    assert ok(console, "/users del alice") == "user alice deleted\n"
    assert ok(console, "/users grants") == "no grants\n"
    assert list(User.objects.values_list("username", flat=True)) == ["admin"]


ADD = "/users add NAME [PASSWORD] [--allow-weak]"


def test_help_and_quit(console):
    out = ok(console, "/help")
    assert (
        "/users add NAME [PASSWORD] [--allow-weak]  - add a user (asks for the password when not given)\n"
        in out
    )
    assert "/help [GROUP]  - list the commands, or those of one group (/help users)\n" in out
    assert "/quit  - end the session (exit and quit do too)\n" in out
    assert ok(console, "/help users").splitlines() == [
        "/users add NAME [PASSWORD] [--allow-weak]  - add a user (asks for the password when not given)",
        "/users del NAME  - delete a user and their grants",
        "/users grant NAME RESOURCE ROLE  - give a user a role (reader, writer, admin) on a resource "
        "(smtp/mail/DOMAIN[:LOCAL], admin)",
        "/users grants [NAME]  - list the grants, of everyone or of one user",
        "/users keys add NAME TYPE BASE64 [COMMENT...]  - let a user log into the console with an SSH "
        "public key (a line of id_ed25519.pub)",
        "/users keys del NAME NUMBER|FINGERPRINT  - remove one of a user's SSH keys",
        "/users keys list NAME  - list the SSH keys a user may log in with",
        "/users list  - list the users",
        "/users passwd NAME [PASSWORD] [--allow-weak]  - set a user's password (asks for it when not given)",
        "/users revoke NAME RESOURCE  - remove a user's grant on a resource",
    ]
    assert ok(console, "/quit") == ""


@pytest.mark.parametrize(
    ("command", "stderr"),
    [
        ("/nope", "error: unknown command /nope\nusage: /help\n"),
        ("/users frobnicate", "error: unknown command /users frobnicate\nusage: /help users\n"),
        ("users list", "error: commands start with / (try /help)\nusage: /help\n"),
        ("/users add 'alice", "error: cannot parse the line: No closing quotation\nusage: /help\n"),
        ("/help nogroup", "error: no command group nogroup\nusage: /help [GROUP]\n"),
        ("/users add", f"error: missing arguments\nusage: {ADD}\n"),
        (
            "/users add alice",
            "error: no password: give it, or run this on an interactive console (ssh -t) to be asked\n"
            f"usage: {ADD}\n",
        ),
        ("/users add alice alice-password extra", f"error: too many arguments\nusage: {ADD}\n"),
        ("/users add 'al ice' pw", f"error: invalid login name 'al ice'\nusage: {ADD}\n"),
        (
            "/users add '$(id)' long-password",
            'error: invalid user name \'$(id)\': use a name of ASCII letters, digits, ".", "_", "+" and '
            '"-", starting with a letter or digit, at most 64 characters, optionally followed by @domain\n'
            f"usage: {ADD}\n",
        ),
        ("/users add bob ''", f"error: the password must not be empty\nusage: {ADD}\n"),
        (
            "/users add bob 12345678",
            "error: weak password: This password is too common. This password is entirely numeric. "
            f"(--allow-weak sets it anyway)\nusage: {ADD}\n",
        ),
        ("/users list extra", "error: too many arguments\nusage: /users list\n"),
        (
            "/users passwd bob pw",
            "error: no such user: bob\nusage: /users passwd NAME [PASSWORD] [--allow-weak]\n",
        ),
        ("/users del bob", "error: no such user: bob\nusage: /users del NAME\n"),
        (
            "/users del admin",
            "error: you cannot delete the user you are logged in as\nusage: /users del NAME\n",
        ),
        (
            "/users grant bob smtp/mail/example.com writer",
            "error: no such user: bob\nusage: /users grant NAME RESOURCE ROLE\n",
        ),
        (
            "/users grant carol smtp/mail/exa_mple.com writer",
            "error: malformed resource 'smtp/mail/exa_mple.com': invalid domain name 'exa_mple.com': "
            "bad label 'exa_mple'\n"
            "usage: /users grant NAME RESOURCE ROLE\n",
        ),
        (
            "/users grant carol smtp/mail/example.com owner",
            "error: unknown role 'owner' (one of: reader, writer, admin)\n"
            "usage: /users grant NAME RESOURCE ROLE\n",
        ),
        (
            "/users grant carol smtp/mail/example.com",
            "error: missing arguments\nusage: /users grant NAME RESOURCE ROLE\n",
        ),
        (
            "/users revoke carol smtp/mail/example.com",
            "error: carol has no grant on smtp/mail/example.com\nusage: /users revoke NAME RESOURCE\n",
        ),
        (
            "/users revoke carol nowhere",
            "error: malformed resource 'nowhere' "
            "(expected admin, smtp/mail/DOMAIN or smtp/mail/DOMAIN:LOCAL)\n"
            "usage: /users revoke NAME RESOURCE\n",
        ),
        ("/users grants bob", "error: no such user: bob\nusage: /users grants [NAME]\n"),
    ],
)
def test_bad_input_prints_error_and_usage_and_changes_nothing(console, command, stderr):
    user_add(name="carol", password="pw")
    before = (
        list(User.objects.values_list("username", "password")),
        list(AccessGrant.objects.values_list("user__username", "resource", "role")),
    )
    assert fails(console, command) == stderr
    after = (
        list(User.objects.values_list("username", "password")),
        list(AccessGrant.objects.values_list("user__username", "resource", "role")),
    )
    assert after == before


@contextlib.asynccontextmanager
async def terminal(console):
    """An interactive console session (a pty), logged in as the admin."""
    async with connect(console.port) as conn:
        yield await conn.create_process(term_type="xterm", term_size=(120, 40))


def test_interactive_pty_session(console):
    async def session():
        async with terminal(console) as process:
            out = await process.stdout.readuntil("everlock> ")
            assert (
                out == "Everlock admin console. /help lists the commands, tab completes them,"
                " /quit ends the session.\r\neverlock> "
            )
            process.stdin.write("/users add dave dave-password\r")
            out = await process.stdout.readuntil("everlock> ")
            # The line editor echoes the typed line, then the command's output follows.
            assert out == "/users add dave dave-password\r\nuser dave added\r\neverlock> "
            process.stdin.write("/users nope\r")
            out = await process.stdout.readuntil("everlock> ")
            assert (
                out == "/users nope\r\nerror: unknown command /users nope\r\nusage: /help users\r\neverlock> "
            )
            # History: the up arrow brings back the previous line; it is edited and run again.
            process.stdin.write("\x1b[A")
            process.stdin.write("\x7f\x7f\x7f\x7flist\r")
            out = await process.stdout.readuntil("everlock> ")
            assert out.endswith(
                "\r\nUSER   ADMIN      GRANTS\r\nadmin  superuser  0\r\ndave   no         0\r\neverlock> "
            )
            process.stdin.write("/quit\r")
            await process.wait_closed()
            return process.exit_status

    assert asyncio.run(session()) == 0


def test_passwords_asked_twice_without_echo_on_a_terminal(console):
    async def session():
        async with terminal(console) as process:
            await process.stdout.readuntil("everlock> ")
            transcript = []

            async def answer(prompt: str, typed: str) -> None:
                transcript.append(await process.stdout.readuntil(prompt))
                process.stdin.write(typed + "\r")

            process.stdin.write("/users add dave\r")
            await answer("New password: ", "dave's long password")
            await answer("Repeat the password: ", "dave's long password")
            transcript.append(await process.stdout.readuntil("everlock> "))
            process.stdin.write("/users passwd dave\r")
            await answer("New password: ", "one password here")
            await answer("Repeat the password: ", "another one here")
            transcript.append(await process.stdout.readuntil("everlock> "))
            process.stdin.write("/users passwd dave\r")
            await answer("New password: ", "short")
            await answer("Repeat the password: ", "short")
            transcript.append(await process.stdout.readuntil("everlock> "))
            # The history holds the commands, never a password.
            process.stdin.write("\x1b[A")
            transcript.append(await process.stdout.readuntil("/users passwd dave"))
            process.stdin.write("\x15/quit\r")
            await process.wait_closed()
            return "".join(transcript)

    transcript = asyncio.run(session())
    assert transcript == (
        "/users add dave\r\nNew password: \r\nRepeat the password: \r\nuser dave added\r\neverlock> "
        "/users passwd dave\r\nNew password: \r\nRepeat the password: \r\n"
        "error: the two passwords differ; nothing changed\r\n"
        "usage: /users passwd NAME [PASSWORD] [--allow-weak]\r\neverlock> "
        "/users passwd dave\r\nNew password: \r\nRepeat the password: \r\n"
        "error: weak password: This password is too short. It must contain at least 8 characters. "
        "(--allow-weak sets it anyway)\r\nusage: /users passwd NAME [PASSWORD] [--allow-weak]\r\neverlock> "
        "/users passwd dave"
    )
    assert User.objects.get(username="dave").check_password("dave's long password")


def test_piped_lines_without_pty(console):
    async def session():
        async with connect(console.port) as conn:
            return await conn.run(input="/users add erin erin-password\n/users nope\n/users list\n")

    result = asyncio.run(session())
    assert result.exit_status == 1
    assert result.stdout == (
        "user erin added\nUSER   ADMIN      GRANTS\nadmin  superuser  0\nerin   no         0\n"
    )
    assert result.stderr == "error: unknown command /users nope\nusage: /help users\n"


def test_wrong_password_and_non_admin_are_refused(console):
    user_add(name="frank", password="pw")
    with pytest.raises(asyncssh.PermissionDenied):
        run(console, "/users list", password="wrong")
    with pytest.raises(asyncssh.PermissionDenied):
        run(console, "/users list", username="nobody", password="x")
    # frank's password is right, but frank has no admin rights.
    with pytest.raises(asyncssh.PermissionDenied):
        run(console, "/users list", username="frank", password="pw")
    ok(console, "/users grant frank admin admin")
    assert run(console, "/users grants frank", username="frank", password="pw").stdout == (
        "USER   RESOURCE  ROLE\nfrank  admin     admin\n"
    )


def test_throttle_refuses_an_address_but_not_others(console, settings):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    for _ in range(3):
        with pytest.raises(asyncssh.PermissionDenied):
            run(console, "/users list", password="guess")
    # From 127.0.0.1 even the right password is refused now.
    with pytest.raises(asyncssh.PermissionDenied):
        run(console, "/users list")
    # From another address the admin still gets in (slowed a little by the login's failures).
    result = run(console, "/users list", local_addr=("127.0.0.2", 0))
    assert (result.exit_status, result.stdout) == (0, "USER   ADMIN      GRANTS\nadmin  superuser  0\n")


def test_public_key_login(console):
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    admin = User.objects.get(username="admin")
    admin.ssh_authorized_keys = "# the laptop\n" + key.export_public_key().decode() + "not a key\n"
    admin.save()

    async def login(client_key, username="admin"):
        async with asyncssh.connect(
            "127.0.0.1",
            console.port,
            username=username,
            client_keys=[client_key],
            password=None,
            known_hosts=None,
            preferred_auth="publickey",
        ) as conn:
            return await conn.run("/users list")

    assert asyncio.run(login(key)).stdout == "USER   ADMIN      GRANTS\nadmin  superuser  0\n"
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login(other))
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login(key, username="nobody"))


def test_keys_added_and_removed_through_the_console(console):
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode().strip()  # "ssh-ed25519 AAAA..."
    fingerprint = key.get_fingerprint()

    async def key_login():
        async with asyncssh.connect(
            "127.0.0.1",
            console.port,
            username="admin",
            client_keys=[key],
            password=None,
            known_hosts=None,
            preferred_auth="publickey",
        ) as conn:
            return await conn.run("/users keys list admin")

    assert ok(console, "/users keys list admin") == "no SSH keys for admin\n"
    assert (
        ok(console, f"/users keys add admin {public} admin@laptop") == f"key {fingerprint} added for admin\n"
    )
    assert ok(console, f"/users keys add ADMIN {public}") == f"key {fingerprint} already allowed for admin\n"
    listing = f"#  TYPE         FINGERPRINT  COMMENT\n1  ssh-ed25519  {fingerprint}  admin@laptop\n"
    assert ok(console, "/users keys list admin") == listing.replace(
        "FINGERPRINT", "FINGERPRINT".ljust(len(fingerprint))
    )
    assert asyncio.run(key_login()).stdout == ok(console, "/users keys list admin")

    assert fails(console, "/users keys add admin ssh-ed25519 bm90IGEga2V5") == (
        "error: not a valid ssh-ed25519 public key\nusage: /users keys add NAME TYPE BASE64 [COMMENT...]\n"
    )
    assert fails(console, "/users keys del admin 2").startswith("error: admin has no key 2 ")
    assert ok(console, f"/users keys del admin {fingerprint}") == f"key {fingerprint} removed from admin\n"
    assert User.objects.get(username="admin").ssh_authorized_keys == ""
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(key_login())


def test_no_forwarding_and_no_subsystems(console):
    async def probe():
        async with asyncssh.connect(
            "127.0.0.1",
            console.port,
            username="admin",
            password=ADMIN_PASSWORD,
            known_hosts=None,
            client_keys=None,
        ) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", console.port)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.start_sftp_client()
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process(subsystem="anything")
            return (await conn.run("/users list")).exit_status

    assert asyncio.run(probe()) == 0


def test_host_key_is_kept_across_restarts(console_runner, tmp_path):
    async def host_key(port):
        async with asyncssh.connect(
            "127.0.0.1", port, username="admin", password=ADMIN_PASSWORD, known_hosts=None, client_keys=None
        ) as conn:
            return conn.get_server_host_key().export_public_key()

    first = console_runner.start(tmp_path)
    key1 = asyncio.run(host_key(first.port))
    first.stop()
    second = console_runner.start(tmp_path)
    assert second.port != 0
    key2 = asyncio.run(host_key(second.port))
    assert key1 == key2
    stored = (tmp_path / "ssh_host_ed25519_key").stat()
    assert oct(stored.st_mode & 0o777) == "0o600"
    assert key1 == asyncssh.read_private_key(str(tmp_path / "ssh_host_ed25519_key")).export_public_key()


def test_an_admin_removed_mid_session_runs_nothing_more(console):
    user_add(name="grace", password="pw", is_admin=True)

    async def session():
        async with asyncssh.connect(
            "127.0.0.1", console.port, username="grace", password="pw", known_hosts=None, client_keys=None
        ) as conn:
            process = await conn.create_process(term_type="xterm")
            await process.stdout.readuntil("everlock> ")
            process.stdin.write("/users add henry henry-password\r")
            assert (await process.stdout.readuntil("everlock> ")).endswith("user henry added\r\neverlock> ")
            # Another admin deletes grace while her session is open.
            assert await asyncio.to_thread(ok, console, "/users del grace") == "user grace deleted\n"
            process.stdin.write("/users add ivan ivan-password\r")
            rest = await process.stdout.read()
            await process.wait_closed()
            return process.exit_status, rest

    status, rest = asyncio.run(session())
    assert (status, rest) == (
        1,
        "/users add ivan ivan-password\r\nerror: your admin rights were withdrawn; the session ends\r\n",
    )
    assert list(User.objects.values_list("username", flat=True)) == ["admin", "henry"]
