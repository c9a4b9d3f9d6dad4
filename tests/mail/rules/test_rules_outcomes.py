"""Every accepted recipient ends stored, queued or bounced, whatever the rules do.

One message from outside to alice@example.com through a real SMTP listener, for each rule
action and for redirects through local chains and loops; the test then looks for the
message everywhere it can be: filed copies, queue rows, and the log line that says why.
"""

import logging
import smtplib

import pytest

from mail.models import Mailbox, Message, OutboundDelivery, OutboundRecipient
from mail.services.mailboxes import ensure_mailbox
from mail.services.rules import set_rules
from tests.mail.smtp.conftest import example_com, nothing_stored, smtp, start_smtp  # noqa: F401

MESSAGE = (
    b"From: carol@example.net\r\nTo: alice@example.com\r\nSubject: Hi\r\n"
    b"Message-ID: <m1@example.net>\r\n\r\nHello\r\n"
)
MISSING = (
    "redirect by alice@example.com not followed (nobody@example.com: no such mailbox): filed into its inbox"
)


def rule(name, scope, action):
    return f'[[rule]]\nname = "{name}"\nscope = "{scope}"\n{action}\n\n'


def redirect(scope, *targets):
    quoted = ", ".join(f'"{t}"' for t in targets)
    return rule(f"{scope} redirects", scope, f"redirect = [{quoted}]")


# (rules, where copies of the message end up, queued addresses, a log line that must appear)
CASES = {
    "no rule": ("", [("alice", "inbox")], [], None),
    "fileinto": (rule("f", "alice@example.com", 'fileinto = "Work"'), [("alice", "Work")], [], None),
    "copy": (
        rule("c", "alice@example.com", 'copy = ["Archive"]'),
        [("alice", "Archive"), ("alice", "inbox")],
        [],
        None,
    ),
    "flags and header": (
        rule(
            "h",
            "alice@example.com",
            'seen = true\nflagged = true\nadd_header = { name = "X-L", value = "1" }',
        ),
        [("alice", "inbox")],
        [],
        None,
    ),
    "stop": (
        rule("s", "alice@example.com", "stop = true") + rule("f", "alice@example.com", 'fileinto = "Never"'),
        [("alice", "inbox")],
        [],
        None,
    ),
    "vacation": (
        rule("v", "alice@example.com", 'vacation = { days = 1, body = "Away." }'),
        [("alice", "inbox")],
        ["carol@example.net"],
        None,
    ),
    "forward local": (
        rule("fw", "alice@example.com", 'forward = ["bob@example.com"]'),
        [("alice", "inbox"), ("bob", "inbox")],
        [],
        None,
    ),
    "forward remote": (
        rule("fw", "alice@example.com", 'forward = ["dave@example.org"]'),
        [("alice", "inbox")],
        ["dave@example.org"],
        None,
    ),
    "redirect local": (redirect("alice@example.com", "bob@example.com"), [("bob", "inbox")], [], None),
    "redirect remote": (redirect("alice@example.com", "dave@example.org"), [], ["dave@example.org"], None),
    "redirect chain": (
        redirect("alice@example.com", "bob@example.com")
        + redirect("bob@example.com", "erin@example.com")
        + redirect("erin@example.com", "dave@example.org"),
        [],
        ["dave@example.org"],
        None,
    ),
    "redirect back": (
        redirect("alice@example.com", "bob@example.com") + redirect("bob@example.com", "alice@example.com"),
        [("bob", "inbox")],
        [],
        "redirect by bob@example.com not followed (alice@example.com: redirect loop "
        "alice@example.com -> bob@example.com -> alice@example.com): filed into its inbox",
    ),
    "redirect loop of three": (
        redirect("alice@example.com", "bob@example.com")
        + redirect("bob@example.com", "erin@example.com")
        + redirect("erin@example.com", "bob@example.com"),
        [("erin", "inbox")],
        [],
        "redirect by erin@example.com not followed (bob@example.com: redirect loop "
        "alice@example.com -> bob@example.com -> erin@example.com -> bob@example.com): filed into its inbox",
    ),
    "redirect past the hop limit": (
        "[limits]\nmax_redirect_hops = 2\n\n"
        + redirect("alice@example.com", "bob@example.com")
        + redirect("bob@example.com", "erin@example.com")
        + redirect("erin@example.com", "frank@example.com"),
        [("erin", "inbox")],
        [],
        "rule of erin@example.com: redirect to frank@example.com refused: loop: 2 X-Everlock-Redirected "
        "headers; kept in inbox",
    ),
    "redirect to a missing mailbox": (
        redirect("alice@example.com", "nobody@example.com"),
        [("alice", "inbox")],
        [],
        MISSING,
    ),
    "redirect to a mailbox that rejects": (
        redirect("alice@example.com", "bob@example.com")
        + rule("no", "bob@example.com", 'reject = { code = 550, enhanced = "5.7.1", text = "Not here" }'),
        [("alice", "inbox")],
        [],
        "redirect by alice@example.com not followed (bob@example.com: refused by a rule: "
        "550 5.7.1 Not here): filed into its inbox",
    ),
    "redirect to local and missing": (
        redirect("alice@example.com", "bob@example.com", "nobody@example.com"),
        [("alice", "inbox"), ("bob", "inbox")],
        [],
        MISSING,
    ),
    "forward to a missing mailbox": (
        rule("fw", "alice@example.com", 'forward = ["nobody@example.com"]'),
        [("alice", "inbox")],
        [],
        "rule message from alice@example.com not delivered to nobody@example.com: no such mailbox",
    ),
    "discard": (
        rule("d", "alice@example.com", "discard = true"),
        [],
        [],
        "message for alice@example.com discarded by rule 'd'",
    ),
    "redirect then discard": (
        redirect("alice@example.com", "bob@example.com") + rule("d", "bob@example.com", "discard = true"),
        [],
        [],
        "message for bob@example.com discarded by rule 'd'",
    ),
}


def where_stored():
    return sorted(
        Message.objects.filter(message_id="<m1@example.net>").values_list(
            "folder__mailbox__local_part", "folder__name"
        )
    )


@pytest.mark.parametrize("case", list(CASES))
def test_every_accepted_recipient_ends_somewhere(case, smtp, example_com, settings, tmp_path, caplog):  # noqa: F811
    rules, stored, queued, logged = CASES[case]
    settings.DATA_DIR = tmp_path
    for local in ("erin", "frank"):
        ensure_mailbox(domain=example_com, local_part=local)
    set_rules(text=rules)
    caplog.set_level(logging.INFO, logger="mail.smtp")
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        assert client.sendmail("carol@example.net", ["alice@example.com"], MESSAGE) == {}
    assert where_stored() == stored
    assert sorted(OutboundRecipient.objects.values_list("address", flat=True)) == queued
    # A redirected message's bounce stays inside the installation (its sender may be forged).
    assert not OutboundDelivery.objects.filter(
        envelope_from="carol@example.net", bounce_outside=True
    ).exists()
    if logged is not None:
        assert logged in caplog.messages
    # Only an explicit discard rule lets a recipient's message end nowhere, and it says so.
    assert stored or queued or "discard" in case


def test_a_rejecting_rule_refuses_at_smtp_time_so_nothing_was_accepted(smtp, example_com, settings, tmp_path):  # noqa: F811
    settings.DATA_DIR = tmp_path
    set_rules(
        text=rule("no", "alice@example.com", 'reject = { code = 550, enhanced = "5.7.1", text = "No" }')
    )
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        with pytest.raises(smtplib.SMTPDataError) as exc:
            client.sendmail("carol@example.net", ["alice@example.com"], MESSAGE)
    assert (exc.value.smtp_code, exc.value.smtp_error) == (550, b"5.7.1 No")
    assert nothing_stored()
    assert Mailbox.objects.filter(local_part="alice").exists()
