"""The DNS every inbound check asks: one resolver per process, with a cache that keeps each
answer for its TTL (negative answers for the TTL of RFC 2308 section 5, as dnspython computes
it for the response).

Each check asks through `Lookups` and sees three outcomes: records, no records (NXDOMAIN or
no data), or TemporaryDNSError (a timeout, SERVFAIL, no nameserver answering), which the
checks turn into their "temperror" result.

The cache is a dict of the records themselves, read without a lock: an answer found there
costs a dictionary lookup, where dnspython's resolver, even answering from its own cache,
builds a resolution (names, a query plan) for every call. `from_cache` runs a check on
cached answers alone, so the listener can run it on its event loop and hand it to a thread
only when it would wait on the network (mail.auth.checker).
"""

from __future__ import annotations

import threading
import time

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


def _negative_ttl(nxdomain: dns.resolver.NXDOMAIN) -> float:
    """How long an NXDOMAIN may be kept: the SOA's negative TTL (RFC 2308 section 5), as
    dnspython reads it from the response; 0 (not kept) for a response it cannot read."""
    try:
        return min(r.resolve_chaining().minimum_ttl for r in nxdomain.responses().values())
    except (ValueError, dns.exception.DNSException):
        return 0


class NotCached(Exception):
    """A lookup made under Lookups.from_cache found no answer kept."""


class Lookups:
    """Cached DNS queries for the checks. Thread-safe: dnspython's resolver is, the cache's
    reads and single writes are atomic, and its pruning takes a lock."""

    def __init__(self, resolver: dns.resolver.Resolver, *, size: int = CACHE_SIZE):
        self.resolver = resolver
        # (name, type) -> (expires at, in time.time() as dnspython's Answer.expiration, rdatas)
        self._answers: dict[tuple[str, str], tuple[float, tuple]] = {}
        self._size = size
        self._pruning = threading.Lock()
        self._local = threading.local()

    @classmethod
    def from_spec(cls, spec: str, *, timeout: float = QUERY_TIMEOUT) -> Lookups:
        """Lookups through the nameservers of `spec` (EVERLOCK_RESOLVER's syntax, see
        mail.delivery.resolver.make_resolver), with a TTL-honouring cache."""
        return cls(make_resolver(spec, timeout=timeout, lifetime=timeout))

    def from_cache(self, check, /, *args, **kwargs):
        """`check(*args, **kwargs)` with every lookup it makes answered from the cache: its
        result, or NotCached when an answer was not there (whatever the check made of that
        lookup's failure: pyspf, for one, swallows some errors)."""
        local = self._local
        local.cache_only, local.missed = True, False
        try:
            result = check(*args, **kwargs)
        except Exception:
            if local.missed:
                raise NotCached from None
            raise
        finally:
            local.cache_only = False
        if local.missed:
            raise NotCached
        return result

    def records(self, name: str | dns.name.Name, rdtype: str) -> tuple:
        """The rdatas of `name`/`rdtype` (none for NXDOMAIN or no data). Raises
        TemporaryDNSError, or NotCached under from_cache."""
        key = (str(name).rstrip(".").lower(), rdtype)
        kept = self._answers.get(key)
        if kept is not None and kept[0] > time.time():
            return kept[1]
        if getattr(self._local, "cache_only", False):
            self._local.missed = True
            raise NotCached(f"{name}/{rdtype}")
        try:
            answer = self.resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            self._keep(key, time.time() + _negative_ttl(exc), ())
            return ()
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.IDNAException):
            return ()  # not a name that can exist
        except (dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout, dns.exception.Timeout) as exc:
            raise TemporaryDNSError(f"{name}/{rdtype}: {exc.__class__.__name__}") from None
        rdatas = tuple(answer.rrset or ())
        self._keep(key, answer.expiration, rdatas)
        return rdatas

    def _keep(self, key: tuple[str, str], expires: float, rdatas: tuple) -> None:
        if len(self._answers) >= self._size:
            with self._pruning:
                now = time.time()
                kept = {k: v for k, v in self._answers.items() if v[0] > now}
                if len(kept) >= self._size // 2:
                    # The oldest half goes (dicts keep insertion order).
                    kept = dict(list(kept.items())[len(kept) // 2 :])
                self._answers = kept
        self._answers[key] = (expires, rdatas)

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
