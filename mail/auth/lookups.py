"""The DNS every inbound check asks: one resolver per process, with a cache that honours
the TTLs of the answers (dnspython's LRUCache, negative answers included, RFC 2308).

Each check asks through `Lookups` and sees three outcomes: records, no records (NXDOMAIN or
no data), or TemporaryDNSError (a timeout, SERVFAIL, no nameserver answering), which the
checks turn into their "temperror" result.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from mail.delivery.resolver import make_resolver

# RFC 7208 section 4.6.4 allows 20 s for a whole SPF check; one query gets far less.
QUERY_TIMEOUT = 5.0
CACHE_SIZE = 100_000


class TemporaryDNSError(Exception):
    """The answer could not be had now; asking again later may work."""


class Lookups:
    """Cached DNS queries for the checks. Thread-safe (dnspython's resolver and cache are)."""

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver

    @classmethod
    def from_spec(cls, spec: str, *, timeout: float = QUERY_TIMEOUT) -> Lookups:
        """Lookups through the nameservers of `spec` (EVERLOCK_RESOLVER's syntax, see
        mail.delivery.resolver.make_resolver), with a TTL-honouring cache."""
        resolver = make_resolver(spec, timeout=timeout, lifetime=timeout)
        resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        return cls(resolver)

    def records(self, name: str | dns.name.Name, rdtype: str) -> list:
        """The rdatas of `name`/`rdtype` ([] for NXDOMAIN or no data). Raises
        TemporaryDNSError."""
        try:
            return list(self.resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.IDNAException):
            return []  # not a name that can exist
        except (dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout, dns.exception.Timeout) as exc:
            raise TemporaryDNSError(f"{name}/{rdtype}: {exc.__class__.__name__}") from None

    def txt(self, name: str) -> list[bytes]:
        """The TXT records of `name`, each one's strings joined (RFC 7208 section 3.3)."""
        return [b"".join(r.strings) for r in self.records(name, "TXT")]

    def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of `name`."""
        return [r.address for rdtype in ("A", "AAAA") for r in self.records(name, rdtype)]

    def pointers(self, ip: str) -> list[str]:
        """The PTR names of `ip` (without the final dot)."""
        return [
            r.target.to_text(omit_final_dot=True)
            for r in self.records(dns.reversename.from_address(ip), "PTR")
        ]

    # -- the seams of the libraries ------------------------------------------------------

    def dkim_txt(self, name: bytes, timeout: float = QUERY_TIMEOUT) -> bytes | None:
        """dkimpy's `dnsfunc`: the first TXT record of `name`, or None."""
        found = self.txt(name.decode("ascii", "replace").rstrip("."))
        return found[0] if found else None

    def spf_lookup(self, name: str, qtype: str, strict: bool = True, timeout: float = QUERY_TIMEOUT) -> list:
        """pyspf's `DNSLookup`: [((name, qtype), value), ...] in its types: addresses for
        A/AAAA, (preference, exchange) for MX, a name for PTR, the strings for TXT. Raises
        spf.TempError for a temporary failure (RFC 7208 section 2.6.6)."""
        import spf

        try:
            answers = self.records(name, qtype)
        except TemporaryDNSError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        if qtype in ("A", "AAAA"):
            return [((name, qtype), r.address) for r in answers]
        if qtype == "MX":
            return [((name, qtype), (r.preference, r.exchange)) for r in answers]
        if qtype == "PTR":
            return [((name, qtype), r.target.to_text(True)) for r in answers]
        if qtype in ("TXT", "SPF"):
            return [((name, qtype), r.strings) for r in answers]
        return []
