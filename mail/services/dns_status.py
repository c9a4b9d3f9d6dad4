"""The DNS a mail domain needs, and whether a zone hosted here serves it.

A mail domain needs an MX at its name (mail for it comes here), an address record for its
outbound hostname (the name in EHLO, which receivers look up), an SPF TXT at its name
(RFC 7208), its DKIM key TXT records when signing is on (RFC 6376), and a DMARC TXT at
`_dmarc.<domain>` (RFC 7489). A record whose name lies in a zone hosted here (with the DNS
backend on) is looked up in the zone data; for any other name, this installation cannot
tell whether the record is published.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from dns_zones.models import Record
from dns_zones.services import hosted_zone_for
from mail.models import MailDomain
from mail.services.domains import dkim_records


@dataclass(frozen=True)
class NeededRecord:
    name: str
    rtype: str  # "MX", "A/AAAA", "TXT"
    purpose: str
    zone: str | None  # the hosted zone the name is in, None when hosted elsewhere
    served: bool | None  # None when the zone is hosted elsewhere


@dataclass(frozen=True)
class DomainDNS:
    domain: MailDomain
    records: tuple[NeededRecord, ...]

    @property
    def missing(self) -> list[NeededRecord]:
        return [r for r in self.records if r.served is False]

    @property
    def unknown(self) -> list[NeededRecord]:
        return [r for r in self.records if r.served is None]


def _needs(domain: MailDomain) -> list[tuple[str, tuple[str, ...], str, str]]:
    """(name, record types, text the data must contain, purpose) for each record needed."""
    needs = [
        (domain.name, ("MX",), "", "mail for the domain is delivered here"),
        (domain.effective_hostname, ("A", "AAAA"), "", "the outbound hostname resolves"),
        (domain.name, ("TXT",), "v=spf1", "SPF: which hosts send for the domain"),
    ]
    if domain.dkim_enabled:
        needs += [(r.name, ("TXT",), "v=DKIM1", "DKIM public key") for r in dkim_records(domain)]
    needs.append((f"_dmarc.{domain.name}", ("TXT",), "v=DMARC1", "DMARC policy"))
    return needs


def domain_dns(domain: MailDomain) -> DomainDNS:
    """The records `domain` needs, each with whether a zone hosted here serves it."""
    out = []
    for name, types, contains, purpose in _needs(domain):
        zone = hosted_zone_for(name) if settings.EVERLOCK_DNS else None
        served = None
        if zone is not None:
            records = Record.objects.filter(zone=zone, name=name, rtype__in=types)
            served = any(contains.lower() in r.data.lower() for r in records)
        out.append(NeededRecord(name, "/".join(types), purpose, zone.origin if zone else None, served))
    return DomainDNS(domain, tuple(out))


def domains_dns() -> list[DomainDNS]:
    """domain_dns of every mail domain, by name."""
    return [domain_dns(d) for d in MailDomain.objects.order_by("name")]
