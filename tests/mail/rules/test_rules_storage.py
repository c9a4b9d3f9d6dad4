"""Rules in the database and in rules.toml: set, import, round-trip, pick-up without restart,
the database memory of vacation replies and redirects, the console and the admin."""

import tomllib
from datetime import timedelta

import pytest

from mail.models import RedirectRecord, RuleSet, VacationReply
from mail.rules import engine
from mail.rules.language import RulesError, parse_rules
from mail.rules.plan import Filing, MessageFacts
from mail.services.rules import current_text, dry_run, import_rules_file, rules_file_path, set_rules
from sshadmin.commands import CommandError, Context, load_commands

RULES = """# Alice's rules
[[rule]]
name = "lists"
scope = "example.com"
match = { header = "List-Id", exists = true }
fileinto = "Lists"

[[rule]]
name = "away"
scope = "alice@example.com"
vacation = { days = 2, body = "Away." }
"""

FACTS = MessageFacts(
    envelope_from="bob@example.net",
    recipient="alice@example.com",
    headers=(("To", "alice@example.com"), ("Subject", "Hi"), ("Message-ID", "<1@example.net>")),
    size=10,
    authenticated=False,
    raw=b"To: alice@example.com\r\nSubject: Hi\r\nMessage-ID: <1@example.net>\r\n\r\nhi\r\n",
)


@pytest.fixture
def data_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    return tmp_path


def test_set_rules_stores_and_writes_the_file_on_commit(db, data_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        change = set_rules(text=RULES)
    assert (change.changed, change.version, change.rules) == (True, 1, 2)
    assert current_text() == RULES
    path = data_dir / "everlock-mail" / "rules.toml"
    assert rules_file_path() == path
    assert path.read_text() == RULES
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = set_rules(text=RULES)
    assert (again.changed, again.version, len(callbacks)) == (False, 1, 0)


def test_an_invalid_text_changes_nothing(db, data_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        set_rules(text=RULES)
    bad = RULES + '\n[[rule]]\nname = "bad"\nmatch = { header = "Subject", regex = "[" }\n'
    with pytest.raises(RulesError) as exc:
        set_rules(text=bad)
    assert str(exc.value) == (
        "rules.toml line 13, rule 3 'bad', field match.regex: "
        "invalid regular expression: unterminated character set at position 0"
    )
    assert RuleSet.objects.get().version == 1
    assert current_text() == RULES
    assert (data_dir / "everlock-mail" / "rules.toml").read_text() == RULES


def test_import_from_the_file(db, data_dir, django_capture_on_commit_callbacks):
    with pytest.raises(RulesError) as exc:
        import_rules_file()
    assert str(exc.value) == f"{data_dir / 'everlock-mail' / 'rules.toml'}: no such file"
    path = data_dir / "everlock-mail" / "rules.toml"
    path.parent.mkdir()
    path.write_text('[[rule]]\nname = "x"\nfileinto = \n')
    with pytest.raises(RulesError) as exc:
        import_rules_file()
    assert str(exc.value) == "rules.toml: Invalid value (at line 3, column 12)"
    assert not RuleSet.objects.exists()
    path.write_text(RULES)
    with django_capture_on_commit_callbacks(execute=True):
        change = import_rules_file()
    assert (change.changed, change.version, current_text()) == (True, 1, RULES)


def test_round_trip_export_edit_import_export(db, data_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        set_rules(text=RULES)
    path = data_dir / "everlock-mail" / "rules.toml"
    exported = path.read_text()
    edited = exported.replace('fileinto = "Lists"', 'fileinto = "Lists/All"\nseen = true')
    path.write_text(edited)
    with django_capture_on_commit_callbacks(execute=True):
        assert import_rules_file().version == 2
    again = path.read_text()
    assert again == edited
    assert tomllib.loads(again) == tomllib.loads(edited)
    assert parse_rules(again) == parse_rules(edited)
    assert parse_rules(again).rules[0].fileinto == "Lists/All"


def test_a_change_is_picked_up_without_restart(db, data_dir):
    assert engine.plan_delivery(FACTS).folders() == [Filing("inbox")]
    set_rules(text='[[rule]]\nname = "a"\nfileinto = "A"\n')
    first = engine.current_rules()
    assert engine.plan_delivery(FACTS).folders() == [Filing("A")]
    assert engine.current_rules() is first  # compiled once per version
    set_rules(text='[[rule]]\nname = "b"\nfileinto = "B"\n')
    assert engine.plan_delivery(FACTS).folders() == [Filing("B")]


def test_vacation_memory_in_the_database(db, data_dir):
    set_rules(text=RULES)
    [reply] = engine.plan_delivery(FACTS).outgoing
    assert reply.recipients == ("bob@example.net",)
    row = VacationReply.objects.get()
    assert (row.recipient, row.sender) == ("alice@example.com", "bob@example.net")
    assert engine.plan_delivery(FACTS).outgoing == []
    later = row.last_sent_at + timedelta(days=2)
    assert engine.plan_delivery(FACTS, now=later - timedelta(minutes=1)).outgoing == []
    [again] = engine.plan_delivery(FACTS, now=later).outgoing
    assert again.recipients == ("bob@example.net",)
    assert list(VacationReply.objects.values_list("last_sent_at", flat=True)) == [later]


def test_redirect_storm_memory_in_the_database(db, data_dir):
    set_rules(
        text="[limits]\nredirects_per_sender_per_hour = 3\n\n"
        '[[rule]]\nname = "fw"\nredirect = ["c@example.net", "d@example.net"]\n'
    )
    assert len(engine.plan_delivery(FACTS).outgoing) == 1
    plan = engine.plan_delivery(FACTS)
    assert (plan.outgoing, plan.folders()) == ([], [Filing("inbox")])
    assert list(RedirectRecord.objects.values_list("sender", "count")) == [("bob@example.net", 2)]
    sent_at = RedirectRecord.objects.get().created_at
    assert engine.plan_delivery(FACTS, now=sent_at + timedelta(minutes=59)).outgoing == []
    assert len(engine.plan_delivery(FACTS, now=sent_at + timedelta(minutes=61)).outgoing) == 1


def test_dry_run_records_nothing(db, data_dir):
    set_rules(text=RULES)
    raw = b"Return-Path: <bob@example.net>\r\nTo: alice@example.com\r\nList-Id: <l.example.net>\r\n\r\nx\r\n"
    result = dry_run(recipient="Alice@Example.COM", raw=raw)
    assert result.trace == [
        "rule 'lists' matches",
        "  file into 'Lists'",
        "rule 'away' matches",
        "  vacation: no reply (mailing list message)",
        "filed into: Lists",
    ]
    result = dry_run(
        recipient="alice@example.com", raw=FACTS.raw.replace(b"To:", b"Return-Path: <bob@example.net>\r\nTo:")
    )
    assert result.trace[-2:] == ["  vacation: reply to bob@example.net", "filed into: inbox"]
    assert not VacationReply.objects.exists()
    with pytest.raises(RulesError) as exc:
        dry_run(recipient="alice@example.com", message_id=999999)
    assert str(exc.value) == "no stored message with id 999999"


def test_console_commands(db, data_dir, django_capture_on_commit_callbacks):
    registry = load_commands()
    ctx = Context(user=None)

    def run(*words):
        cmd, n = registry.find(list(words))
        cmd.check_arity(list(words[n:]))
        return cmd.handler(ctx, *words[n:])

    assert run("mail", "rules", "show") == (
        "no mail rules: every message goes to inbox "
        f"({data_dir / 'everlock-mail' / 'rules.toml'} to add some)"
    )
    path = data_dir / "everlock-mail" / "rules.toml"
    path.parent.mkdir()
    path.write_text('[[rule]]\nname = "x"\nscope = "nowhere"\n')
    with pytest.raises(CommandError) as exc:
        run("mail", "rules", "import")
    assert str(exc.value) == (
        "rules.toml line 1, rule 1 'x', field scope: expected \"all\", a domain or a mailbox address, "
        "not 'nowhere'; nothing changed"
    )
    path.write_text(RULES)
    with django_capture_on_commit_callbacks(execute=True):
        assert run("mail", "rules", "import") == "mail rules imported: version 1, 2 rules"
    assert run("mail", "rules", "import") == "mail rules unchanged (version 1, 2 rules)"
    assert run("mail", "rules", "show") == RULES.rstrip("\n")
    out = run("mail", "rules", "test", "alice@example.com", "List-Id: <l.example.net>\\nSubject: x\\n\\nbody")
    assert out == "\n".join(
        [
            "rule 'lists' matches",
            "  file into 'Lists'",
            "rule 'away' matches",
            "  vacation: no reply (null sender)",
            "filed into: Lists",
        ]
    )
    with pytest.raises(CommandError) as exc:
        run("mail", "rules", "test", "not-an-address")
    assert str(exc.value) == "recipient: invalid address 'not-an-address'"


def test_admin_validates_on_save(admin_client, data_dir, django_capture_on_commit_callbacks):
    response = admin_client.post("/mail/ruleset/add/", {"text": '[[rule]]\nname = "x"\nfileinto = 1\n'})
    assert response.status_code == 200
    assert "rules.toml line 1, rule 1 &#x27;x&#x27;, field fileinto: expected a non-empty string" in (
        response.content.decode()
    )
    assert not RuleSet.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/mail/ruleset/add/", {"text": RULES})
    assert response.status_code == 302
    row = RuleSet.objects.get()
    assert (row.text, row.version) == (RULES, 1)
    assert (data_dir / "everlock-mail" / "rules.toml").read_text() == row.text
    edited = RULES.replace('"Lists"', '"L2"')
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/mail/ruleset/{row.pk}/change/", {"text": edited})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.version == 2 and parse_rules(row.text).rules[0].fileinto == "L2"
    assert RuleSet.objects.count() == 1
