"""Hostile clients: relaying tricks, SMTP smuggling, STARTTLS injection, bad bytes, AUTH
brute force. Each case asserts the exact replies and that nothing was stored or queued."""

import base64

import pytest

from mail.smtp.server import plain_path
from tests.mail.smtp.conftest import RawClient, nothing_stored


@pytest.fixture
def raw(smtp, example_com):
    clients = []

    def connect(port=None) -> RawClient:
        client = RawClient(port or smtp.inbound_port)
        clients.append(client)
        assert client.reply() == b"220 mx.example.com ESMTP Everlock"
        assert client.cmd(b"EHLO mx.example.net").endswith(b"250 HELP")
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        (b"<bob@example.net>", b"554 5.7.1 Relaying denied"),
        (b"<bob%example.net@example.com>", b"553 5.1.3 Invalid recipient address"),
        (b'<"bob@example.net"@example.com>', b"553 5.1.3 Invalid recipient address"),
        (b"<@example.com:bob@example.net>", b"554 5.7.1 Relaying denied"),
        (b"<@example.net:bob@example.com>", b"250 2.1.5 Recipient OK"),
        (b"<example.net!bob@example.com>", b"550 5.1.1 Mailbox unavailable"),
        (b"<bob@example.net@example.com>", b"553 5.1.3 Error: malformed address"),
        (b"<bob@[127.0.0.1]>", b"553 5.1.3 Invalid recipient address"),
        (b"<bob@example.com.example.net>", b"554 5.7.1 Relaying denied"),
        (b"<bob>", b"553 5.1.3 Invalid recipient address"),
    ],
)
def test_relay_variants(raw, rcpt, reply):
    client = raw()
    assert client.cmd(b"MAIL FROM:<carol@example.net>") == b"250 2.1.0 Sender OK"
    assert client.cmd(b"RCPT TO:" + rcpt) == reply
    assert nothing_stored()


SMUGGLED = (
    b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"
)


@pytest.mark.parametrize(
    "separator",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\n", b"\r"],
    ids=["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "CRLF.CR", "CR.CRLF", "bare-LF", "bare-CR"],
)
def test_smuggling_variants_are_refused(raw, separator):
    client = raw()
    assert client.cmd(b"MAIL FROM:<carol@example.net>") == b"250 2.1.0 Sender OK"
    assert client.cmd(b"RCPT TO:<bob@example.com>") == b"250 2.1.5 Recipient OK"
    assert client.cmd(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>"
    client.send(b"Subject: first\r\n\r\nhello" + separator + SMUGGLED + b".\r\n")
    assert client.reply() == b"550 5.6.0 Bare CR or LF in message data"
    assert client.cmd(b"NOOP") == b"250 2.0.0 OK"
    assert client.cmd(b"QUIT") == b"221 2.0.0 Bye"
    assert nothing_stored()


def test_starttls_injection_is_not_executed(raw):
    client = raw()
    client.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.com>\r\n")
    assert client.reply() == b"220 2.0.0 Ready to start TLS"
    client.starttls()
    assert client.cmd(b"RCPT TO:<bob@example.com>") == b"503 5.5.1 Send HELO first"
    assert client.cmd(b"EHLO mx.example.net").endswith(b"250 HELP")
    assert client.cmd(b"RCPT TO:<bob@example.com>") == b"503 5.5.1 Need MAIL command"
    assert client.cmd(b"STARTTLS") == b"503 5.5.1 TLS already active"
    assert nothing_stored()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"MAIL FROM:<car\x00ol@example.net>", b"553 5.1.7 Invalid sender address"),
        (b"MAIL FROM:<car\xffol@example.net>", b"553 5.1.7 Invalid sender address"),
        (b"MAIL FROM:<carol@exa\xc3mple.net>", b"553 5.1.7 Invalid sender address"),
    ],
)
def test_bad_bytes_in_sender(raw, command, reply):
    client = raw()
    assert client.cmd(command) == reply
    assert nothing_stored()


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        (b"<b\x00ob@example.com>", b"553 5.1.3 Invalid recipient address"),
        (b"<b\xffob@example.com>", b"553 5.1.3 Invalid recipient address"),
        (b"<bob@example.com\x00.example.net>", b"553 5.1.3 Invalid recipient address"),
    ],
)
def test_bad_bytes_in_recipient(raw, rcpt, reply):
    client = raw()
    assert client.cmd(b"MAIL FROM:<carol@example.net>") == b"250 2.1.0 Sender OK"
    assert client.cmd(b"RCPT TO:" + rcpt) == reply
    assert nothing_stored()


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


def test_auth_brute_force_closes_the_session(raw, smtp):
    client = raw(smtp.submission_port)
    for _ in range(3):
        assert (
            client.cmd(b"AUTH PLAIN " + plain("alice", "guess"))
            == b"535 5.7.8 Authentication credentials invalid"
        )
    assert client.cmd(b"AUTH PLAIN " + plain("alice", "change-me")) == b"421 4.7.0 AUTH sent too many times"
    with pytest.raises(ConnectionError):
        client.cmd(b"NOOP")
    assert nothing_stored()


@pytest.mark.parametrize("mechanism", [b"ALLOWED", b"CRAM-MD5", b"XOAUTH2", b"MAY-OFFER-AUTH"])
def test_only_plain_and_login_are_mechanisms(raw, smtp, mechanism):
    client = raw(smtp.submission_port)
    assert client.cmd(b"AUTH " + mechanism) == b"504 5.5.4 Unrecognized authentication type"
    assert client.cmd(b"MAIL FROM:<alice@example.com>") == b"530 5.7.0 Authentication required"


def test_auth_with_invalid_utf8_and_nul(raw, smtp):
    client = raw(smtp.submission_port)
    assert client.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0al\xffice\0change-me")) == (
        b"535 5.7.8 Authentication credentials invalid"
    )
    assert client.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0change-me\0x")) == (
        b"501 5.5.2 Cannot split auth value"
    )
    assert client.cmd(b"MAIL FROM:<alice@example.com>") == b"530 5.7.0 Authentication required"


def test_auth_brute_force_across_sessions_is_throttled(raw, smtp, settings):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    client = raw(smtp.submission_port)
    for n in range(3):
        assert (
            client.cmd(b"AUTH PLAIN " + plain(f"guess{n}", "x"))
            == b"535 5.7.8 Authentication credentials invalid"
        )
    client = raw(smtp.submission_port)
    assert client.cmd(b"AUTH PLAIN " + plain("alice", "change-me")) == (
        b"454 4.7.0 Too many failed logins, try again later"
    )
    assert client.cmd(b"MAIL FROM:<alice@example.com>") == b"530 5.7.0 Authentication required"
    assert nothing_stored()


@pytest.mark.parametrize(
    ("mail", "rcpt"),
    [
        (b"MAIL FROM:<carol@example.net>", b"RCPT TO:<bob@example.com>"),
        (b"MAIL FROM: <carol@example.net> BODY=7BIT", b"RCPT TO:<@example.net:bob@example.com>"),
    ],
    ids=["plain paths", "paths aiosmtpd reads"],
)
def test_plain_paths_get_the_replies_aiosmtpd_gives(smtp, example_com, raw, mail, rcpt):
    fresh = RawClient(smtp.inbound_port)
    assert fresh.reply() == b"220 mx.example.com ESMTP Everlock"
    assert fresh.cmd(mail) == b"503 5.5.1 Send HELO first"
    fresh.close()
    client = raw()
    assert client.cmd(rcpt) == b"503 5.5.1 Need MAIL command"
    assert client.cmd(mail) == b"250 2.1.0 Sender OK"
    assert client.cmd(mail) == b"503 5.5.1 Nested MAIL command"
    assert client.cmd(rcpt) == b"250 2.1.5 Recipient OK"
    assert client.cmd(b"RSET") == b"250 2.0.0 OK"
    assert client.cmd(b"MAIL FROM:<>") == b"250 2.1.0 Sender OK"


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("FROM:<carol@example.net>", "carol@example.net"),
        ("from: <c.a+rol@mail-1.example.net> ", "c.a+rol@mail-1.example.net"),
        ("FROM:<>", "<>"),
        ("FROM:<carol@example.net> SIZE=10", None),
        ('FROM:<"carol"@example.net>', None),
        ("FROM:<car..ol@example.net>", None),
        ("FROM:<carol@example.net.>", None),
        ("FROM:<carol@[192.0.2.1]>", None),
        ("FROM:carol@example.net", None),
        ("FROM:<@example.com:carol@example.net>", None),
        ("FROM:<carol@exämple.net>", None),
        ("TO:<carol@example.net>", None),
    ],
)
def test_which_paths_are_read_without_aiosmtpd(arg, address):
    assert plain_path(arg, "FROM:") == address
