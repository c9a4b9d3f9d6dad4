"""docs/rules.md and docs/grants.md stay true: every example parses, every match and action of
the rules language has its section, every resource form and role is explained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accounts.grants import ROLES, GrantError, parse_resource
from mail.rules.language import _OPS, _RULE_KEYS, RulesError, parse_rules

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES_MD = (DOCS / "rules.md").read_text()
GRANTS_MD = (DOCS / "grants.md").read_text()


def toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```$", RULES_MD, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("block", toml_blocks())
def test_every_rules_example_parses(block):
    if "[[rule]]" in block or "[limits]" in block:
        parse_rules(block)
        return
    # Blocks of single `match = ...` lines: each is a rule's condition.
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines and all(line.startswith("match = ") for line in lines), block
    for line in lines:
        parse_rules(f'[[rule]]\nname = "example"\n{line}\nfileinto = "X"\n')


def test_every_action_and_condition_is_documented():
    headings = set(re.findall(r"^### (.+)$", RULES_MD, re.MULTILINE))
    actions = _RULE_KEYS - {"name", "scope", "match"}
    documented = {key for heading in headings for key in re.findall(r"`(\w+)`", heading)}
    assert actions <= documented, actions - documented
    for op in _OPS:
        assert f"| `{op}" in RULES_MD, op
    for condition in (
        *("header", "envelope", "size_over", "size_under", "authenticated", "all", "any", "not"),
        *("auth", "spf", "dkim", "dmarc", "arc", "iprev"),
    ):
        assert f"{{ {condition} = " in RULES_MD, condition


def test_the_documented_error_is_what_the_parser_says():
    quoted = re.search(r"^error: (rules\.toml line 7, .*); nothing changed$", RULES_MD, re.MULTILINE)[1]
    text = (
        '[[rule]]\nname = "one"\nfileinto = "A"\n\n\n\n'
        '[[rule]]\nname = "lists"\nmatch = { header = "List Id", exists = true }\n'
    )
    with pytest.raises(RulesError, match=re.escape(quoted)):
        parse_rules(text)


def test_grants_doc_resources_parse_and_roles_are_explained():
    examples = re.findall(r"^\| `[^`]+` \| [^|]+ \| `([^`]+)` \|$", GRANTS_MD, re.MULTILINE)
    assert len(examples) == 5
    for example in examples:
        assert str(parse_resource(example)) == example
    for role in ROLES:
        assert f"| `{role}` |" in GRANTS_MD, role
    refused = re.search(r"`(malformed resource 'mail/example\.com' \(.*?\))`", GRANTS_MD)[1]
    with pytest.raises(GrantError, match=re.escape(refused)):
        parse_resource("mail/example.com")
    for line in re.findall(r"^/users grant \S+ (\S+) (\S+)$", GRANTS_MD, re.MULTILINE):
        parse_resource(line[0])
        assert line[1] in ROLES
