"""The ESMTP extensions each listener offers, each exercised through a real client or a raw
socket: the EHLO transcript per listener, PIPELINING, ENHANCEDSTATUSCODES, CHUNKING (BDAT),
BINARYMIME, DSN, REQUIRETLS, SMTPUTF8 and submission over implicit TLS."""

import smtplib
import subprocess

import pytest

from mail.models import Message, OutboundDelivery, OutboundRecipient
from mail.services.storage import read_content
from tests.mail.smtp.conftest import RawClient, nothing_stored, tls_context

MESSAGE = b"From: carol@example.net\r\nTo: bob@example.com\r\nSubject: Hi\r\n\r\nHello Bob\r\n"

COMMON = [
    b"250-ENHANCEDSTATUSCODES",
    b"250-8BITMIME",
    b"250-BINARYMIME",
    b"250-DSN",
    b"250-SMTPUTF8",
    b"250-CHUNKING",
]


def bdat(client: RawClient, data: bytes) -> bytes:
    """Send a BDAT command with its chunk (no CRLF after the chunk) and read the reply."""
    client.send(data)
    return client.reply()


def ehlo(client: RawClient, name: bytes = b"client.example.net") -> list[bytes]:
    return client.cmd(b"EHLO " + name).split(b"\r\n")


def test_ehlo_transcript_of_each_listener(smtp, example_com):
    head = [b"250-mx.example.com", b"250-PIPELINING", b"250-SIZE 100000"]
    inbound = RawClient(smtp.inbound_port)
    assert inbound.reply() == b"220 mx.example.com ESMTP Everlock"
    assert ehlo(inbound) == [*head, b"250-STARTTLS", *COMMON, b"250 HELP"]
    assert inbound.cmd(b"STARTTLS") == b"220 2.0.0 Ready to start TLS"
    inbound.starttls()
    assert ehlo(inbound) == [*head, *COMMON, b"250-REQUIRETLS", b"250 HELP"]
    inbound.close()

    submission = RawClient(smtp.submission_port)
    submission.reply()
    # Loopback may use AUTH before TLS (the product doc's local test).
    assert ehlo(submission) == [*head, b"250-STARTTLS", b"250-AUTH PLAIN LOGIN", *COMMON, b"250 HELP"]
    submission.cmd(b"STARTTLS")
    submission.starttls()
    assert ehlo(submission) == [*head, b"250-AUTH PLAIN LOGIN", *COMMON, b"250-REQUIRETLS", b"250 HELP"]
    submission.close()

    implicit = RawClient(smtp.submissions_port, implicit_tls=True)
    assert implicit.reply() == b"220 mx.example.com ESMTP Everlock"
    assert ehlo(implicit) == [*head, b"250-AUTH PLAIN LOGIN", *COMMON, b"250-REQUIRETLS", b"250 HELP"]
    assert implicit.cmd(b"STARTTLS") == b"503 5.5.1 TLS already active"
    implicit.close()


def test_pipelined_commands_are_answered_in_order(smtp, example_com):
    # RFC 2920: the whole transaction in one write; the replies come back in order.
    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    client.send(
        b"MAIL FROM:<carol@example.net>\r\n"
        b"RCPT TO:<nobody@example.com>\r\n"
        b"RCPT TO:<bob@example.com>\r\n"
        b"DATA\r\n"
    )
    assert [client.reply() for _ in range(4)] == [
        b"250 2.1.0 Sender OK",
        b"550 5.1.1 Mailbox unavailable",
        b"250 2.1.5 Recipient OK",
        b"354 End data with <CR><LF>.<CR><LF>",
    ]
    client.send(MESSAGE + b".\r\nQUIT\r\n")
    assert client.reply() == b"250 2.0.0 Accepted"
    assert client.reply() == b"221 2.0.0 Bye"
    assert Message.objects.get().envelope_to == "bob@example.com"


def test_bdat_chunks_are_stored_byte_for_byte(smtp, example_com):
    # RFC 3030: no dot-stuffing, the chunks joined as they came (a line of a lone dot too).
    body = b"line one\r\n.\r\n..two dots\r\n" + b"x" * 3000 + b"\r\n"
    first, second = MESSAGE, body
    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    client.send(
        b"MAIL FROM:<carol@example.net>\r\nRCPT TO:<bob@example.com>\r\n"
        + b"BDAT %d\r\n" % len(first)
        + first
        + b"BDAT %d LAST\r\n" % len(second)
        + second
    )
    assert [client.reply() for _ in range(4)] == [
        b"250 2.1.0 Sender OK",
        b"250 2.1.5 Recipient OK",
        b"250 2.0.0 %d octets received" % len(first),
        b"250 2.0.0 Accepted",
    ]
    assert read_content(Message.objects.get().content).endswith(b"\r\n" + first + second)
    # The session goes on: a second transaction with DATA.
    assert client.cmd(b"MAIL FROM:<carol@example.net>") == b"250 2.1.0 Sender OK"


def test_bdat_refusals(smtp, example_com):
    client = RawClient(smtp.inbound_port)
    client.reply()
    assert bdat(client, b"BDAT 5 LAST\r\nhello") == b"503 5.5.1 Send EHLO first"
    ehlo(client)
    # The chunk's bytes are read even when it is refused: they are never commands.
    assert bdat(client, b"BDAT 6 LAST\r\nRSET\r\n") == b"503 5.5.1 Need MAIL command"
    assert client.cmd(b"BDAT x") == b"501 5.5.4 Syntax: BDAT <chunk-size> [LAST]"
    client.cmd(b"MAIL FROM:<carol@example.net>")
    assert client.cmd(b"RCPT TO:<nobody@example.com>") == b"550 5.1.1 Mailbox unavailable"
    assert bdat(client, b"BDAT 5 LAST\r\nhello") == b"503 5.5.1 Need RCPT command"
    client.cmd(b"MAIL FROM:<carol@example.net>")
    client.cmd(b"RCPT TO:<bob@example.com>")
    assert bdat(client, b"BDAT 5\r\nhello") == b"250 2.0.0 5 octets received"
    assert client.cmd(b"DATA") == b"503 5.5.1 DATA after BDAT"
    # Over the SIZE limit (100,000): refused, and so is the rest of the transaction.
    client.send(b"BDAT 100000\r\n" + b"y" * 100_000)
    assert client.reply() == b"552 5.3.4 Message too big"
    assert bdat(client, b"BDAT 2 LAST\r\nhi") == b"552 5.3.4 Message too big"
    assert client.cmd(b"NOOP") == b"250 2.0.0 OK"
    client.close()
    assert nothing_stored()


def test_binarymime_keeps_every_byte(smtp, example_com):
    # RFC 3030 section 3: a binary body (bare LF, CR, NUL) comes with BDAT and is kept.
    body = bytes(range(256)) * 4 + b"\n\r\n"
    message = b"From: carol@example.net\r\nContent-Transfer-Encoding: binary\r\n\r\n" + body
    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    assert client.cmd(b"MAIL FROM:<carol@example.net> BODY=BINARYMIME") == b"250 2.1.0 Sender OK"
    client.cmd(b"RCPT TO:<bob@example.com>")
    assert client.cmd(b"DATA") == b"503 5.5.1 BODY=BINARYMIME requires BDAT"
    assert bdat(client, b"BDAT %d LAST\r\n" % len(message) + message) == b"250 2.0.0 Accepted"
    assert read_content(Message.objects.get().content).endswith(b"\r\n" + message)


def test_enhanced_status_codes_on_every_reply_of_a_transaction(smtp, example_com):
    # RFC 2034 section 3: every reply but the greeting and EHLO's.
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        assert client.has_extn("enhancedstatuscodes")
        assert [
            client.mail("carol@example.net"),
            client.rcpt("bob@example.org"),
            client.rcpt("bob@example.com"),
            client.data(MESSAGE),
            client.noop(),
            client.rset(),
            client.docmd("VRFY", "bob@example.com"),
            client.docmd("EXPN", "staff"),
            client.docmd("FROB"),
            client.docmd("RCPT TO:<bob@example.com>"),
            client.docmd("MAIL FROM:carol"),
            client.quit(),
        ] == [
            (250, b"2.1.0 Sender OK"),
            (554, b"5.7.1 Relaying denied"),
            (250, b"2.1.5 Recipient OK"),
            (250, b"2.0.0 Accepted"),
            (250, b"2.0.0 OK"),
            (250, b"2.0.0 OK"),
            (252, b"2.5.2 Cannot VRFY user, but will accept message and attempt delivery"),
            (502, b"5.5.1 EXPN not implemented"),
            (500, b'5.5.2 Command "FROB" unrecognized'),
            (503, b"5.5.1 Need MAIL command"),
            (553, b"5.1.7 Invalid sender address"),
            (221, b"2.0.0 Bye"),
        ]


def test_dsn_parameters_go_on_the_queue_rows(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        assert client.has_extn("dsn")
        assert client.mail("alice@example.com", ["RET=HDRS", "ENVID=QQ+2Bid"]) == (250, b"2.1.0 Sender OK")
        assert client.rcpt(
            "dave@example.net", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Dave+40example.net"]
        ) == (
            250,
            b"2.1.5 Recipient OK",
        )
        assert client.rcpt("erin@example.net", ["NOTIFY=NEVER"])[0] == 250
        assert client.rcpt("frank@example.net")[0] == 250
        assert client.data(b"From: alice@example.com\r\nSubject: x\r\n\r\nbody\r\n") == (
            250,
            b"2.0.0 Accepted",
        )
    row = OutboundDelivery.objects.get()
    assert (row.dsn_ret, row.dsn_envid, row.requiretls, row.binarymime) == ("HDRS", "QQ+id", False, False)
    assert sorted(OutboundRecipient.objects.values_list("address", "notify", "orcpt")) == [
        ("dave@example.net", "DELAY,SUCCESS", "rfc822;Dave@example.net"),
        ("erin@example.net", "NEVER", ""),
        ("frank@example.net", "", ""),
    ]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"MAIL FROM:<carol@example.net> RET=ALL", b"501 5.5.4 RET must be FULL or HDRS"),
        (b"MAIL FROM:<carol@example.net> RET=FULL RET=HDRS", b"501 5.5.4 Duplicate RET parameter"),
        (b"MAIL FROM:<carol@example.net> ENVID=a=b", b"501 5.5.4 Invalid xtext value"),
        (b"MAIL FROM:<carol@example.net> ENVID=" + b"a" * 101, b"501 5.5.4 Invalid ENVID"),
        (b"MAIL FROM:<carol@example.net> REQUIRETLS", b"530 5.7.10 REQUIRETLS needs a TLS session"),
        (
            b"MAIL FROM:<carol@example.net> FOO=1",
            b"555 5.5.4 MAIL FROM parameters not recognized or not implemented",
        ),
    ],
)
def test_bad_mail_parameters(smtp, example_com, command, reply):
    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    assert client.cmd(command) == reply
    assert client.cmd(b"MAIL FROM:<carol@example.net>") == b"250 2.1.0 Sender OK"


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        (b"NOTIFY=NEVER,SUCCESS", b"501 5.5.4 NOTIFY must be NEVER or some of SUCCESS,FAILURE,DELAY"),
        (b"NOTIFY=SOMETIMES", b"501 5.5.4 NOTIFY must be NEVER or some of SUCCESS,FAILURE,DELAY"),
        (b"ORCPT=bob@example.com", b"501 5.5.4 ORCPT must be addr-type;xtext"),
        (b"NOTIFY=FAILURE NOTIFY=DELAY", b"501 5.5.4 Duplicate NOTIFY parameter"),
        (b"FOO=BAR", b"555 5.5.4 RCPT TO parameters not recognized or not implemented"),
    ],
)
def test_bad_rcpt_parameters(smtp, example_com, parameters, reply):
    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    client.cmd(b"MAIL FROM:<carol@example.net>")
    assert client.cmd(b"RCPT TO:<bob@example.com> " + parameters) == reply
    assert client.cmd(b"RCPT TO:<bob@example.com> NOTIFY=FAILURE") == b"250 2.1.5 Recipient OK"


def test_success_dsn_for_local_delivery_on_submission(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com", ["RET=FULL", "ENVID=env-1"])
        client.rcpt("bob@example.com", ["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@example.com"])
        assert client.data(b"From: alice@example.com\r\nSubject: report me\r\n\r\nthe body\r\n")[0] == 250
    dsn = Message.objects.get(folder__mailbox__local_part="alice", folder__name="inbox")
    raw = read_content(dsn.content)
    assert dsn.subject == "Successful Mail Delivery Report"
    assert dsn.envelope_from == ""
    for line in (
        b"Original-Envelope-Id: env-1",
        b"Original-Recipient: rfc822; bob@example.com",
        b"Final-Recipient: rfc822; bob@example.com",
        b"Action: delivered",
        b"Status: 2.0.0",
        b"Content-Type: message/rfc822",  # RET=FULL: the whole message comes back
        b"the body",
    ):
        assert line in raw, line


def test_success_dsn_for_inbound_delivery_goes_to_the_remote_sender(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com", ["NOTIFY=SUCCESS,FAILURE"])
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert Message.objects.get().envelope_to == "bob@example.com"
    row = OutboundDelivery.objects.get()
    assert (row.envelope_from, row.domain) == ("", "example.net")
    assert list(row.recipients.values_list("address", flat=True)) == ["carol@example.net"]
    raw = read_content(row.content)
    assert b"Action: delivered" in raw and b"Content-Type: text/rfc822-headers" in raw


def test_no_success_dsn_without_notify_success(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com", ["NOTIFY=FAILURE,DELAY"])
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert Message.objects.count() == 1
    assert not OutboundDelivery.objects.exists()


def test_requiretls_is_kept_with_the_queue_row(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.starttls(context=tls_context())
        client.login("alice", "change-me")
        assert client.has_extn("requiretls")
        assert client.mail("alice@example.com", ["REQUIRETLS"]) == (250, b"2.1.0 Sender OK")
        client.rcpt("dave@example.net")
        assert client.data(b"From: alice@example.com\r\n\r\nsecret\r\n")[0] == 250
    assert OutboundDelivery.objects.get().requiretls is True


def test_submission_over_implicit_tls(smtp, example_com):
    with smtplib.SMTP_SSL("127.0.0.1", smtp.submissions_port, timeout=10, context=tls_context()) as client:
        client.ehlo("client.example.com")
        assert "starttls" not in client.esmtp_features
        assert client.login("alice", "change-me") == (235, b"2.7.0 Authentication successful")
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        assert client.data(
            b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: 465\r\n\r\nHi\r\n"
        ) == (
            250,
            b"2.0.0 Accepted",
        )
    raw = read_content(Message.objects.get(folder__name="inbox").content)
    assert raw.startswith(
        b"Received: from client.example.com ([127.0.0.1])\r\n"
        b"\tby mx.example.com (Everlock) with ESMTPSA\r\n\t(version=TLSv1.3"
    )


def test_smtputf8_names_utf8smtpsa_and_decodes_headers(smtp, example_com):
    subject = "Grüße from ÄÖÜ"
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.starttls(context=tls_context())
        client.login("alice", "change-me")
        raw = f"From: Jürgen <alice@example.com>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\r\nHi\r\n"
        client.sendmail("alice@example.com", ["bob@example.com"], raw.encode(), mail_options=["SMTPUTF8"])
        encoded = "=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?iso-8859-1?q?_from_=C4=D6=DC?="
        client.sendmail(
            "alice@example.com",
            ["bob@example.com"],
            f"From: =?utf-8?q?J=C3=BCrgen?= <alice@example.com>\r\nSubject: {encoded}\r\n\r\nHi\r\n".encode(),
        )
    first, second = Message.objects.filter(folder__name="inbox").order_by("id")
    assert (first.subject, first.header_from) == (subject, "Jürgen <alice@example.com>")
    assert (second.subject, second.header_from) == (subject, "Jürgen <alice@example.com>")
    assert b"\tby mx.example.com (Everlock) with UTF8SMTPSA\r\n" in read_content(first.content)
    assert b"\tby mx.example.com (Everlock) with ESMTPSA\r\n" in read_content(second.content)


def test_received_and_date_use_plus_0000(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.sendmail("alice@example.com", ["bob@example.com"], b"From: alice@example.com\r\n\r\nHi\r\n")
    raw = read_content(Message.objects.get(folder__name="inbox").content)
    header = raw.split(b"\r\n\r\n")[0]
    received, rest = header.split(b"\r\nMessage-Id: ")
    assert received.startswith(b"Received: ") and received.endswith(b" +0000")
    assert b"\r\nDate: " in b"\r\n" + rest and rest.split(b"\r\nDate: ")[1].split(b"\r\n")[0].endswith(
        b" +0000"
    )
    assert b"GMT" not in header


def test_postmaster_is_accepted_with_and_without_a_domain(smtp, example_com):
    # RFC 5321 section 4.5.1: without a postmaster mailbox or setting, the first admin's.
    from accounts.services import grant_add, user_add
    from mail.services.domains import domain_set
    from mail.services.mailboxes import mailbox_create

    client = RawClient(smtp.inbound_port)
    client.reply()
    ehlo(client)
    client.cmd(b"MAIL FROM:<carol@example.net>")
    # No admin with a mailbox yet: nobody takes it.
    assert client.cmd(b"RCPT TO:<Postmaster>") == b"550 5.1.1 Mailbox unavailable"
    user_add(name="root", password="x", is_admin=True)
    grant_add(name="root", resource="smtp/mail/example.com:hostmaster", role="writer")
    mailbox_create(address="hostmaster@example.com")
    assert client.cmd(b"RCPT TO:<Postmaster>") == b"250 2.1.5 Recipient OK"
    assert client.cmd(b"RCPT TO:<postmaster@example.org>") == b"554 5.7.1 Relaying denied"
    client.send(b"DATA\r\n")
    assert client.reply().startswith(b"354 ")
    assert client.cmd(MESSAGE + b".") == b"250 2.0.0 Accepted"
    assert Message.objects.get().folder.mailbox.address == "hostmaster@example.com"
    # One named for the domain takes postmaster@ the domain.
    domain_set(name="example.com", postmaster="bob")
    client.cmd(b"MAIL FROM:<carol@example.net>")
    assert client.cmd(b"RCPT TO:<POSTMASTER@example.com>") == b"250 2.1.5 Recipient OK"
    client.send(b"DATA\r\n")
    client.reply()
    assert client.cmd(MESSAGE + b".") == b"250 2.0.0 Accepted"
    assert Message.objects.latest("id").folder.mailbox.address == "bob@example.com"
    client.close()


def test_the_bare_postmaster_is_accepted_on_submission(smtp, example_com):
    # RFC 5321 section 4.5.1 holds on every port: the first admin's mailbox takes it.
    from accounts.services import grant_add, user_add
    from mail.services.mailboxes import mailbox_create

    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com")
        assert client.rcpt("Postmaster") == (550, b"5.1.1 Mailbox unavailable")
        user_add(name="root", password="x", is_admin=True)
        grant_add(name="root", resource="smtp/mail/example.com:hostmaster", role="writer")
        mailbox_create(address="hostmaster@example.com")
        client.rset()
        refused = client.sendmail(
            "alice@example.com", ["<Postmaster>"], b"From: alice@example.com\r\nSubject: hi\r\n\r\nHi\r\n"
        )
    assert refused == {}
    received = Message.objects.get(folder__name="inbox")
    assert received.folder.mailbox.address == "hostmaster@example.com"
    assert received.subject == "hi"


def test_msmtp_submits_over_implicit_tls(smtp, example_com, tmp_path):
    # msmtp with TLS from the first byte (tls_starttls off), as a mail client on port 465 is.
    config = tmp_path / "msmtprc"
    config.write_text(
        f"account default\nhost 127.0.0.1\nport {smtp.submissions_port}\nfrom alice@example.com\n"
        "auth plain\nuser alice\npassword change-me\ntls on\ntls_starttls off\ntls_certcheck off\n"
        f"logfile {tmp_path / 'msmtp.log'}\n"
    )
    config.chmod(0o600)
    result = subprocess.run(
        ["msmtp", "-C", str(config), "-d", "bob@example.com"],
        input=b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: via 465\r\n\r\nHi Bob\r\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    transcript = result.stdout.decode() + result.stderr.decode()
    assert "<-- 220 mx.example.com ESMTP Everlock" in transcript
    assert "--> STARTTLS" not in transcript
    assert "<-- 235 2.7.0 Authentication successful" in transcript
    assert "<-- 250 2.0.0 Accepted" in transcript
    message = Message.objects.get(folder__name="inbox")
    assert (message.subject, message.folder.mailbox.address) == ("via 465", "bob@example.com")
