"""Two Everlock installations exchanging mail, each finding the other through its hosted DNS.

The first hosts example.com on 127.0.0.1, the second example.net on 127.0.0.2; each has its
own data dir, database, DNS zone and resolver setting pointing at the other's DNS server.
alice@example.com writes to bob@example.net, bob answers; each message arrives with both DKIM
signatures of its sender's domain, verified against the sender's DNS server, and the receiving
server's inbound checks find SPF, both signatures and DMARC passing. A message from another
loopback address claiming example.com (DMARC p=reject) is refused; a redirect from
example.net to alice arrives with an SRS sender whose SPF passes.
"""

from __future__ import annotations

import email.policy
import re
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import dkim
import dns.message
import dns.query
import pytest

from tests.e2e.installation import Everlock, submit
from tests.ports import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Site:
    """One installation hosting `domain`, its mail host at `address`."""

    domain: str
    user: str
    address: str
    everlock: Everlock
    dns_port: int
    submission_port: int
    smtp_port: int
    console: dict[str, str] = field(default_factory=dict)
    # The "checks:" lines /mail messages show printed before the last message read.
    last_checks: list[str] = field(default_factory=list)

    @property
    def email(self) -> str:
        return f"{self.user}@{self.domain}"

    def setup_console(self) -> list[str]:
        """What the admin types: the zone with its MX and A records, the mail domain (DKIM set
        up by itself), the user and their grant."""
        d = self.domain
        return [
            f"/dns zones create {d}",
            f"/dns records add {d} @ MX 10 mail.{d}.",
            f"/dns records add {d} mail A {self.address}",
            # Both installations send from 127.0.0.1 (the default source address).
            f'/dns records add {d} @ TXT "v=spf1 ip4:127.0.0.1 -all"',
            f'/dns records add {d} _dmarc TXT "v=DMARC1; p=reject"',
            f"/mail domains create {d}",
            f"/mail domains set {d} submission=on auth=on",
            f"/users add {self.user} change-me",
            f"/users grant {self.user} smtp/mail/{d}:{self.user} writer",
        ]

    def lookup(self, name: str, rdtype: str, timeout: float = 5) -> list:
        """The records of `name` as this site's DNS server answers them."""
        query = dns.message.make_query(name, rdtype)
        response = dns.query.udp(query, self.address, port=self.dns_port, timeout=timeout)
        return [rdata for rrset in response.answer for rdata in rrset]

    def txt_lookup(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's dnsfunc: the TXT record `name` as this site's DNS server answers it."""
        records = self.lookup(name.decode(), "TXT", timeout)
        return b"".join(records[0].strings) if records else None

    def wait_for_dns(self, timeout: float = 10) -> None:
        """Until the DNS server serves the zone set up through the console (it reloads the
        zone data on a timer)."""
        deadline = time.monotonic() + timeout
        # The DKIM records were the console's last change.
        while self.txt_lookup(f"default-rsa._domainkey.{self.domain}".encode()) is None:
            assert time.monotonic() < deadline, f"the zone {self.domain} is not served"
            time.sleep(0.1)
        assert [r.to_text() for r in self.lookup(self.domain, "MX")] == [f"10 mail.{self.domain}."]

    def submit(self, message: EmailMessage) -> None:
        assert submit(self.submission_port, self.user, message) == {}

    def wait_for_inbox(self, subject: str, timeout: float = 30) -> bytes:
        """The raw message with `subject` in the user's inbox, read through the console."""
        deadline = time.monotonic() + timeout
        while True:
            listing = self.everlock.console(f"/mail messages list {self.email} inbox")
            row = next((line for line in listing.splitlines() if line.endswith(f"  {subject}")), None)
            if row is not None:
                text = self.everlock.console(f"/mail messages show {row.split()[0]}")
                # The inbound checks' results come first, then an empty line, then the message.
                self.last_checks = []
                while text.startswith("checks: "):
                    line, _, text = text.partition("\n")
                    self.last_checks.append(line.removeprefix("checks: "))
                if self.last_checks:
                    text = text.removeprefix("\n")
                return text.replace("\n", "\r\n").encode()
            assert time.monotonic() < deadline, f"{subject!r} not in {self.email}'s inbox: {listing}"
            time.sleep(0.2)


def _site(
    data_dir: Path, domain: str, user: str, address: str, smtp_port: int, dns_port: int, resolver: str
) -> Site:
    """The installation of `domain`, not started yet."""
    everlock = Everlock(
        data_dir,
        EVERLOCK_LOG="mail.delivery=info,mail.smtp=info",
        EVERLOCK_HOSTNAME=f"mail.{domain}",
        EVERLOCK_RESOLVER=resolver,
        EVERLOCK_REMOTE_SMTP_PORT=str(smtp_port),
        EVERLOCK_INBOUND_CHECKS="true",
    )
    return Site(domain, user, address, everlock, dns_port, submission_port=free_port(), smtp_port=smtp_port)


def _start(site: Site, smtp_port: int) -> None:
    """Start the site's `everlock serve` with its DNS backend, then set it up through its console."""
    ssh, submission, address = free_port(), site.submission_port, site.address
    site.everlock.start(
        [
            "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ssh}", "--backend-admin-ssh",
            "--frontend-smtp", "--frontend-smtp-listen", f"{address}:{smtp_port}",
            "--frontend-smtp-submission", "--frontend-smtp-submission-listen", f"127.0.0.1:{submission}",
            "--backend-mail-smtp", "--backend-dns-dns", "--frontend-dns-listen", f"{address}:{site.dns_port}",
            "--admin-user", "admin", "--admin-password", "change-me",
        ],
        ssh_port=ssh,
        ready=f"SMTP submission listener on 127.0.0.1:{submission}",
    )  # fmt: skip
    site.console = {line: site.everlock.console(line) for line in site.setup_console()}
    site.wait_for_dns()


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-servers")
    # Both inbound listeners on one port number, as MX hosts on the internet share port 25.
    smtp_port = free_port("127.0.0.1", "127.0.0.2")
    dns_a, dns_b = free_port("127.0.0.1", udp=True), free_port("127.0.0.2", udp=True)
    # Each resolves through the other's DNS server, then its own (a server that does not host
    # a name answers REFUSED, and the resolver asks the next one): the inbound checks of a
    # redirected message ask about the receiving installation's own domain too.
    specs = [
        ("example.com", "alice", "127.0.0.1", dns_a, f"127.0.0.2:{dns_b},127.0.0.1:{dns_a}"),
        ("example.net", "bob", "127.0.0.2", dns_b, f"127.0.0.1:{dns_a},127.0.0.2:{dns_b}"),
    ]
    sites: list[Site] = []
    try:
        for domain, user, address, dns_port, resolver in specs:
            sites.append(_site(tmp / domain, domain, user, address, smtp_port, dns_port, resolver))
        for site in sites:
            _start(site, smtp_port)
        yield tuple(sites)
    finally:
        for site in sites:
            site.everlock.close()


def _verify_dkim(raw: bytes, site: Site) -> list[tuple[bytes, bytes]]:
    """(algorithm, selector) of each DKIM signature of `raw`, each verified with `site`'s DNS."""
    checker = dkim.DKIM(raw)
    signatures = [line for line in raw.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]
    verified = []
    for index in range(len(signatures)):
        assert checker.verify(idx=index, dnsfunc=site.txt_lookup), (index, raw)
        verified.append((checker.signature_fields[b"a"], checker.signature_fields[b"s"]))
    return verified


def test_each_domain_gets_its_records_and_dkim_from_the_console(sites):
    for site in sites:
        d = site.domain
        created = site.console[f"/mail domains create {d}"]
        assert created == (
            f"mail domain {d} created\n"
            f"outbound hostname mail.{d}\n"
            "DKIM on: Ed25519 key (selector default) and RSA-2048 key (selector default-rsa)\n"
            f"DKIM TXT published in hosted zone {d}: default._domainkey.{d}\n"
            f"DKIM TXT published in hosted zone {d}: default-rsa._domainkey.{d}\n"
            f"MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig records published in hosted zone {d}"
            f" (/mail domains records {d} lists them)\n"
        ), created
        assert site.txt_lookup(f"default._domainkey.{d}".encode()).startswith(b"v=DKIM1; k=ed25519; p=")


def _letter(sender: str, recipient: str, subject: str, body: str, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def _send(sender: Site, recipient: Site, letter: EmailMessage) -> bytes:
    """Submit `letter` at the sender's installation; the copy in the recipient's inbox, its
    two DKIM signatures verified against the sender's DNS."""
    sender.submit(letter)
    raw = recipient.wait_for_inbox(letter["Subject"])
    # Found through the recipient domain's MX record, served by the recipient's DNS.
    sender.everlock.wait_for_log(
        f"to {recipient.domain}: 1 of 1 recipients accepted by mail.{recipient.domain}"
    )
    assert _verify_dkim(raw, sender) == [(b"ed25519-sha256", b"default"), (b"rsa-sha256", b"default-rsa")]
    # The recipient's inbound checks: SPF, both signatures and DMARC pass.
    assert raw.startswith(
        f"Return-Path: <{sender.email}>\r\nAuthentication-Results: mail.{recipient.domain};\r\n".encode()
    )
    assert recipient.last_checks[:4] == [
        f"spf=pass smtp.mailfrom={sender.domain}",
        f"dkim=pass header.d={sender.domain} header.a=ed25519-sha256 header.s=default",
        f"dkim=pass header.d={sender.domain} header.a=rsa-sha256 header.s=default-rsa",
        f"dmarc=pass header.from={sender.domain}",
    ]
    # The recipient's server names the sender's EHLO name (its outbound hostname) and itself.
    received = (
        rf"\r\nReceived: from mail\.{sender.domain} \(\[127\.0\.0\.1\]\)\r\n\tby mail\.{recipient.domain} "
    )
    assert re.search(received.encode(), raw), raw
    # The sender keeps a copy in `sent`.
    sent = sender.everlock.console(f"/mail messages list {sender.email} sent")
    assert sent.endswith(f"  {letter['Subject']}\n")
    return raw


def test_alice_writes_to_bob_and_bob_answers(sites):
    alice, bob = sites
    raw = _send(alice, bob, _letter(
        "Alice <alice@example.com>", "Bob <bob@example.net>", "Across the wire",
        "Hello Bob, this came through your MX.\n", Message_Id="<first@example.com>",
    ))  # fmt: skip
    assert b"Hello Bob, this came through your MX." in raw

    raw = _send(bob, alice, _letter(
        "Bob <bob@example.net>", "Alice <alice@example.com>", "Re: Across the wire",
        "Got it, Alice.\n", In_Reply_To="<first@example.com>",
    ))  # fmt: skip
    assert b"In-Reply-To: <first@example.com>\r\n" in raw and b"Got it, Alice." in raw


def test_a_forged_sender_of_a_reject_domain_is_refused_and_nothing_is_stored(sites):
    _, bob = sites
    forged = _letter("Alice <alice@example.com>", "Bob <bob@example.net>", "Forged", "Send money.\n")
    # From another loopback address than the one example.com's SPF names, without signatures.
    with smtplib.SMTP(bob.address, bob.smtp_port, timeout=30, source_address=("127.0.0.3", 0)) as client:
        client.ehlo("mail.example.com")
        client.mail("alice@example.com")
        client.rcpt("bob@example.net")
        reply = client.data(forged.as_bytes(policy=email.policy.SMTP))
    assert reply == (550, b"5.7.1 Rejected by the DMARC policy of the From domain")
    assert "Forged" not in bob.everlock.console(f"/mail messages list {bob.email}")


def test_a_redirect_to_the_other_installation_arrives_with_srs_and_spf_passing(sites):
    alice, bob = sites
    rules = bob.everlock.data_dir / "everlock-mail" / "rules.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(
        '[[rule]]\nname = "forward"\nscope = "fwd@example.net"\nredirect = ["alice@example.com"]\n'
    )
    assert bob.everlock.console(f"/users grant {bob.user} smtp/mail/example.net:fwd writer").startswith(
        "grant"
    )
    assert "1 rule" in bob.everlock.console("/mail rules import")
    alice.submit(_letter("Alice <alice@example.com>", "fwd@example.net", "Round trip", "Back to me.\n"))
    raw = alice.wait_for_inbox("Round trip")
    srs_sender = re.match(rb"Return-Path: <(SRS0=[^>]+=example\.com=alice@example\.net)>\r\n", raw)
    assert srs_sender, raw[:300]
    assert alice.last_checks[:4] == [
        "spf=pass smtp.mailfrom=example.net",
        "dkim=pass header.d=example.com header.a=ed25519-sha256 header.s=default",
        "dkim=pass header.d=example.com header.a=rsa-sha256 header.s=default-rsa",
        "dmarc=pass header.from=example.com",
    ]
    assert b"X-Everlock-Redirected: fwd@example.net\r\n" in raw
