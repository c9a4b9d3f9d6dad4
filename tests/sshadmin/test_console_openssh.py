"""The admin console with the OpenSSH client: exec mode, a terminal session, public-key login."""

from __future__ import annotations

import subprocess

import pytest

from accounts.models import User
from tests.sshadmin.conftest import ADMIN_PASSWORD
from tests.sshadmin.openssh import PtySession, askpass_env, key_args, password_args, ssh_exec


def test_exec_mode_output_and_exit_status(console, tmp_path):
    added = ssh_exec(console.port, "/users add alice alice-s3cret", tmp=tmp_path, password=ADMIN_PASSWORD)
    assert (added.returncode, added.stdout, added.stderr) == (0, "user alice added\n", "")
    granted = ssh_exec(
        console.port,
        "/users grant alice smtp/mail/example.com:alice writer",
        tmp=tmp_path,
        password=ADMIN_PASSWORD,
    )
    assert (granted.returncode, granted.stdout) == (
        0,
        "granted alice writer on smtp/mail/example.com:alice\n",
    )
    listed = ssh_exec(console.port, "/users list", tmp=tmp_path, password=ADMIN_PASSWORD)
    assert (listed.returncode, listed.stdout) == (
        0,
        "USER   ADMIN      GRANTS\nadmin  superuser  0\nalice  no         1\n",
    )
    bad = ssh_exec(
        console.port, "/users grant alice smtp/mail/example.com boss", tmp=tmp_path, password=ADMIN_PASSWORD
    )
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        1,
        "",
        "error: unknown role 'boss' (one of: reader, writer, admin)\n"
        "usage: /users grant NAME RESOURCE ROLE\n",
    )
    unknown = ssh_exec(console.port, "/frobnicate", tmp=tmp_path, password=ADMIN_PASSWORD)
    assert (unknown.returncode, unknown.stderr) == (1, "error: unknown command /frobnicate\nusage: /help\n")


def test_wrong_password_is_refused(console, tmp_path):
    result = ssh_exec(console.port, "/users list", tmp=tmp_path, password="not-the-password")
    assert result.returncode == 255
    assert result.stdout == ""
    assert "Permission denied" in result.stderr


def test_terminal_session_with_line_editing(console, tmp_path):
    session = PtySession(password_args(console.port, "admin"), askpass_env(tmp_path, ADMIN_PASSWORD))
    assert session.read_until("everlock> ").endswith(
        "Everlock admin console. /help lists the commands, tab completes them, /quit ends the session."
        "\r\neverlock> "
    )
    session.send("/users add bob bob-password\r")
    assert session.read_until("everlock> ") == "/users add bob bob-password\r\nuser bob added\r\neverlock> "
    # ^A moves to the start of the line, where the missing "/" is typed.
    session.send("users passwd bob bob-password-2\x01/\r")
    out = session.read_until("everlock> ")
    assert out.endswith("password of bob changed\r\neverlock> ")
    session.send("/users del nobody\r")
    assert session.read_until("everlock> ").endswith(
        "error: no such user: nobody\r\nusage: /users del NAME\r\neverlock> "
    )
    session.send("/quit\r")
    assert session.wait() == 0
    assert User.objects.get(username="bob").check_password("bob-password-2")


def _terminal(console, tmp_path) -> PtySession:
    session = PtySession(password_args(console.port, "admin"), askpass_env(tmp_path, ADMIN_PASSWORD))
    session.read_until("everlock> ")
    return session


def test_ctrl_c_discards_the_typed_line(console, tmp_path):
    session = _terminal(console, tmp_path)
    session.send("abc\x03")
    session.send("/users add carol carol-password\r")
    out = session.read_until("everlock> ")
    assert out.endswith("user carol added\r\neverlock> "), out
    assert "error" not in out
    assert User.objects.filter(username="carol").exists()
    session.send("/quit\r")
    assert session.wait() == 0


def test_tab_completes_commands_and_sub_commands(console, tmp_path):
    session = _terminal(console, tmp_path)
    # "/us" -> "/users ", "ad" -> "add ": the line runs as /users add erin erin-password.
    session.send("/us\tad\terin erin-password\r")
    out = session.read_until("everlock> ")
    assert out.endswith("user erin added\r\neverlock> "), out
    assert User.objects.filter(username="erin").exists()
    # Three levels: /mail domains list.
    session.send("/ma\tdom\tli\t\r")
    assert session.read_until("everlock> ").endswith("no mail domains\r\neverlock> ")
    # Nothing to add ("/mail m" is mailboxes or messages; "/zz" is nothing): the bell rings.
    for partial in ("/mail m", "/zz"):
        session.send(f"{partial}\t")
        assert session.read_until("\x07").endswith(f"{partial}\x07")
        session.send("\x15")  # ^U erases the line
    session.send("/quit\r")
    assert session.wait() == 0


@pytest.mark.parametrize("word", ["exit", "quit"])
def test_exit_and_quit_end_the_session(console, tmp_path, word):
    session = _terminal(console, tmp_path)
    session.send(f"{word}\r")
    assert session.wait() == 0
    result = ssh_exec(console.port, word, tmp=tmp_path, password=ADMIN_PASSWORD)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_public_key_login_with_openssh(console, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    args = key_args(console.port, "admin", key)
    refused = subprocess.run([*args, "/users list"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 255
    admin = User.objects.get(username="admin")
    admin.ssh_authorized_keys = (tmp_path / "id_ed25519.pub").read_text()
    admin.save()
    accepted = subprocess.run([*args, "/users list"], capture_output=True, text=True, timeout=60)
    assert (accepted.returncode, accepted.stdout) == (0, "USER   ADMIN      GRANTS\nadmin  superuser  0\n")


def test_sftp_subsystem_is_refused(console, tmp_path):
    result = subprocess.run(
        [*password_args(console.port, "admin"), "-s", "sftp"],
        env=askpass_env(tmp_path, ADMIN_PASSWORD),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "subsystem request failed" in result.stderr
