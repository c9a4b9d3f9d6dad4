"""Grant matching and resource parsing, table-driven (accounts.grants is pure)."""

from __future__ import annotations

import pytest

from accounts.grants import GrantError, allows, parse_resource

DOMAIN_WRITER = [("smtp/mail/example.com", "writer")]
MAILBOX_READER = [("smtp/mail/example.com:alice", "reader")]
ADMIN = [("admin", "admin")]


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("admin", "admin"),
        ("smtp", "smtp"),
        ("smtp/mail", "smtp/mail"),
        ("smtp/mail/example.com", "smtp/mail/example.com"),
        ("smtp/mail/EXAMPLE.Com", "smtp/mail/example.com"),
        ("smtp/mail/example.com.", "smtp/mail/example.com"),
        ("smtp/mail/example.com:Alice", "smtp/mail/example.com:alice"),
        ("smtp/mail/bücher.example:alice", "smtp/mail/xn--bcher-kva.example:alice"),
        ("smtp/mail/BÜCHER.example", "smtp/mail/xn--bcher-kva.example"),
        ("smtp/mail/xn--bcher-kva.example", "smtp/mail/xn--bcher-kva.example"),
    ],
)
def test_parse_resource_normal_form(text, normal):
    assert str(parse_resource(text)) == normal


@pytest.mark.parametrize(
    "text",
    [
        "",
        " admin",
        "admin:alice",
        "admin/x",
        "smtp/other",
        "mail/example.com",
        "smtp/mail/example.com/extra",
        "smtp/mail:alice",
        "smtp/mail/bad..name",
        "smtp/mail/example.com:",
        "smtp/mail/example.com:a b",
    ],
)
def test_parse_resource_rejects(text):
    with pytest.raises(GrantError):
        parse_resource(text)


@pytest.mark.parametrize(
    ("grants", "role", "resource", "expected"),
    [
        # A domain grant covers the domain and its mailboxes, at its role and below.
        (DOMAIN_WRITER, "writer", "smtp/mail/example.com", True),
        (DOMAIN_WRITER, "reader", "smtp/mail/example.com", True),
        (DOMAIN_WRITER, "admin", "smtp/mail/example.com", False),
        (DOMAIN_WRITER, "writer", "smtp/mail/example.com:alice", True),
        (DOMAIN_WRITER, "writer", "smtp/mail/EXAMPLE.COM:Alice", True),
        (DOMAIN_WRITER, "writer", "smtp/mail/example.net:alice", False),
        (DOMAIN_WRITER, "writer", "smtp/mail/sub.example.com:alice", False),
        (DOMAIN_WRITER, "writer", "admin", False),
        # A mailbox grant covers that mailbox only.
        (MAILBOX_READER, "reader", "smtp/mail/example.com:alice", True),
        (MAILBOX_READER, "reader", "smtp/mail/Example.COM:ALICE", True),
        (MAILBOX_READER, "writer", "smtp/mail/example.com:alice", False),
        (MAILBOX_READER, "reader", "smtp/mail/example.com:bob", False),
        (MAILBOX_READER, "reader", "smtp/mail/example.com", False),
        # IDNA: the U-label and the A-label are the same domain.
        ([("smtp/mail/xn--bcher-kva.example", "admin")], "writer", "smtp/mail/bücher.example:alice", True),
        ([("smtp/mail/xn--bcher-kva.example", "reader")], "writer", "smtp/mail/bücher.example:alice", False),
        # Higher paths cover lower ones.
        ([("smtp", "reader")], "reader", "smtp/mail/example.com:alice", True),
        ([("smtp/mail", "writer")], "writer", "smtp/mail/example.net", True),
        (ADMIN, "admin", "admin", True),
        (ADMIN, "admin", "smtp/mail/example.com", False),
        # No grants, or a stored grant that no longer parses, give nothing.
        ([], "reader", "smtp/mail/example.com", False),
        ([("smtp/mail/bad..name", "admin")], "reader", "smtp/mail/example.com", False),
        ([("smtp/mail/example.com", "owner")], "reader", "smtp/mail/example.com", False),
        # Several grants: any one suffices.
        (MAILBOX_READER + DOMAIN_WRITER, "writer", "smtp/mail/example.com:alice", True),
    ],
)
def test_allows(grants, role, resource, expected):
    assert allows(grants, role, parse_resource(resource)) is expected


def test_allows_unknown_role():
    with pytest.raises(GrantError, match=r"^unknown role 'owner' \(one of: reader, writer, admin\)$"):
        allows(DOMAIN_WRITER, "owner", parse_resource("smtp/mail/example.com"))
