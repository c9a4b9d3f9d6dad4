"""The evaluator, table-driven: every condition, every action, combinators, scope, order and
stop, redirect loops and storms, vacation (RFC 3834) refusals."""

# ruff: noqa: E501 (tables of rules text and exact error messages read best unbroken)

from email import message_from_bytes

import pytest

from mail.rules.evaluate import evaluate
from mail.rules.language import parse_rules
from mail.rules.plan import DeliveryPlan, Filing, MessageFacts, Rejection

RAW = b"From: Bob <bob@example.net>\r\nTo: alice@example.com\r\nSubject: Hello\r\n\r\nbody\r\n"


class MemoryGate:
    """The evaluator's memory kept in dicts (the database one is tested in test_rules_engine)."""

    def __init__(self, *, replied: set | None = None, redirects: int = 0):
        self.replied = set(replied or ())
        self.redirects = redirects

    def vacation_due(self, *, recipient, sender, days):
        if (recipient, sender) in self.replied:
            return False
        self.replied.add((recipient, sender))
        return True

    def redirects_allowed(self, *, sender, count, per_hour):
        if self.redirects + count > per_hour:
            return False
        self.redirects += count
        return True


def facts(
    *,
    headers=(
        ("From", "Bob <bob@example.net>"),
        ("To", "alice@example.com"),
        ("Subject", "Hello"),
        ("Message-ID", "<m1@example.net>"),
    ),
    envelope_from="bob@example.net",
    recipient="alice@example.com",
    size=1000,
    authenticated=False,
    raw=RAW,
):
    return MessageFacts(
        envelope_from=envelope_from,
        recipient=recipient,
        headers=tuple(headers),
        size=size,
        authenticated=authenticated,
        raw=raw,
    )


def run(text, f=None, gate=None):
    return evaluate(parse_rules(text), f or facts(), gate=gate or MemoryGate())


def folders(plan: DeliveryPlan) -> list[str]:
    return [f.folder for f in plan.folders()]


def rule(match: str, extra: str = 'fileinto = "Hit"') -> str:
    return f'[[rule]]\nname = "r"\nmatch = {match}\n{extra}\n'


@pytest.mark.parametrize(
    ("match", "hits"),
    [
        ('{ header = "Subject", exists = true }', True),
        ('{ header = "X-Spam", exists = true }', False),
        ('{ header = "X-Spam", exists = false }', True),
        ('{ header = "subject", equals = "HELLO" }', True),
        ('{ header = "Subject", equals = "HELLO", case_sensitive = true }', False),
        ('{ header = "Subject", equals = "Hell" }', False),
        ('{ header = "Subject", contains = "ell" }', True),
        ('{ header = "Subject", contains = ["zz", "LLO"] }', True),
        ('{ header = "From", glob = "*<bob@example.net>" }', True),
        ('{ header = "From", glob = "bob*" }', True),
        ('{ header = "From", glob = "*@example.com>" }', False),
        ('{ header = "From", regex = "example\\\\.NET" }', True),
        ('{ header = "From", regex = "example\\\\.NET", case_sensitive = true }', False),
        ('{ header = "Subject", regex = "^hel" }', True),
        ('{ envelope = "from", equals = "BOB@example.net" }', True),
        ('{ envelope = "from", glob = "*@example.com" }', False),
        ('{ envelope = "to", equals = "alice@example.com" }', True),
        ('{ envelope = "to", glob = "bob@*" }', False),
        ("{ size_over = 999 }", True),
        ("{ size_over = 1000 }", False),
        ("{ size_under = 1001 }", True),
        ("{ size_under = 1000 }", False),
        ("{ authenticated = false }", True),
        ("{ authenticated = true }", False),
        ('{ not = { header = "Subject", exists = true } }', False),
        ("{ not = { authenticated = true } }", True),
        ("{ all = [ { size_over = 1 }, { authenticated = false } ] }", True),
        ("{ all = [ { size_over = 1 }, { authenticated = true } ] }", False),
        ("{ any = [ { size_over = 5000 }, { authenticated = false } ] }", True),
        ("{ any = [ { size_over = 5000 }, { authenticated = true } ] }", False),
        ("[ { size_over = 1 }, { size_under = 2000 } ]", True),
        (
            '{ any = [ { all = [ { size_over = 1 }, { not = { header = "To", contains = "alice" } } ] }, { size_under = 2 } ] }',
            False,
        ),
    ],
)
def test_conditions(match, hits):
    plan = run(rule(match)).plan
    assert folders(plan) == (["Hit"] if hits else ["inbox"])
    assert plan.matched == (["r"] if hits else [])


def test_encoded_and_folded_headers_are_compared_decoded():
    f = facts(headers=(("Subject", "=?utf-8?q?Caf=C3=A9?=\r\n ordering"),))
    assert folders(run(rule('{ header = "Subject", equals = "café ordering" }'), f).plan) == ["Hit"]


def test_any_of_repeated_headers_matches():
    f = facts(headers=(("Received", "from a.test"), ("Received", "from b.test")))
    assert folders(run(rule('{ header = "Received", contains = "b.test" }'), f).plan) == ["Hit"]


def test_no_rules_and_no_match_file_into_inbox():
    assert run("").plan.folders() == [Filing("inbox")]
    ev = run(rule("{ size_over = 99999 }"))
    assert ev.plan.folders() == [Filing("inbox")]
    assert ev.trace == ["no rule matches", "filed into: inbox"]


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        ('fileinto = "Lists"', [Filing("Lists")]),
        ('copy = "Archive"', [Filing("Archive"), Filing("inbox")]),
        ('copy = ["A", "B"]\nfileinto = "C"', [Filing("A"), Filing("B"), Filing("C")]),
        ("seen = true", [Filing("inbox", seen=True)]),
        ("flagged = true", [Filing("inbox", flagged=True)]),
        ('seen = true\nfileinto = "Lists"', [Filing("Lists", seen=True)]),
        ('fileinto = "inbox"', [Filing("inbox")]),
        ("discard = true", []),
        ('copy = "A"\ndiscard = true', [Filing("A")]),
    ],
)
def test_filing_actions(actions, expected):
    plan = run(rule("[]", actions)).plan
    assert plan.folders() == expected
    assert plan.discard == (expected == [])


def test_add_header():
    plan = run(
        rule("[]", 'add_header = [ { name = "X-Label", value = "a" }, { name = "X-B", value = "" } ]')
    ).plan
    assert plan.add_headers == [("X-Label", "a"), ("X-B", "")]
    assert folders(plan) == ["inbox"]


def test_reject_drops_everything_and_ends_evaluation():
    text = (
        rule("[]", 'copy = "A"\nadd_header = { name = "X", value = "1" }\nforward = "c@example.net"')
        + '\n[[rule]]\nname = "no"\nreject = { code = 554, enhanced = "5.7.1", text = "Go away" }\n'
        + '\n[[rule]]\nname = "after"\nfileinto = "Z"\n'
    )
    plan = run(text).plan
    assert plan.reject == Rejection(554, "5.7.1", "Go away")
    assert plan.matched == ["r", "no"]
    assert (plan.filings, plan.add_headers, plan.outgoing, plan.folders()) == ([], [], [], [])


def test_order_flags_and_stop():
    text = (
        '[[rule]]\nname = "one"\ncopy = "A"\n\n'
        '[[rule]]\nname = "two"\nflagged = true\ncopy = "B"\nstop = true\n\n'
        '[[rule]]\nname = "three"\nfileinto = "C"\n'
    )
    ev = run(text)
    assert ev.plan.matched == ["one", "two"]
    assert ev.plan.folders() == [Filing("A"), Filing("B", flagged=True), Filing("inbox", flagged=True)]
    assert ev.trace == [
        "rule 'one' matches",
        "  copy into 'A'",
        "rule 'two' matches",
        "  flags: seen=False flagged=True",
        "  copy into 'B'",
        "  stop",
        "filed into: A, B (flagged), inbox (flagged)",
    ]


def test_a_later_rule_flags_an_earlier_filing_of_the_same_folder():
    text = '[[rule]]\nname = "a"\ncopy = "A"\n\n[[rule]]\nname = "b"\nseen = true\ncopy = "A"\n'
    assert run(text).plan.folders() == [Filing("A", seen=True), Filing("inbox", seen=True)]


def test_scope():
    text = (
        '[[rule]]\nname = "dom"\nscope = "example.com"\ncopy = "D"\n\n'
        '[[rule]]\nname = "bob"\nscope = "bob@example.com"\ncopy = "B"\n\n'
        '[[rule]]\nname = "other"\nscope = "example.net"\ncopy = "O"\n'
    )
    assert folders(run(text).plan) == ["D", "inbox"]
    assert folders(run(text, facts(recipient="bob@example.com")).plan) == ["D", "B", "inbox"]
    assert folders(run(text, facts(recipient="bob@example.net")).plan) == ["O", "inbox"]


def test_redirect_sends_the_message_on_with_a_trace_header():
    plan = run(rule("[]", 'redirect = ["carol@example.net", "dave@example.com"]')).plan
    assert plan.discard is True and plan.folders() == []
    [out] = plan.outgoing
    assert out.envelope_from == "bob@example.net"
    assert out.recipients == ("carol@example.net", "dave@example.com")
    assert out.data == b"X-Everlock-Redirected: alice@example.com\r\n" + RAW


def test_forward_keeps_a_copy():
    plan = run(rule("[]", 'forward = "carol@example.net"')).plan
    assert folders(plan) == ["inbox"]
    assert [o.recipients for o in plan.outgoing] == [("carol@example.net",)]


@pytest.mark.parametrize(
    ("headers", "limits", "gate", "reason"),
    [
        (
            (("X-Everlock-Redirected", "alice@example.com"),),
            "",
            MemoryGate(),
            "loop: already redirected by alice@example.com",
        ),
        (
            tuple(("X-Everlock-Redirected", f"u{i}@example.org") for i in range(3)),
            "max_redirect_hops = 3",
            MemoryGate(),
            "loop: 3 X-Everlock-Redirected headers",
        ),
        ((), "max_redirect_targets = 1", MemoryGate(), "more than 1 redirect targets"),
        (
            (),
            "redirects_per_sender_per_hour = 10",
            MemoryGate(redirects=9),
            "more than 10 redirects per hour from this sender",
        ),
    ],
)
def test_redirect_loops_and_storms_are_refused_and_the_message_kept(headers, limits, gate, reason):
    text = f"[limits]\n{limits}\n\n" + rule("[]", 'redirect = ["carol@example.net", "dave@example.com"]')
    ev = run(text, facts(headers=headers), gate)
    assert ev.plan.outgoing == []
    assert folders(ev.plan) == ["inbox"]
    assert (
        ev.trace[1] == f"  redirect to carol@example.net, dave@example.com refused: {reason}; kept in inbox"
    )


VACATION = rule("[]", 'vacation = { days = 5, body = "I am away." }')


def test_vacation_reply_follows_rfc_3834():
    f = facts(headers=(*facts().headers, ("References", "<m0@example.net>")))
    plan = run(VACATION, f).plan
    assert folders(plan) == ["inbox"]
    [out] = plan.outgoing
    assert out.envelope_from == "" and out.recipients == ("bob@example.net",)
    msg = message_from_bytes(out.data)
    assert msg["From"] == "alice@example.com"
    assert msg["To"] == "bob@example.net"
    assert msg["Subject"] == "Auto: Hello"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@example.net>"
    assert msg["References"] == "<m0@example.net> <m1@example.net>"
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg["Date"].endswith(" +0000")  # RFC 5322 section 3.3
    assert msg.get_payload(decode=True) == b"I am away.\r\n"


def test_vacation_once_per_sender():
    gate = MemoryGate()
    assert len(run(VACATION, gate=gate).plan.outgoing) == 1
    ev = run(VACATION, gate=gate)
    assert ev.plan.outgoing == []
    assert ev.trace[1] == "  vacation: no reply (already replied to bob@example.net within 5 days)"
    assert len(run(VACATION, facts(envelope_from="carol@example.net"), gate).plan.outgoing) == 1


BASE = (("To", "alice@example.com"), ("Subject", "Hello"))


@pytest.mark.parametrize(
    ("envelope_from", "headers", "reason"),
    [
        ("", BASE, "null sender"),
        ("Alice@example.com", BASE, "the recipient's own address"),
        ("MAILER-DAEMON@example.net", BASE, "automated sender MAILER-DAEMON@example.net"),
        ("owner-list@example.net", BASE, "automated sender owner-list@example.net"),
        ("list-request@example.net", BASE, "automated sender list-request@example.net"),
        ("bob@example.net", (*BASE, ("Auto-Submitted", "auto-generated")), "Auto-Submitted: auto-generated"),
        ("bob@example.net", (*BASE, ("Precedence", "bulk")), "Precedence: bulk"),
        ("bob@example.net", (*BASE, ("Precedence", "List")), "Precedence: List"),
        ("bob@example.net", (*BASE, ("Precedence", "junk")), "Precedence: junk"),
        ("bob@example.net", (*BASE, ("List-Id", "<l.example.net>")), "mailing list message"),
        ("bob@example.net", (*BASE, ("List-Unsubscribe", "<mailto:u@example.net>")), "mailing list message"),
        ("bob@example.net", (("To", "list@example.net"),), "the recipient is not named in To or Cc"),
    ],
)
def test_vacation_never_answers_lists_or_programs(envelope_from, headers, reason):
    ev = run(VACATION, facts(envelope_from=envelope_from, headers=headers))
    assert ev.plan.outgoing == []
    assert ev.trace[1] == f"  vacation: no reply ({reason})"


@pytest.mark.parametrize(
    "headers",
    [
        (("To", "Alice <ALICE@example.com>"),),
        (("Cc", "x@example.net, alice@example.com"),),
        (("To", "al@example.com"), ("Auto-Submitted", "no")),
    ],
)
def test_vacation_answers_mail_naming_the_recipient(headers):
    text = rule(
        "[]",
        'vacation = { body = "x", subject = "Away", from = "al@example.com", addresses = ["al@example.com"] }',
    )
    [out] = run(text, facts(headers=headers)).plan.outgoing
    msg = message_from_bytes(out.data)
    assert (msg["Subject"], msg["From"]) == ("Away", "al@example.com")
