"""The rules.toml parser: every form it accepts compiles to the right thing; every invalid
file is refused with an error naming the line, rule and field."""

# ruff: noqa: E501 (tables of rules text and exact error messages read best unbroken)

import re

import pytest

from mail.rules.language import DEFAULT_LIMITS, Condition, Reject, RulesError, Vacation, parse_rules

INVALID = [
    pytest.param(
        'rule = [\n[[rule]\nname = "x"\n', "rules.toml: Invalid value (at line 2, column 3)", id="toml syntax"
    ),
    pytest.param(
        "foo = 1\n",
        "rules.toml: unknown top-level key 'foo' (expected [[rule]] or [limits])",
        id="unknown top",
    ),
    pytest.param("rule = 1\n", "rules.toml: rule must be an array of tables ([[rule]])", id="rule not array"),
    pytest.param("[limits]\nfoo = 1\n", "rules.toml: limits: unknown key 'foo'", id="limits unknown"),
    pytest.param(
        "[limits]\nmax_redirect_hops = -1\n",
        "rules.toml: limits.max_redirect_hops: expected an integer from 0 to 10000",
        id="limits bad",
    ),
    pytest.param(
        '[[rule]]\nfileinto = "x"\n', "rules.toml line 1, rule 1, field name: missing", id="missing name"
    ),
    pytest.param(
        '[[rule]]\nname = " "\n',
        "rules.toml line 1, rule 1, field name: expected a non-empty string",
        id="empty name",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\n\n[[rule]]\nname = "a"\n',
        "rules.toml line 4, rule 2 'a', field name: duplicate rule name 'a'",
        id="dup",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nfile_into = "x"\n',
        "rules.toml line 1, rule 1 'a', field file_into: unknown key",
        id="unknown key",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nscope = "everything"\n',
        "rules.toml line 1, rule 1 'a', field scope: expected \"all\", a domain or a mailbox address, not 'everything'",
        id="bad scope",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nscope = "a@b"\n',
        "rules.toml line 1, rule 1 'a', field scope: not a mailbox address: 'a@b'",
        id="bad scope mbox",
    ),
    pytest.param(
        '[[rule]]\nname = "r"\n\n[[rule]]\nname = "lists"\nmatch = { all = [ { header = "Subject", contains = "x" }, { header = "List-Id", regex = "(" } ] }\n',
        "rules.toml line 4, rule 2 'lists', field match.all[1].regex: invalid regular expression: missing ), unterminated subpattern at position 0",
        id="bad regex",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { header = "Subject", equals = "x", glob = "y" }\n',
        "rules.toml line 1, rule 1 'a', field match: expected exactly one of exists, equals, contains, glob, regex",
        id="two ops",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { header = "Subject" }\n',
        "rules.toml line 1, rule 1 'a', field match: expected exactly one of exists, equals, contains, glob, regex",
        id="no op",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { header = "Sub ject", exists = true }\n',
        "rules.toml line 1, rule 1 'a', field match.header: not a header field name: 'Sub ject'",
        id="bad header name",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { envelope = "cc", equals = "x" }\n',
        "rules.toml line 1, rule 1 'a', field match.envelope: expected \"from\" or \"to\", not 'cc'",
        id="bad envelope",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { sender = "x" }\n',
        "rules.toml line 1, rule 1 'a', field match: expected one of header, envelope, size_over, size_under, authenticated, auth, spf, dkim, dmarc, arc, iprev, all, any, not",
        id="unknown cond",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { all = [ { size_over = 1 } ], any = [] }\n',
        "rules.toml line 1, rule 1 'a', field match: all stands alone in its table",
        id="all mixed",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { any = [] }\n',
        "rules.toml line 1, rule 1 'a', field match.any: expected a non-empty list of conditions",
        id="empty any",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { size_over = -5 }\n',
        "rules.toml line 1, rule 1 'a', field match.size_over: expected a number of bytes",
        id="size neg",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { authenticated = "yes" }\n',
        "rules.toml line 1, rule 1 'a', field match.authenticated: expected true or false",
        id="auth str",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nfileinto = 3\n',
        "rules.toml line 1, rule 1 'a', field fileinto: expected a non-empty string",
        id="fileinto int",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\ncopy = []\n',
        "rules.toml line 1, rule 1 'a', field copy: expected a string or a non-empty list of strings",
        id="copy empty",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nredirect = ["bob@example.com", "nobody"]\n',
        "rules.toml line 1, rule 1 'a', field redirect[1]: not an email address: 'nobody'",
        id="redirect bad",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nreject = { code = 450, text = "no" }\n',
        "rules.toml line 1, rule 1 'a', field reject.code: expected 550, 551, 552, 553 or 554",
        id="reject code",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nreject = { code = 550, enhanced = "4.7.1", text = "no" }\n',
        "rules.toml line 1, rule 1 'a', field reject.enhanced: expected an enhanced status code 5.x.y, not '4.7.1'",
        id="reject enh",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nreject = { text = "café" }\n',
        "rules.toml line 1, rule 1 'a', field reject.text: the reply text is one line of printable ASCII",
        id="reject text",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nreject = { text = "no" }\nfileinto = "x"\n',
        "rules.toml line 1, rule 1 'a', field fileinto: a rule that rejects has no other actions",
        id="reject others",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nvacation = { days = 0, body = "x" }\n',
        "rules.toml line 1, rule 1 'a', field vacation.days: expected an integer from 1 to 365",
        id="vac days",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nvacation = { days = 3 }\n',
        "rules.toml line 1, rule 1 'a', field vacation.body: missing",
        id="vac body",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nvacation = { body = "x", interval = 3 }\n',
        "rules.toml line 1, rule 1 'a', field vacation.interval: unknown key",
        id="vac key",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nadd_header = { name = "X-A" }\n',
        "rules.toml line 1, rule 1 'a', field add_header[0]: expected a table { name = ..., value = ... }",
        id="add header",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nadd_header = [ { name = "X-A", value = "1" }, { name = "X-B", value = "a\\nb" } ]\n',
        "rules.toml line 1, rule 1 'a', field add_header[1].value: a header value is one line",
        id="add header value",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nseen = "yes"\n',
        "rules.toml line 1, rule 1 'a', field seen: expected true or false",
        id="seen str",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { not = { size_over = 1 }, size_under = 3 }\n',
        "rules.toml line 1, rule 1 'a', field match: not stands alone in its table",
        id="not two",
    ),
    pytest.param(
        '[[rule]]\nname = "a"\nmatch = { header = "X", equals = "x", case_sensitive = 1 }\n',
        "rules.toml line 1, rule 1 'a', field match.case_sensitive: expected true or false",
        id="case_sensitive",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_files_are_refused_with_exact_messages(text, message):
    with pytest.raises(RulesError) as exc:
        parse_rules(text)
    assert str(exc.value) == message


def _one(text: str):
    rules = parse_rules('[[rule]]\nname = "r"\n' + text).rules
    assert len(rules) == 1
    return rules[0]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (
            '{ header = "X-Spam", exists = true }',
            Condition(kind="header", name="x-spam", op="exists", exists=True),
        ),
        (
            '{ header = "X-Spam", exists = false }',
            Condition(kind="header", name="x-spam", op="exists", exists=False),
        ),
        (
            '{ header = "Subject", equals = "Hi" }',
            Condition(kind="header", name="subject", op="equals", values=("hi",)),
        ),
        (
            '{ header = "Subject", equals = "Hi", case_sensitive = true }',
            Condition(kind="header", name="subject", op="equals", values=("Hi",), case_sensitive=True),
        ),
        (
            '{ header = "Subject", contains = ["A", "b"] }',
            Condition(kind="header", name="subject", op="contains", values=("a", "b")),
        ),
        (
            '{ envelope = "From", equals = "x@example.net" }',
            Condition(kind="envelope", name="from", op="equals", values=("x@example.net",)),
        ),
        (
            '{ envelope = "to", equals = "a@example.com" }',
            Condition(kind="envelope", name="to", op="equals", values=("a@example.com",)),
        ),
        ("{ size_over = 100 }", Condition(kind="size_over", number=100)),
        ("{ size_under = 100 }", Condition(kind="size_under", number=100)),
        ("{ authenticated = true }", Condition(kind="authenticated", flag=True)),
        (
            "{ not = { authenticated = false } }",
            Condition(kind="not", children=(Condition(kind="authenticated", flag=False),)),
        ),
        (
            "[ { size_over = 1 }, { size_under = 9 } ]",
            Condition(
                kind="all",
                children=(Condition(kind="size_over", number=1), Condition(kind="size_under", number=9)),
            ),
        ),
        (
            "{ any = [ { size_over = 1 }, { all = [ { size_under = 9 } ] } ] }",
            Condition(
                kind="any",
                children=(
                    Condition(kind="size_over", number=1),
                    Condition(kind="all", children=(Condition(kind="size_under", number=9),)),
                ),
            ),
        ),
    ],
)
def test_conditions_compile(match, expected):
    assert _one(f"match = {match}\n").match == expected


def test_regex_and_glob_are_compiled_once():
    rule = _one(
        'match = { any = [ { header = "List-Id", glob = ["*<A.example.net>", "x?"] }, { envelope = "from", regex = "^owner-" } ] }\n'
    )
    glob, regex = rule.match.children
    assert glob.op == "glob" and glob.values == ("*<a.example.net>", "x?")
    assert glob.regex.match("announce <a.example.net>") and glob.regex.match("xy")
    assert not glob.regex.match("xyz")
    assert regex.regex.pattern == "^owner-" and regex.regex.flags & re.IGNORECASE
    cs = _one('match = { header = "X", regex = "^A$", case_sensitive = true }\n').match
    assert not cs.regex.flags & re.IGNORECASE


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("", "scope", "all"),
        ('scope = "Example.COM"\n', "scope", "example.com"),
        ('scope = "Alice@Example.com"\n', "scope", "alice@example.com"),
        ('scope = "bücher.example"\n', "scope", "xn--bcher-kva.example"),
        ('scope = "Jörg@Bücher.example"\n', "scope", "jörg@xn--bcher-kva.example"),
        ('fileinto = " Lists/A "\n', "fileinto", "Lists/A"),
        ('copy = "Archive"\n', "copy", ("Archive",)),
        ('copy = ["A", "B"]\n', "copy", ("A", "B")),
        ('redirect = "bob@example.net"\n', "redirect", ("bob@example.net",)),
        (
            'forward = ["bob@example.net", "carol@example.com"]\n',
            "forward",
            ("bob@example.net", "carol@example.com"),
        ),
        ("seen = true\n", "seen", True),
        ("flagged = true\n", "flagged", True),
        ("discard = true\n", "discard", True),
        ("stop = true\n", "stop", True),
        ('add_header = { name = "X-Label", value = "l" }\n', "add_headers", (("X-Label", "l"),)),
        (
            'add_header = [ { name = "X-A", value = "" }, { name = "X-B", value = "2" } ]\n',
            "add_headers",
            (("X-A", ""), ("X-B", "2")),
        ),
        ('reject = { text = "No thanks" }\n', "reject", Reject(550, "5.7.1", "No thanks")),
        (
            'reject = { code = 552, enhanced = "5.3.4", text = "Too big" }\n',
            "reject",
            Reject(552, "5.3.4", "Too big"),
        ),
        ('vacation = { body = "Away." }\n', "vacation", Vacation(7, "", "Away.", "", ())),
        (
            'vacation = { days = 3, subject = "Out", body = "Away.", from = "a@example.com", addresses = ["Al@Example.com"] }\n',
            "vacation",
            Vacation(3, "Out", "Away.", "a@example.com", ("al@example.com",)),
        ),
    ],
)
def test_rule_fields(text, field, value):
    assert getattr(_one(text), field) == value


def test_order_names_and_limits():
    ruleset = parse_rules(
        '[limits]\nmax_redirect_targets = 2\n\n[[rule]]\nname = "b"\n\n[[rule]]\nname = "a"\n'
    )
    assert [r.name for r in ruleset.rules] == ["b", "a"]
    assert ruleset.rules[0].match is None
    assert ruleset.limits == {**DEFAULT_LIMITS, "max_redirect_targets": 2}
    assert parse_rules("").rules == ()


def test_scope_selects_rules():
    ruleset = parse_rules(
        '[[rule]]\nname = "all"\n\n[[rule]]\nname = "dom"\nscope = "example.com"\n\n'
        '[[rule]]\nname = "alice"\nscope = "alice@example.com"\n'
    )
    assert [r.name for r in ruleset.for_recipient("alice@example.com")] == ["all", "dom", "alice"]
    assert [r.name for r in ruleset.for_recipient("bob@example.com")] == ["all", "dom"]
    assert [r.name for r in ruleset.for_recipient("alice@example.net")] == ["all"]


def test_the_documented_example_parses():
    from mail.rules import language

    example = language.__doc__.split("Example::\n\n")[1].split("\nConditions")[0]
    ruleset = parse_rules("\n".join(line[4:] for line in example.splitlines()))
    assert [r.name for r in ruleset.rules] == [
        "spam",
        "announce list",
        "big mail from outside",
        "boss",
        "away",
    ]
