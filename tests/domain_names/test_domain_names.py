"""The one normal form of domain names, for host names and DNS owner names."""

import pytest

from domain_names import DomainNameError, fold, normalize_host, normalize_owner


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("example.com", "example.com"),
        ("Mail.EXAMPLE.com", "mail.example.com"),
        ("example.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.example.net", "a-b.example.net"),
        ("1.2.example.net", "1.2.example.net"),
        (("a" * 63 + ".") * 3 + "a" * 61, ("a" * 63 + ".") * 3 + "a" * 61),
    ],
)
def test_host_names_in_normal_form(text, normal):
    assert normalize_host(text) == normal


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid domain name '': empty"),
        (" example.com", "invalid domain name ' example.com': white space around the name"),
        ("exa\x00mple.com", "invalid domain name 'exa\\x00mple.com': contains NUL"),
        ("localhost", "invalid domain name 'localhost': not a fully qualified name"),
        ("exa_mple.com", "invalid domain name 'exa_mple.com': bad label 'exa_mple'"),
        ("-example.com", "invalid domain name '-example.com': bad label '-example'"),
        ("example-.com", "invalid domain name 'example-.com': bad label 'example-'"),
        ("*.example.com", "invalid domain name '*.example.com': bad label '*'"),
        ("exa mple.com", "invalid domain name 'exa mple.com': bad label 'exa mple'"),
        ("\\065bc.example.com", "invalid domain name '\\\\065bc.example.com': bad label '\\\\065bc'"),
        (
            "bad..host",
            "invalid domain name 'bad..host': encoding with 'idna' codec failed "
            "(UnicodeError: label empty or too long)",
        ),
        (
            "a" * 64 + ".example.com",
            f"invalid domain name '{'a' * 64}.example.com': encoding with 'idna' codec failed "
            "(UnicodeError: label empty or too long)",
        ),
        (("a" * 63 + ".") * 4 + "com", f"invalid domain name '{('a' * 63 + '.') * 4}com': length"),
    ],
)
def test_host_names_refused_with_the_reason(text, message):
    with pytest.raises(DomainNameError) as exc:
        normalize_host(text)
    assert str(exc.value) == message
    assert exc.value.name == text


@pytest.mark.parametrize("value", [None, 42, b"example.com"])
def test_host_names_must_be_text(value):
    with pytest.raises(DomainNameError):
        normalize_host(value)


@pytest.mark.parametrize(
    ("text", "origin", "normal"),
    [
        ("www.example.com", None, "www.example.com"),
        ("WWW.Example.COM.", None, "www.example.com"),
        ("_dmarc.example.com", None, "_dmarc.example.com"),
        ("default._domainkey", "example.com", "default._domainkey.example.com"),
        ("*", "example.com", "*.example.com"),
        ("@", "example.com", "example.com"),
        ("mail.example.net.", "example.com", "mail.example.net"),
        ("bücher", "example.com", "xn--bcher-kva.example.com"),
        ("\\065bc.example.com", None, "abc.example.com"),
        ("localhost", None, "localhost"),
    ],
)
def test_owner_names_in_normal_form(text, origin, normal):
    assert normalize_owner(text, origin=origin) == normal


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid name '': empty, NUL or white space"),
        (" www", "invalid name ' www': empty, NUL or white space"),
        ("a..b", "invalid name 'a..b': A DNS label is empty."),
        (".", "invalid name '.': the root is not a valid name here"),
        ("bad name", "invalid name 'bad name': label with unusual characters"),
        ("a\\.b.example.com", "invalid name 'a\\\\.b.example.com': label with unusual characters"),
        ("a" * 64 + ".com", f"invalid name '{'a' * 64}.com': A DNS label is > 63 octets long."),
    ],
)
def test_owner_names_refused_with_the_reason(text, message):
    with pytest.raises(DomainNameError) as exc:
        normalize_owner(text)
    assert str(exc.value) == message


def test_a_zone_and_a_mail_domain_of_one_name_compare_equal():
    # Both kinds go through the same IDNA 2003 codec, so a zone holds the mail domain's name.
    for text in ("Bücher.Example", "straße.example", "ÉCOLE.example"):
        assert normalize_owner(text) == normalize_host(text)


@pytest.mark.parametrize(
    ("name", "folded"),
    [("Example.COM.", "example.com"), ("mx1.example.net", "mx1.example.net"), ("", ""), (".", "")],
)
def test_fold_compares_names_from_the_wire(name, folded):
    assert fold(name) == folded
