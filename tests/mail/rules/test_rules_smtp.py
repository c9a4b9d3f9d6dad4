"""Rules end to end: real SMTP listeners on 127.0.0.1, smtplib clients, rules.toml in force."""

import smtplib
from email import message_from_bytes

import pytest

from mail.auth import srs
from mail.models import Message, OutboundDelivery, VacationReply
from mail.services.rules import dry_run, set_rules
from mail.services.storage import read_content
from tests.mail.smtp.conftest import example_com, nothing_stored, smtp, start_smtp  # noqa: F401

RULES = """
[[rule]]
name = "spam"
match = { header = "Subject", contains = "buy now" }
reject = { code = 554, enhanced = "5.7.1", text = "No spam here, thanks" }

[[rule]]
name = "lists"
scope = "example.com"
match = { header = "List-Id", glob = "*<announce.example.net>" }
fileinto = "Lists/Announce"
seen = true
add_header = { name = "X-Label", value = "announce" }
stop = true

[[rule]]
name = "big"
scope = "bob@example.com"
match = { size_over = 2000 }
discard = true

[[rule]]
name = "to bob"
scope = "alice@example.com"
match = { header = "Subject", equals = "for bob" }
redirect = ["bob@example.com"]
stop = true

[[rule]]
name = "forward out"
scope = "alice@example.com"
match = { header = "Subject", equals = "for dave" }
redirect = ["dave@example.org"]
stop = true

[[rule]]
name = "away"
scope = "alice@example.com"
vacation = { days = 7, subject = "Away", body = "Alice is away." }
"""


PADDING = "".join(f"X-Pad-{i}: " + "y" * 70 + "\r\n" for i in range(30))  # over 2000 bytes


def message(*, subject="Hello", extra="", to="alice@example.com", sender="carol@example.net"):
    mid = f"<m-{subject.replace(' ', '-')}@example.net>"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}\r\nHello\r\n"
    ).encode()


def send(server, mail_from, rcpts, data):
    with smtplib.SMTP("127.0.0.1", server.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        return client.sendmail(mail_from, rcpts, data)


def submit(server, user, password, mail_from, rcpts, data):
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.login(user, password)
        return client.sendmail(mail_from, rcpts, data)


def folders_of(address):
    local, _, domain = address.partition("@")
    return sorted(
        Message.objects.filter(
            folder__mailbox__local_part=local, folder__mailbox__domain__name=domain
        ).values_list("folder__name", "subject", "seen")
    )


@pytest.fixture
def rules(example_com, settings, tmp_path):  # noqa: F811
    settings.DATA_DIR = tmp_path
    set_rules(text=RULES)


def test_filing_into_a_folder_with_a_header_and_seen(smtp, rules):  # noqa: F811
    send(
        smtp,
        "carol@example.net",
        ["alice@example.com"],
        message(extra="List-Id: Announce <announce.example.net>\r\n"),
    )
    assert folders_of("alice@example.com") == [("Lists/Announce", "Hello", True)]
    stored = Message.objects.get()
    assert bytes(stored.prepended_headers) == b"X-Label: announce\r\n"
    assert VacationReply.objects.count() == 0  # stop: the vacation rule never ran
    # The dry run of the stored message (its prepended header included) changes nothing.
    result = dry_run(recipient="alice@example.com", message_id=stored.id)
    assert result.trace == [
        "authentication results: spf=pass dkim=none dmarc=none arc=none iprev=pass",
        "rule 'lists' matches",
        "  flags: seen=True flagged=False",
        "  add header: X-Label: announce",
        "  file into 'Lists/Announce'",
        "  stop",
        "filed into: Lists/Announce (seen)",
    ]
    assert Message.objects.count() == 1


def test_new_rules_apply_to_the_next_message(smtp, example_com, settings, tmp_path):  # noqa: F811
    settings.DATA_DIR = tmp_path
    send(smtp, "carol@example.net", ["bob@example.com"], message(subject="first", to="bob@example.com"))
    set_rules(text='[[rule]]\nname = "all"\nmatch = { size_over = 0 }\nfileinto = "Later"\n')
    send(smtp, "carol@example.net", ["bob@example.com"], message(subject="second", to="bob@example.com"))
    set_rules(text="")
    send(smtp, "carol@example.net", ["bob@example.com"], message(subject="third", to="bob@example.com"))
    assert folders_of("bob@example.com") == [
        ("Later", "second", False),
        ("inbox", "first", False),
        ("inbox", "third", False),
    ]


def test_reject_at_smtp_time_with_the_configured_reply(smtp, rules):  # noqa: F811
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(smtp, "carol@example.net", ["alice@example.com"], message(subject="buy now"))
    assert (exc.value.smtp_code, exc.value.smtp_error) == (554, b"5.7.1 No spam here, thanks")
    assert nothing_stored()


def test_discard(smtp, rules):  # noqa: F811
    assert (
        send(
            smtp,
            "carol@example.net",
            ["bob@example.com"],
            message(to="bob@example.com", extra=PADDING),
        )
        == {}
    )
    assert nothing_stored()


def test_vacation_once_and_never_to_lists_or_the_null_sender(smtp, rules):  # noqa: F811
    # bob (a local mailbox) writes twice through submission: one auto-reply, in his inbox.
    for subject in ("first", "second"):
        submit(
            smtp,
            "bob",
            "bob-secret",
            "bob@example.com",
            ["alice@example.com"],
            message(subject=subject, sender="bob@example.com"),
        )
    assert folders_of("alice@example.com") == [("inbox", "first", False), ("inbox", "second", False)]
    assert folders_of("bob@example.com") == [
        ("inbox", "Away", False),
        ("sent", "first", True),
        ("sent", "second", True),
    ]
    reply = Message.objects.get(folder__mailbox__local_part="bob", folder__name="inbox")
    assert reply.envelope_from == ""
    parsed = message_from_bytes(read_content(reply.content))
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["In-Reply-To"] == "<m-first@example.net>"
    assert parsed.get_payload(decode=True) == b"Alice is away.\r\n"
    assert list(VacationReply.objects.values_list("recipient", "sender")) == [
        ("alice@example.com", "bob@example.com")
    ]
    # A list message and a bounce (null sender) get no reply.
    send(
        smtp,
        "carol@example.net",
        ["alice@example.com"],
        message(subject="list", extra="List-Id: <other.example.net>\r\n"),
    )
    send(smtp, "", ["alice@example.com"], message(subject="bounce"))
    assert VacationReply.objects.count() == 1
    assert folders_of("bob@example.com")[0] == ("inbox", "Away", False)
    assert Message.objects.filter(folder__name="inbox", folder__mailbox__local_part="bob").count() == 1
    assert folders_of("alice@example.com")[-2:] == [("inbox", "list", False), ("inbox", "second", False)]


def test_redirect_to_a_local_mailbox_carries_the_whole_message(smtp, rules):  # noqa: F811
    send(smtp, "carol@example.net", ["alice@example.com"], message(subject="for bob"))
    assert folders_of("alice@example.com") == []
    assert folders_of("bob@example.com") == [("inbox", "for bob", False)]
    redirected = read_content(Message.objects.get().content)
    assert redirected.startswith(
        b"X-Everlock-Redirected: alice@example.com\r\nReturn-Path: <carol@example.net>\r\n"
    )
    assert b"\r\nReceived: from mx.example.net" in redirected
    assert redirected.endswith(message(subject="for bob"))
    assert Message.objects.get().envelope_from == "carol@example.net"


def test_redirect_to_a_remote_address_is_queued_with_the_sender_rewritten(smtp, rules):  # noqa: F811
    send(smtp, "carol@example.net", ["alice@example.com"], message(subject="for dave"))
    assert folders_of("alice@example.com") == []
    delivery = OutboundDelivery.objects.get()
    # SRS (mail.auth.srs): SPF passes at the next hop, a bounce comes back to us.
    assert delivery.envelope_from.startswith("SRS0=")
    assert delivery.envelope_from.endswith("=example.net=carol@example.com")
    assert srs.reverse(delivery.envelope_from) == "carol@example.net"
    assert (delivery.domain, delivery.helo_hostname) == ("example.org", "mail.example.com")
    assert list(delivery.recipients.values_list("address", flat=True)) == ["dave@example.org"]
    data = read_content(delivery.content)
    assert data.startswith(b"X-Everlock-Redirected: alice@example.com\r\n")
    assert data.endswith(message(subject="for dave"))


def test_a_discarded_message_still_reports_its_delivery(smtp, rules):  # noqa: F811
    # RFC 3461 section 5.2.2: the message reached the recipient's mailbox, whose rule
    # discarded it; NOTIFY=SUCCESS is answered "delivered" as for a filed one.
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("carol@example.net")
        client.rcpt("bob@example.com", ["NOTIFY=SUCCESS"])
        assert client.data(message(to="bob@example.com", extra=PADDING))[0] == 250
    assert not Message.objects.exists()
    row = OutboundDelivery.objects.get()
    assert list(row.recipients.values_list("address", flat=True)) == ["carol@example.net"]
    raw = read_content(row.content)
    assert b"Final-Recipient: rfc822; bob@example.com" in raw
    assert b"Action: delivered" in raw


def test_a_discarded_submission_reports_its_delivery_to_the_sender(smtp, rules):  # noqa: F811
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.mail("alice@example.com")
        client.rcpt("bob@example.com", ["NOTIFY=SUCCESS"])
        assert client.data(message(to="bob@example.com", extra=PADDING, sender="alice@example.com"))[0] == 250
    assert folders_of("bob@example.com") == []
    report = Message.objects.get(folder__mailbox__local_part="alice", folder__name="inbox")
    raw = read_content(report.content)
    assert b"Final-Recipient: rfc822; bob@example.com" in raw
    assert b"Action: delivered" in raw
