"""parse_message: the header facts local delivery records, read directly for plain headers
and by the email package for everything else, with the same results either way."""

from datetime import UTC, datetime
from email.parser import HeaderParser
from email.policy import compat32

import pytest

from mail.message import _plain_header_fields, decode_words, entity_fields, parse_message

PLAIN = [
    b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From:a@b.example\r\nSubject:   spaced  \r\n\r\n",
    b"Subject: folded\r\n  more\r\n\tand more\r\nX: y\r\n\r\nbody",
    b"Subject:\r\nX-Empty: \r\n\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\td=example.com; s=x;\r\n\tb=abc\r\n def\r\nFrom: x\r\n\r\n",
    b"Subject: t:with:colons\r\n\r\n",
    b"subject: lower\r\nSUBJECT: upper\r\n\r\n",
]

# Not plain: left to the email package.
UNUSUAL = [
    b"From someone@example.net Tue Nov 24 10:00:00 2026\r\nSubject: mbox\r\n\r\n",
    b" leading fold\r\nSubject: x\r\n\r\n",
    b"Bad Name: x\r\nSubject: after\r\n\r\n",
    b"Subject: caf\xc3\xa9\r\n\r\n",
    b"Subject: bare\nTo: lf\r\n\r\n",
    b"Subject: no body separator\r\n",
]


def email_package(raw: bytes):
    # The header read as UTF-8 text (RFC 6532), undecodable bytes kept as surrogates.
    msg = HeaderParser(policy=compat32).parsestr(raw.decode("utf-8", "surrogateescape"), headersonly=True)
    return tuple((name, str(value)) for name, value in msg.items())


def test_raw_utf8_fields_are_text():
    parsed = parse_message(b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nFrom: J\xc3\xbcrgen <j@example.com>\r\n\r\n")
    assert (parsed.subject, parsed.header_from) == ("Grüße", "Jürgen <j@example.com>")
    # Bytes that are not UTF-8 cannot be told: shown replaced, the rest kept.
    assert parse_message(b"Subject: caf\xe9 ok\r\n\r\n").subject == "caf\ufffd ok"


@pytest.mark.parametrize("raw", PLAIN)
def test_plain_headers_read_as_the_email_package_reads_them(raw):
    assert _plain_header_fields(raw) == email_package(raw)


@pytest.mark.parametrize("raw", UNUSUAL)
def test_unusual_headers_go_to_the_email_package(raw):
    assert _plain_header_fields(raw) is None
    assert parse_message(raw).headers == email_package(raw)


def test_facts_of_a_message():
    parsed = parse_message(
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: Alice <alice@example.com>\r\nTo: bob@example.com\r\n"
        b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-Id:  <m1@example.com> \r\n"
        b"Subject: second\r\n\r\nbody\r\n"
    )
    assert parsed.subject == "caf\u00e9"  # the first Subject, decoded
    assert parsed.header_from == "Alice <alice@example.com>"
    assert parsed.header_to == "bob@example.com"
    assert parsed.date == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert parsed.message_id == "<m1@example.com>"
    assert parsed.values("subject") == ["=?utf-8?q?caf=C3=A9?=", "second"]


def test_prepend_gives_the_facts_of_the_longer_message():
    raw = b"From: alice@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    block = b"Message-Id: <new@example.com>\r\nDKIM-Signature: v=1;\r\n\tb=xyz\r\n"
    assert parse_message(raw).prepend(block) == parse_message(block + raw)


def test_from_addresses_and_the_author_domain():
    parsed = parse_message(
        b'From: "Alice, Ops" <alice@Example.COM.>\r\nFrom: bob@example.net\r\nTo: x@example.org\r\n\r\n'
    )
    assert parsed.from_addresses() == ["alice@Example.COM.", "bob@example.net"]
    # RFC 7489 section 3.1.1: the first From field's single address.
    assert parsed.author_domain() == "example.com"
    assert parse_message(b"From: a@example.com, b@example.net\r\n\r\n").author_domain() == ""
    assert parse_message(b"To: a@example.com\r\n\r\n").author_domain() == ""
    assert parse_message(b"From: undisclosed\r\n\r\n").author_domain() == ""
    assert parsed.first("to") == "x@example.org" and parsed.first("cc") is None


def test_encoded_words_decode_or_stay():
    assert decode_words("=?iso-8859-1?q?Gr=FC=DFe?= und =?utf-8?b?Q2Fmw6k=?=") == "Grüße und Café"
    assert decode_words("plain =? text") == "plain =? text"
    assert decode_words("=?unknown-charset?q?x?=") == "=?unknown-charset?q?x?="


def test_entity_fields_read_folded_parameters_whole():
    fields = entity_fields(b'Content-Type: multipart/mixed;\r\n boundary="b1"; charset=utf-8\r\n\r\n')
    assert fields.get_content_type() == "multipart/mixed"
    assert fields.get_param("boundary") == "b1"
