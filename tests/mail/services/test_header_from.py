"""The From field's addresses as the submission check reads them: a plain field directly,
anything else through the email package, with the same answer either way."""

import email.utils

import pytest

from mail.message import field_addresses

FIELDS = [
    "alice@example.com",
    " alice@example.com ",
    "Alice <alice@example.com>",
    "Alice Smith <alice@example.com>",
    "J. O'Neil <j.oneil@example.com>",
    "<alice@example.com>",
    "Alice<alice@example.com>",
    "a.b+c-d_e@sub.example-x.com",
    "al<ice@example.com>",
    # Not plain: for the email package.
    "Smith, Alice <alice@example.com>",
    '"Bob" <bob@example.org>',
    '"alice@example.com" <eve@evil.example>',
    "alice@example.com (Alice)",
    "a@example.com, d@example.org",
    "Alice <alice@example.com",
    "alice@example.com>",
    "friends: a@example.com;",
    "Alice <alice@example.com> <eve@evil.example>",
    "alice@example.com <eve@evil.example>",
    "Alice\t<alice@example.com>",
    "eve@evil.example\r\n <alice@example.com>",
]


@pytest.mark.parametrize("field", FIELDS)
def test_addresses_are_those_the_email_package_finds(field):
    assert field_addresses([field]) == [a for _, a in email.utils.getaddresses([field]) if a]


def test_several_from_fields_are_all_read():
    assert field_addresses(["a@example.com", "b@example.com"]) == ["a@example.com", "b@example.com"]
