"""DKIM signatures made by mail.dkim.signing verify against the keys Everlock's own DNS server
publishes: with dkimpy for both algorithms, and with Perl's Mail::DKIM (an independent
implementation) for RSA."""

from __future__ import annotations

from types import SimpleNamespace

import dkim
import pytest

from dns_zones.services import zone_create
from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem, txt_value
from mail.dkim.signing import relaxed_body, relaxed_header, sign, sign_for_domain
from mail.services.domains import domain_create
from tests.dns_server import RunningDNS

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject:  Hello   there \r\n\tfolded\r\n"
    b"Date: Tue, 24 Nov 2026 18:00:00 +0000\r\n"
    b"Message-ID: <1@mail.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Unsigned: anything\r\n"
    b"\r\n"
    b"Hello  world \r\n\r\nline\t two\r\n\r\n\r\n"
)


def verifies(message: bytes, idx: int, server: RunningDNS) -> bool:
    """dkimpy's verdict on signature `idx`; it raises rather than answers False for some failures."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=server.dnsfunc)
    except dkim.ValidationError:
        return False


@pytest.fixture
def hosted_domain(transactional_db, settings, tmp_path):
    settings.EVERLOCK_DNS = True
    settings.DATA_DIR = tmp_path
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    server = RunningDNS()
    yield domain, server
    server.stop()


def test_both_signatures_verify_with_keys_from_everlock_dns(hosted_domain):
    domain, server = hosted_domain
    header = sign_for_domain(domain, MESSAGE)
    assert header.startswith(
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com;\r\n s=default;"
    )
    assert header.count(b"DKIM-Signature: ") == 2
    assert (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;\r\n s=default-rsa;" in header
    )
    assert b" h=from:from:subject:subject:date:message-id:to:mime-version:content-type;" in header
    assert header.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    signed = header + MESSAGE
    # The RSA key record is longer than 255 octets: the server splits it, the lookup joins it.
    assert (
        server.dnsfunc(b"default-rsa._domainkey.example.com.")
        == txt_value(domain.dkim_rsa_private_key_pem).encode()
    )
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=server.dnsfunc) is True
    assert verifier.verify(idx=1, dnsfunc=server.dnsfunc) is True
    for tampered in (
        signed.replace(b"Hello  world", b"Hello world!"),
        signed.replace(b"Subject:  Hello", b"Subject: Bye"),
        signed.replace(b"From: Alice", b"From: Mallory"),
        signed.replace(b"\r\n\r\nHello", b"\r\nFrom: mallory@example.net\r\n\r\nHello"),
    ):
        assert (verifies(tampered, 0, server), verifies(tampered, 1, server)) == (False, False)
    # An unsigned header may change in transit.
    other = dkim.DKIM(signed.replace(b"X-Unsigned: anything", b"X-Unsigned: changed"))
    assert other.verify(idx=1, dnsfunc=server.dnsfunc) is True


def test_rsa_signature_verifies_with_perl_mail_dkim(hosted_domain):
    domain, server = hosted_domain
    signed = sign_for_domain(domain, MESSAGE) + MESSAGE
    lines = server.mail_dkim_verdicts(signed)
    # Mail::DKIM checks the RSA signature with its own canonicalisation and key lookup.
    assert "rsa-sha256 default-rsa pass" in lines
    assert len(lines) == 2


def test_disabled_or_keyless_domain_signs_nothing():
    ed = generate_ed25519_pem()
    off = SimpleNamespace(
        name="example.com",
        dkim_enabled=False,
        dkim_selector="default",
        dkim_private_key_pem=ed,
        dkim_rsa_selector="default-rsa",
        dkim_rsa_private_key_pem="",
    )
    assert sign_for_domain(off, MESSAGE) == b""
    keyless = SimpleNamespace(**{**vars(off), "dkim_enabled": True, "dkim_private_key_pem": ""})
    assert sign_for_domain(keyless, MESSAGE) == b""
    only_ed = SimpleNamespace(**{**vars(off), "dkim_enabled": True})
    assert sign_for_domain(only_ed, MESSAGE).count(b"DKIM-Signature:") == 1


def test_rsa_signature_is_deterministic_and_body_hash_matches_dkimpy():
    """PKCS#1 v1.5 is deterministic; the relaxed body hash equals the one dkimpy's signer computes."""
    rsa_pem = generate_rsa_pem()
    ours = sign(MESSAGE, domain="example.com", selector="sel", private_key_pem=rsa_pem, timestamp=1795000000)
    again = sign(MESSAGE, domain="example.com", selector="sel", private_key_pem=rsa_pem, timestamp=1795000000)
    assert ours == again
    bh = next(t for t in ours.replace(b"\r\n ", b" ").split(b"; ") if t.startswith(b"bh="))
    theirs = dkim.sign(
        MESSAGE,
        b"sel",
        b"example.com",
        rsa_pem.encode(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject"],
    )
    assert bh in theirs.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")


def test_relaxed_canonicalisation_examples():
    # RFC 6376 section 3.4.6's example.
    assert relaxed_header(b"A", b" X\r\n") == b"a:X"
    assert relaxed_header(b"B ", b" Y\t\r\n\tZ  \r\n") == b"b:Y Z"
    assert relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"no newline  ") == b"no newline\r\n"
