"""The product doc "Getting started: Outbound mail", top to bottom, as a new user runs it.

One `everlock serve` process started with the doc's flags (listeners moved to free loopback
ports, mail logging on as the doc's diagnostics suggest), driven with the OpenSSH client,
swaks and smtplib. The internet around it is local: a DNS server answering for the remote
domains and an SMTP server on 127.0.0.2 standing for example.net's MX.
"""

from __future__ import annotations

import re
import smtplib
import time
import tomllib
from email.message import EmailMessage

import pytest

from tests.e2e.installation import Everlock, free_port, submit
from tests.mail.delivery.delivery_world import Zone, running_dns_server, running_sinks
from tests.mail.smtp.test_swaks_walkthrough import assert_transcript, run_swaks

pytestmark = pytest.mark.e2e

RULES = """\
[[rule]]
name = "reports"
scope = "carol@example.com"
match = { header = "Subject", contains = "report" }
fileinto = "Reports"
"""

# The walkthrough's console steps (sections 2 and 3), then what a local recipient needs.
CONSOLE_STEPS = [
    "/mail domains create example.com",
    "/mail domains set example.com submission=on auth=on",
    "/mail domains list",
    "/users add alice change-me",
    "/users grant alice smtp/mail/example.com:alice writer",
    "/mail mailboxes create carol@example.com",
    "/mail rules import",
    "/users add dave change-me",
]


class World:
    """The running installation and the outside world it talks to."""

    def __init__(self, everlock: Everlock, mx, ports: dict[str, int], console: dict[str, str]):
        self.everlock = everlock
        self.mx = mx
        self.ports = ports
        self.console = console

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
    ports = {"ssh": free_port(), "smtp": free_port(), "submission": free_port()}
    with running_dns_server(zone) as dns, running_sinks() as start_sink:
        mx = start_sink("127.0.0.2", remote_port)
        mx.handler.rcpt_replies["busy@example.net"] = "450 4.2.1 Mailbox busy, try again later"
        mx.handler.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user here"
        everlock = Everlock(
            tmp / "data",
            EVERLOCK_LOG="mail.delivery=info,mail.smtp=info",
            EVERLOCK_RESOLVER=dns.spec,
            EVERLOCK_REMOTE_SMTP_PORT=str(remote_port),
        )
        try:
            everlock.start(
                [
                    "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}",
                    "--backend-admin-ssh",
                    "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
                    "--frontend-smtp-submission",
                    "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
                    "--backend-mail-smtp",
                    "--admin-user", "admin", "--admin-password", "change-me",
                ],
                ssh_port=ports["ssh"],
                ready=f"SMTP submission listener on 127.0.0.1:{ports['submission']}",
            )  # fmt: skip
            rules = everlock.data_dir / "everlock-mail" / "rules.toml"
            rules.parent.mkdir(exist_ok=True)
            rules.write_text(RULES)
            console = {line: everlock.console(line) for line in CONSOLE_STEPS}
            yield World(everlock, mx, ports, console)
        finally:
            everlock.close()


def test_startup_log_has_the_documented_shape(world):
    smtp, submission = world.ports["smtp"], world.ports["submission"]
    expected = [
        "[INFO everlock] starting backend-mail-smtp",
        "[INFO everlock] starting frontend-smtp",
        f"[INFO mail.smtp] frontend-smtp: binding inbound listener on 127.0.0.1:{smtp}",
        f"[INFO mail.smtp] SMTP inbound listener on 127.0.0.1:{smtp}",
        f"[INFO mail.smtp] frontend-smtp: binding submission listener on 127.0.0.1:{submission}",
        f"[INFO mail.smtp] SMTP submission listener on 127.0.0.1:{submission}",
    ]
    assert [line for line in world.everlock.log if line in expected] == expected


def test_console_creates_the_domain_the_user_and_the_grant(world):
    assert world.console == {
        "/mail domains create example.com": (
            "mail domain example.com created\n"
            "DKIM off: the DNS backend is not active here (EVERLOCK_DNS)\n"
            "to host the zone here: /dns zones create example.com (with EVERLOCK_DNS=on), then"
            " /mail domains set example.com dkim=on\n"
            "or run /mail domains set example.com dkim=on and publish the TXT records it prints with"
            " your DNS provider\n"
        ),
        "/mail domains set example.com submission=on auth=on": "mail domain example.com: submission=on\n",
        "/mail domains list": (
            "DOMAIN       ENABLED  SUBMISSION  AUTH           DKIM  HOSTNAME\n"
            "example.com  on       on          authenticated  off   mail.example.com (default)\n"
        ),
        "/users add alice change-me": "user alice added\n",
        "/users grant alice smtp/mail/example.com:alice writer": (
            "granted alice writer on smtp/mail/example.com:alice\n"
        ),
        "/mail mailboxes create carol@example.com": "mailbox carol@example.com created\n",
        "/mail rules import": "mail rules imported: version 1, 1 rules\n",
        "/users add dave change-me": "user dave added\n",
    }
    # The stored config, in the product doc's format.
    config = tomllib.loads((world.everlock.data_dir / "everlock-mail/domains/example.com.toml").read_text())
    assert config == {
        "enabled": True,
        "submission": {"enabled": True, "auth": "authenticated"},
        "outbound": {"dkim": {"enabled": False, "selector": "default", "rsa_selector": "default-rsa"}},
    }
    assert world.everlock.console("/mail mailboxes list") == (
        "MAILBOX            MESSAGES\nalice@example.com  0\ncarol@example.com  0\n"
    )


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


def _client_message(subject: str, to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Numbers attached in spirit.\n")
    return message


def _submit(world: World, login: str, message: EmailMessage) -> dict:
    return submit(world.ports["submission"], login, message)


@pytest.mark.parametrize("login", ["alice", "alice@example.com"])
def test_mail_client_delivers_locally_through_rules_and_remotely_through_mx(world, login):
    subject = f"Quarterly report ({login})"
    refused = _submit(world, login, _client_message(subject, "carol@example.com, bob@example.net"))
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
    message = _client_message("Failures", "x@lost.test, x@refused.test, busy@example.net, nobody@example.net")
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
            _submit(world, "alice", _client_message("Disk trouble", "bob@example.net"))
    finally:
        messages.unlink()
        moved.rename(messages)
    assert (exc.value.smtp_code, exc.value.smtp_error) == (451, b"4.3.0 Temporary local problem")
    assert world.everlock.wait_for_log("[ERROR mail.smtp] SMTP:").startswith("[ERROR mail.smtp] SMTP: ")
    # Afterwards the same submission goes through.
    assert _submit(world, "alice", _client_message("Disk fine again", "bob@example.net")) == {}
    world.wait_for_mx("Disk fine again")
