"""The /tls console group without a CA: listing, help, completion and refusals."""

from __future__ import annotations

import pytest

from sshadmin.commands import CommandError, load_commands
from tests.sshadmin.commands.console import run


@pytest.fixture
def no_acme(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_HOSTNAME = "mail.example.com"
    settings.EVERLOCK_TLS_CERT = settings.EVERLOCK_TLS_KEY = ""
    settings.EVERLOCK_ACME_EMAIL = ""


def test_list_shows_the_self_signed_default(no_acme):
    lines = run("/tls list").splitlines()
    assert lines[0].split() == ["NAME", "ISSUER", "EXPIRES", "SOURCE"]
    assert len(lines) == 2
    name, issuer, _day, _time, *source = lines[1].split()
    assert (name, issuer, " ".join(source)) == (
        "mail.example.com",
        "mail.example.com",
        "self-signed (default)",
    )


def test_request_with_acme_off_says_what_to_set(no_acme):
    with pytest.raises(CommandError) as refused:
        run("/tls request mail.example.com")
    assert str(refused.value) == "ACME is off: set EVERLOCK_ACME_EMAIL (and EVERLOCK_ACME_DIRECTORY)"


def test_delete_of_a_name_without_a_certificate(no_acme):
    with pytest.raises(CommandError) as refused:
        run("/tls delete mail.example.com")
    assert str(refused.value) == "no certificate holds mail.example.com"


def test_help_and_completion():
    registry = load_commands()
    assert [c.usage for c in registry.groups()["tls"]] == [
        "/tls delete NAME",
        "/tls list",
        "/tls request NAME...",
    ]
    assert registry.complete("/tl", 3) == ("/tls ", 5)
    assert registry.complete("/tls r", 6) == ("/tls request ", 13)
    with pytest.raises(CommandError, match="missing arguments"):
        registry.commands[("tls", "request")].check_arity([])
