"""Hosted zones for the inbound checks, served by Everlock's own DNS server on 127.0.0.1.

corpus.test (relaxed DMARC, p=reject, sp=quarantine), strict.test (strict alignment),
half.test (p=reject with pct=0: the sampled-out policy is quarantine), watch.test (p=none)
and plain.test (no DMARC record) carry the SPF records, DKIM keys and PTR names the tests
use; names under example.net are not hosted, so asking for them is a temporary failure
(the server answers REFUSED).
"""

from __future__ import annotations

import base64
import email.utils
import smtplib
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dns_zones.services import record_add, zone_create
from mail.auth.lookups import Lookups
from mail.dkim.keys import (
    generate_ed25519_pem,
    generate_rsa_pem,
    load_private_key,
    txt_presentation,
    txt_value,
)
from mail.dkim.signing import sign
from tests.dns_server import RunningDNS
from tests.mail.smtp.conftest import example_com, start_smtp  # noqa: F401

ZONES = ("corpus.test", "strict.test", "half.test", "watch.test", "plain.test", "0.0.127.in-addr.arpa")
SPF_RECORDS = {
    "pass": "v=spf1 ip4:127.0.0.1 -all",
    "fail": "v=spf1 ip4:192.0.2.1 -all",
    "softfail": "v=spf1 ip4:192.0.2.1 ~all",
    "neutral": "v=spf1 ?all",
    "mx": "v=spf1 mx -all",
    "include": "v=spf1 include:pass.corpus.test -all",
    "redirect": "v=spf1 redirect=fail.corpus.test",
    "syntax": "v=spf1 ip4:127.0.0.1 frobnicate:x -all",
    "lookups": "v=spf1 " + " ".join(f"a:h{i}.corpus.test" for i in range(11)) + " -all",
    "void": "v=spf1 a:v1.corpus.test a:v2.corpus.test a:v3.corpus.test -all",
    "temp": "v=spf1 include:spf.example.net -all",
    "second": "v=spf1 ip4:127.0.0.2 -all",
}
# Two SPF records at one name: permerror (RFC 7208 section 4.5).
TWO_RECORDS = ("v=spf1 -all", "v=spf1 +all")
DMARC_RECORDS = {
    "corpus.test": "v=DMARC1; p=reject; sp=quarantine",
    "strict.test": "v=DMARC1; p=reject; adkim=s; aspf=s",
    "half.test": "v=DMARC1; p=reject; pct=0",
    "watch.test": "v=DMARC1; p=none",
}


@dataclass
class Keys:
    rsa_pem: str
    rsa_file: Path  # PKCS#1 PEM for Perl's Mail::DKIM::Signer
    ed25519_pem: str
    ed25519_seed: bytes  # base64 of the raw private key, as dkimpy's signer takes it


@dataclass
class CorpusDNS:
    server: RunningDNS
    keys: Keys

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def lookups(self) -> Lookups:
        return Lookups.from_spec(self.spec)


def _txt(origin: str, name: str, value: str) -> None:
    record_add(origin=origin, name=name, rtype="TXT", data=txt_presentation(value), ttl=300)


@pytest.fixture
def corpus_dns(transactional_db, settings, tmp_path) -> CorpusDNS:
    settings.EVERLOCK_DNS = True
    settings.DATA_DIR = tmp_path
    for origin in ZONES:
        zone_create(origin=origin)
    for name, value in SPF_RECORDS.items():
        _txt("corpus.test", name, value)
    for value in TWO_RECORDS:
        _txt("corpus.test", "two", value)
    record_add(origin="corpus.test", name="nospf", rtype="A", data="192.0.2.7")
    record_add(origin="corpus.test", name="mx", rtype="A", data="127.0.0.1")
    record_add(origin="corpus.test", name="mx", rtype="MX", data="10 mx.corpus.test.")
    for i in range(11):
        record_add(origin="corpus.test", name=f"h{i}", rtype="A", data="192.0.2.9")
    # Every sending domain of the corpus lets 127.0.0.1 send (SPF pass), 127.0.0.2 not.
    for origin in ("corpus.test", "strict.test", "half.test", "watch.test", "plain.test"):
        _txt(origin, "@", "v=spf1 ip4:127.0.0.1 -all")
        _txt(origin, "news", "v=spf1 ip4:127.0.0.1 -all")
        if origin in DMARC_RECORDS:
            _txt(origin, "_dmarc", DMARC_RECORDS[origin])
    # iprev: 127.0.0.1 names mx.corpus.test, which points back; 127.0.0.2 names a host that
    # does not.
    record_add(origin="0.0.127.in-addr.arpa", name="1", rtype="PTR", data="mx.corpus.test.")
    record_add(origin="0.0.127.in-addr.arpa", name="2", rtype="PTR", data="liar.corpus.test.")
    record_add(origin="corpus.test", name="liar", rtype="A", data="192.0.2.8")

    rsa_pem, ed_pem = generate_rsa_pem(), generate_ed25519_pem()
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(
        load_private_key(rsa_pem).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    for origin in ("corpus.test", "strict.test", "half.test", "watch.test", "plain.test"):
        _txt(origin, "rsa._domainkey", txt_value(rsa_pem))
        _txt(origin, "ed._domainkey", txt_value(ed_pem))
        _txt(origin, "revoked._domainkey", "v=DKIM1; k=rsa; p=")
    server = RunningDNS()
    seed = load_private_key(ed_pem).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    yield CorpusDNS(server, Keys(rsa_pem, rsa_file, ed_pem, base64.b64encode(seed)))
    server.stop()


AUTHSERV_ID = "mail.example.com"  # example.com's hostname: its outbound hostname default


@pytest.fixture
def checked_smtp(start_smtp, corpus_dns, example_com, settings):  # noqa: F811
    """The inbound listener with the checks on, asking the corpus DNS."""
    settings.EVERLOCK_INBOUND_CHECKS = True
    settings.EVERLOCK_RESOLVER = corpus_dns.spec
    return start_smtp()


def letter(
    from_domain: str, *, extra: str = "", subject: str = "Hello", to: str = "bob@example.com"
) -> bytes:
    return (
        f"{extra}From: Carol <carol@{from_domain}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{subject.replace(' ', '.')}@{from_domain}>\r\n"
        "\r\nHello Bob.\r\n"
    ).encode()


def signed(raw: bytes, corpus_dns, domain: str) -> bytes:
    return (
        sign(raw, domain=domain, selector="ed", private_key_pem=corpus_dns.keys.ed25519_pem)
        + sign(raw, domain=domain, selector="rsa", private_key_pem=corpus_dns.keys.rsa_pem)
        + raw
    )


def send(server, raw: bytes, *, mail_from: str, source: str = "127.0.0.1", rcpt: str = "bob@example.com"):
    with smtplib.SMTP("127.0.0.1", server.inbound_port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("mx.corpus.test")
        client.mail(mail_from)
        client.rcpt(rcpt)
        try:
            return client.data(raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
