"""Every DNS record a mail domain needs, derived from the domain and the settings.

Besides the DKIM key TXT records (mail.services.domains), a mail domain publishes:

- MX at the domain: its mail host (the outbound hostname, mail.<domain> by default);
- SPF (RFC 7208) `v=spf1 mx -all`: only the MX hosts send for the domain;
- DMARC (RFC 7489) at `_dmarc`: the domain's policy, aggregate reports to its report address;
- MTA-STS (RFC 8461): `_mta-sts` TXT with the id of the policy served at
  https://mta-sts.<domain>/.well-known/mta-sts.txt, and the `mta-sts` name itself;
- TLS-RPT (RFC 8460) at `_smtp._tls`: where TLS failure reports go;
- client configuration: SRV `_submissions._tcp`, `_submission._tcp` (when submission is on),
  `_imaps._tcp`, `_imap._tcp` (RFC 6186; implicit TLS preferred, RFC 8314 section 5.1), and
  the `autoconfig` / `autodiscover` names mail clients look for.

In a zone hosted here they are published as derived records (source "mail.dns:<domain>",
dns_zones.services.replace_derived_records, which leaves alone what the administrator set by
hand); `/mail domains records` prints them for a zone hosted elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

from django.conf import settings

from dns_zones.models import Record
from dns_zones.records import canonical_data
from dns_zones.services import RecordSpec, hosted_zone_for
from domain_names import fold
from mail.dkim.keys import txt_presentation
from mail.models import MailDomain

TTL = 3600
# RFC 8461 section 3.2: max_age in seconds; weeks are recommended, one week is mox's choice too.
MTA_STS_MAX_AGE = 7 * 24 * 3600
DEFAULT_PORTS = {"submissions": 465, "submission": 587, "imaps": 993, "imap": 143}


def dns_source(name: str) -> str:
    return f"mail.dns:{name}"


def public_ports() -> dict[str, int]:
    """The client ports published (SRV, autoconfig): DEFAULT_PORTS with EVERLOCK_PUBLIC_PORTS."""
    return DEFAULT_PORTS | {k: v for k, v in settings.EVERLOCK_PUBLIC_PORTS.items() if k in DEFAULT_PORTS}


def mx_hosts(domain: MailDomain) -> list[str]:
    """The domain's MX hosts: its mail host, and those of MX records the administrator set
    in its hosted zone (which stand in for the derived MX)."""
    hosts = [domain.effective_hostname]
    zone = hosted_zone_for(domain.name) if settings.EVERLOCK_DNS else None
    if zone is not None:
        admin = Record.objects.filter(zone=zone, name=domain.name, rtype="MX", source="")
        for data in admin.order_by("data").values_list("data", flat=True):
            host = fold(data.split()[-1])
            if host and host not in hosts:
                hosts.append(host)
    return hosts


def mta_sts_policy(domain: MailDomain) -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt
    (RFC 8461 section 3.2): CRLF-terminated "key: value" lines, one mx line per MX host."""
    lines = [
        "version: STSv1",
        f"mode: {domain.mta_sts_mode}",
        *(f"mx: {host}" for host in mx_hosts(domain)),
        f"max_age: {MTA_STS_MAX_AGE}",
    ]
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_id(policy: str) -> str:
    """The policy id for `policy`: 1 to 32 letters and digits (RFC 8461 section 3.1), here
    a digest of the policy text, so it changes exactly when the policy does."""
    digest = hashlib.sha256(policy.encode()).digest()
    return base64.b32encode(digest).decode().rstrip("=")[:20]


@dataclass(frozen=True)
class DerivedRecord:
    """A record the domain needs: owner name, type, data (presentation format, names
    absolute), and what it is for."""

    name: str
    rtype: str
    data: str
    purpose: str
    ttl: int = TTL

    @property
    def spec(self) -> RecordSpec:
        return RecordSpec(self.name, self.rtype, self.ttl, self.data)

    def zone_line(self) -> str:
        """The record as a zone-file line; TXT data longer than 255 octets is split into
        several strings (RFC 1035 section 3.3), which readers join."""
        return f"{self.name}. {self.ttl} IN {self.rtype} {canonical_data(self.rtype, self.data)}"


def _txt(value: str) -> str:
    return txt_presentation(value)


def _address_records(name: str, host: str, purpose: str) -> list[DerivedRecord]:
    """A/AAAA of this server's public addresses for `name`, or a CNAME to the mail host."""
    addresses = [ipaddress.ip_address(a) for a in settings.EVERLOCK_PUBLIC_ADDRESSES]
    if not addresses:
        return [] if name == host else [DerivedRecord(name, "CNAME", f"{host}.", purpose)]
    return [DerivedRecord(name, "A" if a.version == 4 else "AAAA", str(a), purpose) for a in addresses]


def derived_records(domain: MailDomain) -> list[DerivedRecord]:
    """The records `domain` needs besides its DKIM keys, in the order they are shown."""
    name, host = domain.name, domain.effective_hostname
    report = domain.effective_report_address
    ports = public_ports()
    records = [
        DerivedRecord(name, "MX", f"10 {host}.", "mail for the domain is delivered here"),
        *_address_records(host, host, "the mail host's address"),
        DerivedRecord(name, "TXT", _txt("v=spf1 mx -all"), "SPF: only the MX hosts send for the domain"),
        DerivedRecord(
            f"_dmarc.{name}",
            "TXT",
            _txt(f"v=DMARC1; p={domain.dmarc_policy}; rua=mailto:{report}"),
            "DMARC policy and where aggregate reports go",
        ),
    ]
    if domain.mta_sts_mode != MailDomain.MtaStsMode.NONE:
        policy_id = mta_sts_id(mta_sts_policy(domain))
        records += [
            DerivedRecord(f"_mta-sts.{name}", "TXT", _txt(f"v=STSv1; id={policy_id}"), "MTA-STS policy id"),
            *_address_records(f"mta-sts.{name}", host, "MTA-STS policy host"),
        ]
    records.append(
        DerivedRecord(
            f"_smtp._tls.{name}",
            "TXT",
            _txt(f"v=TLSRPTv1; rua=mailto:{report}"),
            "TLS-RPT: where TLS reports go",
        )
    )
    services = [("submissions", 0), ("submission", 10)] if domain.submission_enabled else []
    services += [("imaps", 0), ("imap", 10)]
    for service, priority in services:
        records.append(
            DerivedRecord(
                f"_{service}._tcp.{name}",
                "SRV",
                f"{priority} 1 {ports[service]} {host}.",
                f"mail clients find {service} (RFC 6186)",
            )
        )
    for label in ("autoconfig", "autodiscover"):
        records += _address_records(f"{label}.{name}", host, "mail client autoconfiguration")
    return records
