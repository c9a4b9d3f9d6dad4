"""The product doc's swaks command, verbatim but for the port, gives the documented transcript."""

import shutil
import subprocess

import pytest

from mail.models import Message, OutboundDelivery

# The "Expected output shape" of the product doc, section 4: each line is a prefix of one
# line of swaks' output, in this order.
DOCUMENTED = [
    "=== Trying 127.0.0.1:{port}...",
    "<~ 220",
    "~> EHLO",
    "<~ 250-AUTH PLAIN LOGIN",
    "~> AUTH",
    "<~ 235 2.7.0 Authentication successful",
    "~> MAIL FROM:<alice@example.com>",
    "<~ 250",
    "~> RCPT TO:<bob@example.net>",
    "<~ 250",
    "~> DATA",
    "<~ 354",
    "~> .",
    "<~ 250 2.0.0 Accepted",
]
EXACT = {"<~ 250-AUTH PLAIN LOGIN", "<~ 235 2.7.0 Authentication successful", "<~ 250 2.0.0 Accepted"}


def ensure_swaks() -> str:
    path = shutil.which("swaks")
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "swaks"], check=True, capture_output=True)
        path = shutil.which("swaks")
    assert path is not None
    return path


def run_swaks(port: int, auth_user: str) -> list[str]:
    result = subprocess.run(
        [
            ensure_swaks(),
            "--server",
            f"127.0.0.1:{port}",
            "--auth",
            "--auth-user",
            auth_user,
            "--auth-password",
            "change-me",
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.net",
            "--header",
            "Subject: Submission test",
            "--body",
            "Hello from Everlock submission",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [normalize(line) for line in result.stdout.splitlines()]


def normalize(line: str) -> str:
    """swaks prints "<-  220" and " -> EHLO" in plain text ("<~"/"~>" once TLS is on); the
    product doc shows every exchange as "<~ "/"~> ". Only the arrows are rewritten."""
    line = line.strip()
    for plain, shown in (("<-", "<~"), ("->", "~>"), ("<~", "<~"), ("~>", "~>")):
        if line.startswith(plain):
            return f"{shown} {line[len(plain) :].strip()}"
    return line


def assert_transcript(lines: list[str], port: int) -> None:
    position = 0
    for expected in DOCUMENTED:
        expected = expected.format(port=port)
        while position < len(lines):
            line = lines[position]
            position += 1
            if (line == expected) if expected in EXACT else line.startswith(expected):
                break
        else:
            pytest.fail(f"{expected!r} not found in order in:\n" + "\n".join(lines))


@pytest.mark.parametrize("auth_user", ["alice", "alice@example.com"])
def test_swaks_submission_transcript(smtp, example_com, auth_user):
    lines = run_swaks(smtp.submission_port, auth_user)
    assert_transcript(lines, smtp.submission_port)
    queued = OutboundDelivery.objects.get()
    assert (queued.envelope_from, queued.domain, queued.helo_hostname) == (
        "alice@example.com",
        "example.net",
        "mail.example.com",
    )
    assert [r.address for r in queued.recipients.all()] == ["bob@example.net"]
    sent = Message.objects.get()
    assert (sent.folder.mailbox.address, sent.folder.name, sent.subject) == (
        "alice@example.com",
        "sent",
        "Submission test",
    )
    assert sent.content_id == queued.content_id
