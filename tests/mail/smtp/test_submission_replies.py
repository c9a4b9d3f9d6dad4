"""Submission (port 587) replies, with smtplib against the running listener."""

import ipaddress
import smtplib
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts.services import grant_add, user_add
from mail.models import Mailbox, MailDomain, Message, OutboundDelivery
from mail.services.storage import read_content
from mail.smtp.server import trusted_networks
from tests.mail.smtp.conftest import nothing_stored, tls_context

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: Hello\r\n\r\nHi Bob\r\n"


def client_for(smtp) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10)
    client.ehlo("client.example.com")
    return client


def test_ehlo_advertises_auth_plain_login_and_starttls(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        code, text = client.ehlo("client.example.com")
        assert code == 250
        assert text.split(b"\n") == [
            b"mx.example.com",
            b"PIPELINING",
            b"SIZE 100000",
            b"STARTTLS",
            b"AUTH PLAIN LOGIN",
            b"ENHANCEDSTATUSCODES",
            b"8BITMIME",
            b"BINARYMIME",
            b"DSN",
            b"SMTPUTF8",
            b"CHUNKING",
            b"HELP",
        ]


def test_a_multiline_reply_is_sent_in_one_write(smtp, example_com):
    # Its lines go out in one segment: the first receive returns the whole reply (line by
    # line, it returns as soon as the first line is there).
    with socket.create_connection(("127.0.0.1", smtp.submission_port), timeout=10) as conn:
        assert conn.recv(65536).startswith(b"220 ")
        conn.sendall(b"EHLO client.example.com\r\n")
        received = conn.recv(65536)
        assert received.startswith(b"250-mx.example.com\r\n")
        assert received.endswith(b"250-CHUNKING\r\n250 HELP\r\n")
        assert received.count(b"\r\n") == 12


@pytest.mark.parametrize("login", ["alice", "alice@example.com"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_succeeds(smtp, example_com, login, mechanism):
    with client_for(smtp) as client:
        client.user, client.password = login, "change-me"
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN") == (
            235,
            b"2.7.0 Authentication successful",
        )


def test_wrong_password_is_535(smtp, example_com):
    with client_for(smtp) as client, pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        client.login("alice", "wrong")
    assert (exc.value.smtp_code, exc.value.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")


def test_unknown_user_is_535(smtp, example_com):
    with client_for(smtp) as client, pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        client.login("mallory", "change-me")
    assert exc.value.smtp_code == 535


def test_mail_without_auth_is_530(smtp, example_com):
    with client_for(smtp) as client:
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
    assert nothing_stored()


def test_mail_from_without_grant_is_rejected(smtp, example_com):
    with client_for(smtp) as client:
        client.login("alice", "change-me")
        assert client.mail("bob@example.com") == (553, b"5.7.1 Sender address not allowed for this user")
        assert client.mail("alice@example.net") == (553, b"5.7.1 Sender address not allowed for this user")
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")


def test_mail_from_needs_submission_on(smtp, example_com):
    MailDomain.objects.filter(pk=example_com.pk).update(submission_enabled=False)
    with client_for(smtp) as client:
        client.login("alice", "change-me")
        assert client.mail("alice@example.com") == (553, b"5.7.1 Sender address not allowed for this user")


def test_domain_wide_grant_allows_any_mailbox(smtp, example_com):
    user_add(name="dora", password="dora-secret")
    grant_add(name="dora", resource="smtp/mail/example.com", role="writer")
    with client_for(smtp) as client:
        client.login("dora", "dora-secret")
        assert client.mail("anything@example.com") == (250, b"2.1.0 Sender OK")


def test_reader_grant_is_not_enough(smtp, example_com):
    user_add(name="rita", password="rita-secret")
    grant_add(name="rita", resource="smtp/mail/example.com:rita", role="reader")
    with client_for(smtp) as client:
        client.login("rita", "rita-secret")
        assert client.mail("rita@example.com") == (553, b"5.7.1 Sender address not allowed for this user")


def send(smtp, data: bytes, *, rcpt="bob@example.com", sender="alice@example.com"):
    with client_for(smtp) as client:
        client.login("alice", "change-me")
        assert client.mail(sender) == (250, b"2.1.0 Sender OK")
        assert client.rcpt(rcpt)[0] == 250
        return client.data(data)


def test_header_from_must_be_allowed(smtp, example_com):
    data = MESSAGE.replace(b"From: alice@example.com", b"From: Bob <bob@example.com>")
    assert send(smtp, data) == (550, b"5.7.1 From header address not allowed for this user")
    assert nothing_stored()


@pytest.mark.parametrize(
    "from_lines",
    [
        b"From: alice@example.com, bob@example.com\r\n",
        b"From: alice@example.com\r\nFrom: alice@example.com\r\n",
        b"",
    ],
)
def test_exactly_one_from_address(smtp, example_com, from_lines):
    data = from_lines + b"Subject: x\r\n\r\nbody\r\n"
    assert send(smtp, data) == (550, b"5.7.1 Exactly one From address is required")
    assert nothing_stored()


def test_local_recipient_delivered_and_copy_in_sent(smtp, example_com):
    assert send(smtp, MESSAGE) == (250, b"2.0.0 Accepted")
    inbox = Message.objects.get(folder__name="inbox")
    sent = Message.objects.get(folder__name="sent")
    assert (inbox.folder.mailbox.address, inbox.envelope_from, inbox.subject) == (
        "bob@example.com",
        "alice@example.com",
        "Hello",
    )
    assert (sent.folder.mailbox.address, sent.seen) == ("alice@example.com", True)
    assert inbox.content_id == sent.content_id
    assert inbox.message_id.startswith("<") and inbox.message_id.endswith("@mail.example.com>")
    assert inbox.date is not None
    assert not OutboundDelivery.objects.exists()


@pytest.mark.parametrize("tls", [False, True])
def test_received_trace_field_names_the_client_and_the_protocol(smtp, example_com, tls):
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.ehlo("client.example.com")
        if tls:
            client.starttls(context=tls_context())
            client.ehlo("client.example.com")
        client.login("alice", "change-me")
        assert client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE) == {}
    raw = read_content(Message.objects.get(folder__name="inbox").content)
    # RFC 5321 section 4.4 (protocol names from RFC 3848); no Return-Path on a message that
    # may still travel on (section 4.4 again).
    trace = b"Received: from client.example.com ([127.0.0.1])\r\n\tby mx.example.com (Everlock) with "
    after = b"ESMTPSA\r\n\t(version=TLSv1.3 cipher=" if tls else b"ESMTPA\r\n\tfor <bob@example.com>; "
    assert trace + after in raw
    assert raw.index(b"Received:") < raw.index(b"From: alice@example.com")
    assert b"Return-Path:" not in raw


def test_existing_message_id_and_date_kept(smtp, example_com):
    data = b"Message-Id: <keep@example.com>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n" + MESSAGE
    assert send(smtp, data) == (250, b"2.0.0 Accepted")
    inbox = Message.objects.get(folder__name="inbox")
    assert inbox.message_id == "<keep@example.com>"
    assert inbox.date.isoformat() == "2026-11-24T10:00:00+00:00"


def test_unknown_local_recipient_is_550(smtp, example_com):
    with client_for(smtp) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com")
        assert client.rcpt("nobody@example.com") == (550, b"5.1.1 Mailbox unavailable")


def test_starttls_then_auth_when_loopback_is_not_trusted(start_smtp, example_com):
    smtp = start_smtp(trust_loopback=False)
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.ehlo("client.example.com")
        assert "auth" not in client.esmtp_features, client.ehlo_resp
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAGNoYW5nZS1tZQ==") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        client.starttls(context=tls_context())
        client.ehlo("client.example.com")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.login("alice", "change-me") == (235, b"2.7.0 Authentication successful")
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")


def test_plaintext_auth_setting_allows_non_loopback(start_smtp, example_com):
    smtp = start_smtp(trust_loopback=False, plaintext_auth=True)
    with client_for(smtp) as client:
        assert client.login("alice", "change-me") == (235, b"2.7.0 Authentication successful")


def test_second_auth_is_refused(smtp, example_com):
    with client_for(smtp) as client:
        client.login("alice", "change-me")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAGNoYW5nZS1tZQ==") == (503, b"5.5.1 Already authenticated")


def test_local_and_remote_recipients_in_one_commit(smtp, example_com):
    with client_for(smtp) as client:
        client.login("alice@example.com", "change-me")
        client.mail("alice@example.com")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("dave@example.net") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("erin@example.net") == (250, b"2.1.5 Recipient OK")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    queued = OutboundDelivery.objects.get()
    assert (queued.domain, queued.envelope_from) == ("example.net", "alice@example.com")
    assert sorted(r.address for r in queued.recipients.all()) == ["dave@example.net", "erin@example.net"]
    assert sorted(Message.objects.values_list("folder__mailbox__local_part", "folder__name")) == [
        ("alice", "sent"),
        ("bob", "inbox"),
    ]
    assert {m.content_id for m in Message.objects.all()} == {queued.content_id}


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def test_trusted_client_submits_without_auth_for_a_domain_with_auth_off(start_smtp, example_com):
    MailDomain.objects.filter(pk=example_com.pk).update(submission_auth=MailDomain.SubmissionAuth.NONE)
    smtp = start_smtp(trusted_networks=LOOPBACK)
    with client_for(smtp) as client:
        assert client.mail("cron@example.com") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.data(MESSAGE.replace(b"alice@", b"cron@")) == (250, b"2.0.0 Accepted")
        # The header From must be an address of such a domain too.
        client.mail("cron@example.com")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE.replace(b"alice@example.com", b"carol@example.net")) == (
            550,
            b"5.7.1 From header address not allowed for this user",
        )
    # No mailbox is made for an address nobody was granted: no sent copy without one.
    assert list(Message.objects.values_list("folder__mailbox__local_part", "folder__name")) == [
        ("bob", "inbox")
    ]
    assert not Mailbox.objects.filter(local_part="cron").exists()
    with client_for(smtp) as client:
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE) == (250, b"2.0.0 Accepted")
    assert Message.objects.filter(folder__mailbox__local_part="alice", folder__name="sent").count() == 1


def test_without_auth_only_trusted_clients_and_only_domains_with_auth_off(start_smtp, example_com):
    MailDomain.objects.create(name="example.org", submission_enabled=True)  # auth on
    MailDomain.objects.filter(pk=example_com.pk).update(submission_auth=MailDomain.SubmissionAuth.NONE)
    trusted = start_smtp(trusted_networks=LOOPBACK)
    with client_for(trusted) as client:
        assert client.mail("alice@example.org") == (530, b"5.7.0 Authentication required")
        assert client.mail("alice@example.net") == (530, b"5.7.0 Authentication required")
    elsewhere = start_smtp(trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    with client_for(elsewhere) as client:
        assert client.mail("cron@example.com") == (530, b"5.7.0 Authentication required")
    assert nothing_stored()


def test_trusted_networks_setting_is_checked():
    assert trusted_networks(["127.0.0.0/8", " ::1/128 "]) == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(
        ImproperlyConfigured, match=r"EVERLOCK_SUBMISSION_TRUSTED_NETWORKS: 10\.0\.0\.1/8 has host bits set"
    ):
        trusted_networks(["10.0.0.1/8"])
