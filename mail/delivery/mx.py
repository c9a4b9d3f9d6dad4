"""Where mail for a domain goes: MX lookup (RFC 5321 section 5.1, RFC 7505).

The resolver is injected (anything with dnspython's `resolve(name, rdtype)`), so tests use a
local DNS server.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver

log = logging.getLogger("mail.delivery")


class LookupFailed(Exception):
    """No host to deliver to. `permanent` tells a bounce (NXDOMAIN, null MX) from a retry."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Host:
    """One MX host with its addresses, IPv4 first."""

    name: str
    preference: int
    addresses: tuple[str, ...]


def _addresses(resolver, name: str) -> tuple[list[str], str]:
    """A and AAAA addresses of `name`; the second item is a temporary error seen, if any."""
    found: list[str] = []
    error = ""
    nxdomain = 0
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
            found.extend(rr.address for rr in answer)
        except dns.resolver.NXDOMAIN:
            nxdomain += 1
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.NoAnswer) as exc:
            error = f"{name} {rdtype}: {exc.__class__.__name__}"
    return found, error


def lookup(domain: str, *, resolver) -> list[Host]:
    """The hosts to try for `domain`, in order: lowest preference first, random among equal
    preference (RFC 5321 section 5.1); the domain itself when it has no MX (implicit MX).

    Raises LookupFailed(permanent=True) for NXDOMAIN, a null MX (RFC 7505: "0 .") or no
    address at all; LookupFailed(permanent=False) for SERVFAIL, timeouts, and MX hosts whose
    addresses could not be looked up for such a reason.
    """
    try:
        answer = resolver.resolve(domain, "MX", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        raise LookupFailed(f"{domain}: no such domain (NXDOMAIN)", permanent=True) from None
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise LookupFailed(f"{domain} MX: {exc.__class__.__name__}: {exc}", permanent=False) from None
    records = list(answer) if answer.rrset is not None else []
    if not records:
        # RFC 5321 section 5.1: no MX, the domain itself is the host (preference 0).
        addresses, error = _addresses(resolver, domain)
        if not addresses:
            if error:
                raise LookupFailed(f"{domain}: {error}", permanent=False)
            raise LookupFailed(f"{domain}: no MX and no address", permanent=True)
        return [Host(domain, 0, tuple(addresses))]
    if any(rr.exchange == dns.name.root for rr in records):
        # RFC 7505 section 3: a null MX means the domain accepts no mail.
        raise LookupFailed(f"{domain}: null MX, the domain accepts no mail", permanent=True)
    by_pref: dict[int, list[str]] = {}
    for rr in records:
        by_pref.setdefault(rr.preference, []).append(rr.exchange.to_text(omit_final_dot=True))
    hosts: list[Host] = []
    errors: list[str] = []
    for pref in sorted(by_pref):
        names = by_pref[pref]
        random.shuffle(names)
        for name in names:
            addresses, error = _addresses(resolver, name)
            if error:
                errors.append(error)
            if addresses:
                hosts.append(Host(name, pref, tuple(addresses)))
    if not hosts:
        raise LookupFailed(
            f"{domain}: no address for any MX host ({'; '.join(errors) or 'NXDOMAIN'})",
            permanent=not errors,
        )
    return hosts
