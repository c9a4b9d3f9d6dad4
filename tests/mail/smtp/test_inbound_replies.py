"""Inbound (port 25) replies and limits, with smtplib and raw sockets."""

import smtplib
import socket
import time

import pytest

from mail.models import MailDomain, Message
from mail.services.storage import read_content
from mail.smtp.server import MAX_LINE_LENGTH
from tests.mail.smtp.conftest import nothing_stored, tls_context

MESSAGE = b"From: carol@example.net\r\nTo: bob@example.com\r\nSubject: Hi\r\n\r\nHello Bob\r\n"


def client_for(smtp) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10)
    client.ehlo("mx.example.net")
    return client


def test_greeting_and_ehlo_without_auth(smtp, example_com):
    client = smtplib.SMTP(timeout=10)
    assert client.connect("127.0.0.1", smtp.inbound_port) == (220, b"mx.example.com ESMTP Everlock")
    code, text = client.ehlo("mx.example.net")
    assert (code, text.split(b"\n")) == (
        250,
        [
            b"mx.example.com",
            b"PIPELINING",
            b"SIZE 100000",
            b"STARTTLS",
            b"ENHANCEDSTATUSCODES",
            b"8BITMIME",
            b"BINARYMIME",
            b"DSN",
            b"SMTPUTF8",
            b"CHUNKING",
            b"HELP",
        ],
    )
    assert client.docmd("AUTH", "PLAIN AGFsaWNlAGNoYW5nZS1tZQ==") == (
        502,
        b"5.5.1 AUTH not available on this port",
    )
    client.quit()
    with client_for(smtp) as client:
        client.starttls(context=tls_context())
        code, text = client.ehlo("mx.example.net")
        assert (code, b"AUTH" in text) == (250, False)


def test_delivery_adds_return_path_and_received(smtp, example_com):
    with client_for(smtp) as client:
        assert client.mail("carol@example.net") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("Bob@Example.COM") == (250, b"2.1.5 Recipient OK")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    message = Message.objects.get()
    assert (message.folder.mailbox.address, message.folder.name) == ("bob@example.com", "inbox")
    assert (message.envelope_from, message.envelope_to, message.subject) == (
        "carol@example.net",
        "bob@example.com",
        "Hi",
    )
    raw = read_content(message.content)
    head, _, rest = raw.partition(b"\r\n")
    assert head == b"Return-Path: <carol@example.net>"
    assert rest.startswith(
        b"Authentication-Results: mail.example.com;\r\n\tspf=pass smtp.mailfrom=example.net;\r\n"
        b"\tdkim=none;\r\n\tdmarc=none header.from=example.net;\r\n\tarc=none;\r\n"
        b"\tiprev=pass policy.iprev=127.0.0.1 (mx.example.net)\r\n"
        b"Received: from mx.example.net ([127.0.0.1])\r\n\tby mx.example.com (Everlock) with ESMTP\r\n"
    )
    assert rest.endswith(MESSAGE)
    assert message.size == len(raw) == message.content.size


def test_received_records_tls(smtp, example_com):
    with client_for(smtp) as client:
        client.starttls(context=tls_context())
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    raw = read_content(Message.objects.get().content)
    assert b"with ESMTPS\r\n\t(version=TLSv1.3 cipher=" in raw


def test_null_sender_accepted(smtp, example_com):
    with client_for(smtp) as client:
        assert client.docmd("MAIL", "FROM:<>") == (250, b"2.1.0 Sender OK")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert Message.objects.get().envelope_from == ""


def test_relay_and_unknown_user(smtp, example_com):
    MailDomain.objects.create(name="example.org", enabled=False)
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.net") == (554, b"5.7.1 Relaying denied")
        assert client.rcpt("bob@example.org") == (554, b"5.7.1 Relaying denied")
        assert client.rcpt("nobody@example.com") == (550, b"5.1.1 Mailbox unavailable")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")


def test_recipient_limit(smtp, example_com):
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        for _ in range(5):
            assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("bob@example.com") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert Message.objects.count() == 1  # one mailbox, named five times


def test_size_advertised_and_enforced(smtp, example_com):
    with client_for(smtp) as client:
        assert client.mail("carol@example.net", ["SIZE=100001"]) == (552, b"5.3.4 Message too big")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        big = MESSAGE + (b"x" * 900 + b"\r\n") * 120
        assert client.data(big) == (552, b"5.3.4 Message too big")
        assert client.noop() == (250, b"2.0.0 OK")
    assert nothing_stored()


def test_line_length_limit(smtp, example_com):
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE + b"y" * (MAX_LINE_LENGTH + 1) + b"\r\n") == (500, b"5.5.6 Line too long")
        assert client.docmd("NOOP " + "z" * 600) == (500, b"5.5.2 Command line too long")
    assert nothing_stored()


def test_long_lines_up_to_the_limit_are_kept_byte_for_byte(smtp, example_com):
    # Lines longer than RFC 5321's 1,000 (Postfix takes 2,048 before folding) arrive intact.
    body = b"".join(
        bytes([33 + n % 90]) * length + b"\r\n" for n, length in enumerate((1000, 2048, MAX_LINE_LENGTH))
    )
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE + body) == (250, b"2.0.0 Accepted")
    assert read_content(Message.objects.get().content).endswith(MESSAGE + body)


def test_hop_count_limit(smtp, example_com):
    hops = b"".join(b"Received: from hop%d.example.net by relay.example.net; x\r\n" % n for n in range(11))
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        assert client.data(hops + MESSAGE) == (554, b"5.4.6 Too many hops, mail loop detected")
        client.rset()
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        assert client.data(hops[: hops.index(b"Received: from hop10")] + MESSAGE) == (250, b"2.0.0 Accepted")


def read_all(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    sock.settimeout(deadline)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_idle_timeout(start_smtp, example_com):
    smtp = start_smtp(idle_timeout=1)
    with socket.create_connection(("127.0.0.1", smtp.inbound_port)) as sock:
        start = time.monotonic()
        assert (
            read_all(sock, 5) == b"220 mx.example.com ESMTP Everlock\r\n421 4.4.2 Idle timeout, closing\r\n"
        )
        assert 0.9 < time.monotonic() - start < 3


def test_session_timeout(start_smtp, example_com):
    smtp = start_smtp(session_timeout=1)
    with socket.create_connection(("127.0.0.1", smtp.inbound_port)) as sock:
        sock.settimeout(5)
        assert sock.recv(100) == b"220 mx.example.com ESMTP Everlock\r\n"
        replies = b""
        for _ in range(8):
            try:
                sock.sendall(b"NOOP\r\n")
            except OSError:
                break
            time.sleep(0.25)
        replies = read_all(sock, 5)
        assert replies.endswith(b"250 2.0.0 OK\r\n421 4.4.2 Session time limit exceeded, closing\r\n")
        assert set(replies.split(b"\r\n")[:-2]) == {b"250 2.0.0 OK"}


def test_connections_per_client(start_smtp, example_com):
    smtp = start_smtp(max_connections_per_client=2)
    first = socket.create_connection(("127.0.0.1", smtp.inbound_port))
    second = socket.create_connection(("127.0.0.1", smtp.submission_port))
    try:
        for sock in (first, second):
            sock.settimeout(5)
            assert sock.recv(100) == b"220 mx.example.com ESMTP Everlock\r\n"
        with socket.create_connection(("127.0.0.1", smtp.inbound_port)) as third:
            assert read_all(third, 5) == b"421 4.7.0 Too many connections from your address\r\n"
    finally:
        first.close()
        second.close()
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", smtp.inbound_port)) as again:
        again.settimeout(5)
        assert again.recv(100) == b"220 mx.example.com ESMTP Everlock\r\n"


@pytest.mark.parametrize("folder", ["inbox"])
def test_rules_plan_files_into_inbox_by_default(smtp, example_com, folder):
    with client_for(smtp) as client:
        client.mail("carol@example.net")
        client.rcpt("bob@example.com")
        client.rcpt("alice@example.com")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert sorted(Message.objects.values_list("folder__mailbox__local_part", "folder__name")) == [
        ("alice", folder),
        ("bob", folder),
    ]
    assert len({m.content_id for m in Message.objects.all()}) == 1


def test_mailbox_deleted_between_rcpt_and_data(smtp, example_com):
    from mail.services.mailboxes import mailbox_delete

    with client_for(smtp) as client:
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        assert mailbox_delete(address="bob@example.com") is True
        assert client.data(MESSAGE) == (451, b"4.2.0 Mailbox changed, try again later")
    assert nothing_stored()
