"""README.md's walkthrough "Getting started: outbound mail", top to bottom, as a new user runs it.

The commands come from README.md itself: its `sh` blocks run in order (the first one, `everlock
serve`, starts the installation), with the listeners moved to free loopback ports, in a
directory whose `var` is the installation's data dir, so `var/everlock-mail/rules.toml` is
where the README says. An untagged block right after an `sh` block is what those commands
print: its lines must come out in that order. `text` blocks are illustrations (the hosted-DNS
variant, a log of failures) that other tests here check. The logging is the default one.

The internet around it is local: a DNS server answering for the remote domains and an SMTP
server on 127.0.0.2 standing for example.net's MX.
"""

from __future__ import annotations

import os
import re
import shlex
import smtplib
import subprocess
import time
import tomllib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.e2e.installation import Everlock, message_from_alice, submit
from tests.mail.delivery.delivery_world import Zone, running_dns_server, running_sinks
from tests.mail.smtp.test_swaks_walkthrough import assert_transcript, run_swaks
from tests.ports import free_port
from tests.sshadmin.openssh import SSH_OPTIONS, askpass_env

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Getting started: outbound mail"


@dataclass
class Block:
    info: str  # the fence's language tag: "sh", "text" or ""
    text: str
    output: Block | None = None  # the untagged block right after an sh block


def walkthrough_blocks() -> list[Block]:
    """The fenced blocks of README.md's walkthrough section, in order; sh blocks carry the
    untagged block after them as their output."""
    readme = README.read_text()
    section = readme[readme.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    blocks = [
        Block(m["info"], m["text"])
        for m in re.finditer(r"^```(?P<info>\w*)\n(?P<text>.*?)^```$", section, re.MULTILINE | re.DOTALL)
    ]
    out = []
    for block in blocks:
        if block.info == "" and out and out[-1].info == "sh" and out[-1].output is None:
            out[-1].output = block
        else:
            out.append(block)
    return out


def localize(text: str, ports: dict[int, int]) -> str:
    """The README's text with its ports (2222, 2525, 2587, 1143, 1993) moved to the test's free
    ports and its wildcard address to loopback."""
    text = text.replace("0.0.0.0:", "127.0.0.1:")
    return re.sub(r"\b(2222|2525|2587|1143|1993)\b", lambda m: str(ports[int(m[1])]), text)


def ssh_wrapper(directory: Path) -> Path:
    """A `ssh` first on the PATH: the real client with the test's options (no known_hosts, the
    password from SSH_ASKPASS), so the README's ssh lines run as written."""
    directory.mkdir()
    wrapper = directory / "ssh"
    wrapper.write_text(
        f'#!/bin/sh\nexec /usr/bin/ssh {" ".join(SSH_OPTIONS)} -o PubkeyAuthentication=no "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


def readme_ports(ports: dict[str, int]) -> dict[int, int]:
    """The README's port numbers -> the test's."""
    readme = {"ssh": 2222, "smtp": 2525, "submission": 2587, "imap": 1143, "imaps": 1993}
    return {readme[name]: port for name, port in ports.items()}


@dataclass
class Ran:
    block: Block
    command: str
    result: subprocess.CompletedProcess


class World:
    """The running installation, the README blocks as run, and the outside world."""

    def __init__(self, everlock: Everlock, mx, ports: dict[str, int], ran: list[Ran], serve: Block):
        self.everlock = everlock
        self.mx = mx
        self.ports = ports
        self.readme_ports = readme_ports(ports)
        self.ran = ran
        self.serve = serve

    def wait_for_mx(self, subject: str, count: int = 1, timeout: float = 30) -> list:
        """The messages with `subject` example.net's MX received, once there are `count`."""
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.mx.received if f"Subject: {subject}\r\n".encode() in r.data]
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"example.net's MX got no {subject!r}: {self.mx.received}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkthrough")
    zone = Zone()
    zone.add("example.net", "MX", "10 mx.example.net.")
    zone.add("mx.example.net", "A", "127.0.0.2")
    # A remote domain whose MX host does not listen, and one whose DNS fails.
    zone.add("refused.test", "MX", "10 mx.refused.test.")
    zone.add("mx.refused.test", "A", "127.0.0.3")
    zone.servfail.add("lost.test.")
    remote_port = free_port("127.0.0.2", "127.0.0.3")
    ports = {name: free_port() for name in ("ssh", "smtp", "submission", "imap", "imaps")}
    serve, *steps = walkthrough_blocks()
    assert serve.info == "sh" and serve.text.startswith("everlock serve "), serve
    with running_dns_server(zone) as dns, running_sinks() as start_sink:
        mx = start_sink("127.0.0.2", remote_port)
        mx.handler.rcpt_replies["busy@example.net"] = "450 4.2.1 Mailbox busy, try again later"
        mx.handler.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user here"
        everlock = Everlock(
            tmp / "var", EVERLOCK_RESOLVER=dns.spec, EVERLOCK_REMOTE_SMTP_PORT=str(remote_port)
        )
        try:
            flags = shlex.split(localize(serve.text, readme_ports(ports)).replace("\\\n", " "))[2:]
            everlock.start(
                [*flags, "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}"],
                ssh_port=ports["ssh"],
                ready=f"SMTP submission listener on 127.0.0.1:{ports['submission']}",
            )
            env = askpass_env(tmp, "change-me")
            env["PATH"] = f"{ssh_wrapper(tmp / 'bin')}{os.pathsep}{env['PATH']}"
            ran = []
            for block in steps:
                if block.info != "sh":
                    continue
                command = localize(block.text, readme_ports(ports))
                result = subprocess.run(
                    ["bash", "-e", "-c", command],
                    cwd=tmp,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                ran.append(Ran(block, command, result))
            everlock.console("/users add dave change-me")
            yield World(everlock, mx, ports, ran, serve)
        finally:
            everlock.close()


def test_readme_commands_print_what_the_readme_shows(world):
    # Steps 2, 3, 4, 6 and 7 (the first block, step 1, started the server).
    assert len(world.ran) == 5, [r.command for r in world.ran]
    for ran in world.ran:
        assert (ran.result.returncode, ran.result.stderr) == (0, ""), (ran.command, ran.result)
        if ran.block.output is None:
            continue
        printed = [line.strip() for line in ran.result.stdout.splitlines()]
        expected = [line.strip() for line in ran.block.output.text.splitlines()]
        position = 0
        for line in expected:
            assert line in printed[position:], (ran.command, expected, printed)
            position = printed.index(line, position) + 1


def test_readme_rule_files_carols_report(world):
    """Step 6 ends showing the rule at work: carol's report is in Reports."""
    last = world.ran[3]
    assert last.block.text.rstrip().endswith("'/mail messages list carol@example.com'")
    lines = last.result.stdout.splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("ID "))) :]
    assert rows[0].split() == ["ID", "FOLDER", "FLAGS", "FROM", "SUBJECT"]
    assert [row.split()[1:] for row in rows[1:]] == [
        ["Reports", "-", "alice@example.com", "Monthly", "report"]
    ]
    assert "mail rules imported: version 1, 1 rules" in lines


def test_startup_log_has_the_documented_shape(world):
    expected = localize(world.serve.output.text, world.readme_ports).splitlines()
    assert expected[0] == "[INFO everlock] starting backend-mail-smtp"
    assert [line for line in world.everlock.log if line in expected] == expected
    # At the default log level the Celery worker's banner and warnings stay out of the log.
    chatter = ("celery@", "-------------- ", "superuser privileges", "No hostname was supplied", "Warning")
    assert [line for line in world.everlock.log if any(c in line for c in chatter)] == []


def test_console_creates_the_domain_the_user_and_the_grant(world):
    step2, step3 = world.ran[0].result.stdout, world.ran[1].result.stdout
    assert step2 == (
        "mail domain example.com created\n"
        "DKIM off: the DNS backend is not active here (EVERLOCK_DNS)\n"
        "to host the zone here: /dns zones create example.com (with EVERLOCK_DNS=on), then"
        " /mail domains set example.com dkim=on\n"
        "or run /mail domains set example.com dkim=on and publish the TXT records it prints with"
        " your DNS provider\n"
        "the other records the domain needs: /mail domains records example.com prints them,"
        " /mail domains check example.com checks them\n"
        "mail domain example.com: submission=on\n"
        "DOMAIN       ENABLED  SUBMISSION  AUTH           DKIM  HOSTNAME\n"
        "example.com  on       on          authenticated  off   mail.example.com (default)\n"
    )
    assert step3 == "user alice added\ngranted alice writer on smtp/mail/example.com:alice\n"
    # The stored config, in the product doc's format.
    config = tomllib.loads((world.everlock.data_dir / "everlock-mail/domains/example.com.toml").read_text())
    assert config == {
        "enabled": True,
        "submission": {"enabled": True, "auth": "authenticated"},
        "outbound": {"dkim": {"enabled": False, "selector": "default", "rsa_selector": "default-rsa"}},
    }
    mailboxes = world.everlock.console("/mail mailboxes list").splitlines()
    assert [line.split()[0] for line in mailboxes] == ["MAILBOX", "alice@example.com", "carol@example.com"]


@pytest.mark.parametrize("auth_user", ["alice", "alice@example.com"])
def test_swaks_submission_reaches_the_remote_mx(world, auth_user):
    port = world.ports["submission"]
    before = len(world.wait_for_mx("Submission test", count=0, timeout=0))
    assert_transcript(run_swaks(port, auth_user), port)
    received = world.wait_for_mx("Submission test", count=before + 1)[-1]
    assert (received.mail_from, received.rcpt_tos, received.helo) == (
        "alice@example.com",
        ["bob@example.net"],
        "mail.example.com",
    )
    assert b"\r\n\r\nHello from Everlock submission" in received.data


def _submit(world: World, login: str, message: EmailMessage) -> dict:
    return submit(world.ports["submission"], login, message)


@pytest.mark.parametrize("login", ["alice", "alice@example.com"])
def test_mail_client_delivers_locally_through_rules_and_remotely_through_mx(world, login):
    subject = f"Quarterly report ({login})"
    refused = _submit(world, login, message_from_alice(subject, "carol@example.com, bob@example.net"))
    assert refused == {}
    received = world.wait_for_mx(subject)[0]
    assert received.rcpt_tos == ["bob@example.net"]
    assert b"DKIM-Signature:" not in received.data  # DKIM is off until set up (section 2)

    # carol@example.com is local: the rule filed it into Reports instead of the inbox.
    listing = world.everlock.console("/mail messages list carol@example.com").splitlines()
    assert listing[0].split() == ["ID", "FOLDER", "FLAGS", "FROM", "SUBJECT"]
    row = next(line for line in listing if line.endswith(subject))
    assert re.fullmatch(rf"\d+ +Reports +- +Alice <alice@example\.com> +{re.escape(subject)}", row), listing
    # The sender keeps a copy in `sent`.
    sent = world.everlock.console("/mail messages list alice@example.com sent")
    assert any(line.endswith(subject) for line in sent.splitlines())
    copy = world.everlock.console(f"/mail messages show {sent.splitlines()[1].split()[0]}")
    assert f"Subject: {subject}" in copy and "Numbers attached in spirit." in copy


def test_submission_needs_auth_and_a_grant(world):
    """Section 4: without AUTH, with a wrong password, or without the grant, nothing is sent."""
    with smtplib.SMTP("127.0.0.1", world.ports["submission"], timeout=30) as client:
        client.ehlo("client.example.com")
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            client.login("alice", "wrong")
        assert (exc.value.smtp_code, exc.value.smtp_error) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
    with smtplib.SMTP("127.0.0.1", world.ports["submission"], timeout=30) as client:
        client.login("dave", "change-me")
        assert client.mail("alice@example.com") == (553, b"5.7.1 Sender address not allowed for this user")


def test_delivery_failures_are_logged(world):
    everlock = world.everlock
    message = message_from_alice(
        "Failures", "x@lost.test, x@refused.test, busy@example.net, nobody@example.net"
    )
    assert _submit(world, "alice", message) == {}

    mx_failure = everlock.wait_for_log("MX lookup for lost.test failed")
    assert mx_failure.startswith("[INFO mail.delivery] MX lookup for lost.test failed: lost.test MX: ")
    assert mx_failure.endswith("answered SERVFAIL")
    port = world.mx.port
    assert everlock.wait_for_log("connect to mx.refused.test failed") == (
        "[INFO mail.delivery] connect to mx.refused.test failed: "
        f"mx.refused.test [127.0.0.3]:{port}: [Errno 111] Connection refused"
    )
    assert everlock.wait_for_log("to refused.test deferred").endswith(
        f"deferred: mx.refused.test [127.0.0.3]:{port}: [Errno 111] Connection refused"
    )
    assert everlock.wait_for_log("replied to busy@example.net") == (
        "[INFO mail.delivery] mx.example.net [127.0.0.2] replied to busy@example.net: "
        "450 4.2.1 Mailbox busy, try again later"
    )
    assert everlock.wait_for_log("replied to nobody@example.net") == (
        "[INFO mail.delivery] mx.example.net [127.0.0.2] replied to nobody@example.net: "
        "550 5.1.1 No such user here"
    )
    # The permanent failure comes back to alice as a bounce.
    everlock.wait_for_log("failed for nobody@example.net; DSN sent to alice@example.com")
    inbox = everlock.console("/mail messages list alice@example.com inbox").splitlines()
    assert len(inbox) == 2 and "Undelivered Mail Returned to Sender" in inbox[1], inbox


def test_local_storage_failure_answers_451_after_data(world):
    messages = world.everlock.data_dir / "messages"
    moved = messages.with_name("messages.saved")
    messages.rename(moved)
    messages.write_text("not a directory")
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            _submit(world, "alice", message_from_alice("Disk trouble", "bob@example.net"))
    finally:
        messages.unlink()
        moved.rename(messages)
    assert (exc.value.smtp_code, exc.value.smtp_error) == (451, b"4.3.0 Temporary local problem")
    assert world.everlock.wait_for_log("[ERROR mail.smtp] SMTP:").startswith("[ERROR mail.smtp] SMTP: ")
    # Afterwards the same submission goes through.
    assert _submit(world, "alice", message_from_alice("Disk fine again", "bob@example.net")) == {}
    world.wait_for_mx("Disk fine again")
