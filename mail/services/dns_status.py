"""The DNS a mail domain needs: the full list, whether a zone hosted here serves it, and
whether the world sees it (looked up through the configured resolver).

The records come from mail.services.dns_records (MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV,
autoconfig) and the domain's DKIM keys (mail.services.domains), plus the address of the mail
host when this installation does not know its public addresses. A record whose name lies in
a zone hosted here (with the DNS backend on) is looked up in the zone data; for any other
name, only `check_domain` (through the resolver) can tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver
from django.conf import settings

from dns_zones.models import Record
from dns_zones.records import canonical_data, txt_kind, txt_text
from dns_zones.services import hosted_zone_for, stands_in_for
from domain_names import fold
from mail.dkim.keys import txt_presentation
from mail.models import MailDomain
from mail.services.dns_records import DerivedRecord, derived_records
from mail.services.domains import DKIM_TTL, dkim_records


@dataclass(frozen=True)
class NeededRecord:
    name: str
    rtype: str  # "MX", "TXT", ..., or "A/AAAA" for the mail host when its addresses are unknown
    purpose: str
    zone: str | None  # the hosted zone the name is in, None when hosted elsewhere
    served: bool | None  # None when the zone is hosted elsewhere
    record: DerivedRecord | None = None  # None: any address will do


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


def domain_records(domain: MailDomain) -> list[DerivedRecord]:
    """Every record `domain` needs published, DKIM keys included when signing is on."""
    records = derived_records(domain)
    if domain.dkim_enabled:
        records += [
            DerivedRecord(r.name, "TXT", txt_presentation(r.value), "DKIM public key", DKIM_TTL)
            for r in dkim_records(domain)
        ]
    return records


def _needs(domain: MailDomain) -> list[tuple[str, str, str, DerivedRecord | None]]:
    """(name, type, purpose, record) for each record needed; record None for the mail host's
    address when this installation does not know it (EVERLOCK_PUBLIC_ADDRESSES)."""
    records = domain_records(domain)
    needs = [(r.name, r.rtype, r.purpose, r) for r in records]
    host = domain.effective_hostname
    if not any(r.name == host for r in records):
        needs.insert(1, (host, "A/AAAA", "the mail host resolves", None))
    return needs


def _served(zone, name: str, rtype: str, record: DerivedRecord | None) -> bool:
    have = list(Record.objects.filter(zone=zone, name=name).values_list("rtype", "data"))
    if record is None:
        return any(t in ("A", "AAAA") for t, _ in have)
    return any(stands_in_for(record.rtype, record.data, h) or h == (rtype, record.data) for h in have)


def domain_dns(domain: MailDomain) -> DomainDNS:
    """The records `domain` needs, each with whether a zone hosted here serves it."""
    out = []
    for name, rtype, purpose, record in _needs(domain):
        zone = hosted_zone_for(name) if settings.EVERLOCK_DNS else None
        served = _served(zone, name, rtype, record) if zone is not None else None
        out.append(NeededRecord(name, rtype, purpose, zone.origin if zone else None, served, record))
    return DomainDNS(domain, tuple(out))


def domains_dns() -> list[DomainDNS]:
    """domain_dns of every mail domain, by name."""
    return [domain_dns(d) for d in MailDomain.objects.order_by("name")]


def zone_lines(domain: MailDomain) -> list[str]:
    """Every record to publish for `domain` as zone-file lines (TXT data longer than 255
    octets split into several strings, RFC 1035 section 3.3), with a comment line for the mail
    host's addresses when they are not known here."""
    lines = []
    for name, _rtype, purpose, record in _needs(domain):
        if record is None:
            lines.append(f"; {name}. A/AAAA: the public addresses of this server ({purpose})")
        else:
            lines.append(record.zone_line())
    return lines


@dataclass(frozen=True)
class CheckResult:
    """One needed record as the resolver sees it: `status` is "ok", "missing", "different"
    or "error" (the lookup failed); `seen` what was found; `fix` what to change."""

    name: str
    rtype: str
    status: str
    seen: tuple[str, ...] = ()
    fix: str = ""


def _lookup(resolver, name: str, rtype: str) -> list[str]:
    """The data of `name`'s `rtype` records in presentation format ([] when there are none).
    Raises dns.exception.DNSException for a failed lookup (timeout, SERVFAIL)."""
    try:
        answer = resolver.resolve(name, rtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    if answer.rrset is None:
        return []
    # TXT, MX, SRV and CNAME records must be the name's own, not those of the name a CNAME
    # points to; addresses may come through a CNAME.
    if rtype not in ("A", "AAAA") and fold(answer.rrset.name.to_text()) != name:
        return []
    return [rr.to_text() for rr in answer]


def _addresses(resolver, name: str) -> set[str]:
    return {a for rtype in ("A", "AAAA") for a in _lookup(resolver, name, rtype)}


def _check(resolver, name: str, rtype: str, record: DerivedRecord | None) -> CheckResult:
    if record is None:
        seen = _addresses(resolver, name)
        if seen:
            return CheckResult(name, rtype, "ok", tuple(sorted(seen)))
        return CheckResult(
            name, rtype, "missing", fix=f"add A and/or AAAA records of {name} with this server's addresses"
        )
    add = record.zone_line()
    if record.rtype == "CNAME":
        # Any way of giving the name the mail host's addresses will do (a CNAME or the
        # same A/AAAA records).
        if canonical_data("CNAME", record.data) in _lookup(resolver, name, "CNAME"):
            return CheckResult(name, rtype, "ok", (record.data,))
        seen = _addresses(resolver, name)
        host = _addresses(resolver, record.data.rstrip("."))
        if not seen:
            return CheckResult(name, rtype, "missing", fix=f"add {add}")
        if host and seen == host:
            return CheckResult(name, rtype, "ok", tuple(sorted(seen)))
        return CheckResult(
            name, rtype, "different", tuple(sorted(seen)), f"replace its A/AAAA records with {add}"
        )
    seen = _lookup(resolver, name, record.rtype)
    want = canonical_data(record.rtype, record.data)
    if record.rtype == "TXT":
        text, kind = txt_text(record.data), txt_kind(record.data)
        same_kind = [s for s in seen if txt_kind(s) == kind]
        if any(txt_text(s) == text for s in same_kind):
            return CheckResult(name, rtype, "ok", tuple(same_kind))
        if not same_kind:
            return CheckResult(name, rtype, "missing", tuple(seen), f"add {add}")
        return CheckResult(name, rtype, "different", tuple(same_kind), f"replace it with {add}")
    if want.lower() in (s.lower() for s in seen):
        return CheckResult(name, rtype, "ok", tuple(seen))
    if not seen:
        return CheckResult(name, rtype, "missing", fix=f"add {add}")
    return CheckResult(
        name,
        rtype,
        "different",
        tuple(seen),
        f"add {add}" + (" and remove the others" if rtype in ("MX", "SRV") else ""),
    )


def check_domain(domain: MailDomain, *, resolver) -> list[CheckResult]:
    """Look up every record `domain` needs through `resolver` (dnspython's interface) and say
    for each whether it is published as needed, missing, different, or could not be looked
    up. Never raises for DNS failures."""
    results = []
    for name, rtype, _purpose, record in _needs(domain):
        try:
            results.append(_check(resolver, name, rtype, record))
        except dns.exception.DNSException as exc:
            results.append(
                CheckResult(name, rtype, "error", fix=f"lookup failed: {exc.__class__.__name__}: {exc}")
            )
    return results
