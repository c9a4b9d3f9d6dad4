"""DMARC (RFC 7489): the policy record of the From domain, identifier alignment and the
disposition. The organizational domain comes from the Public Suffix List of the pinned
publicsuffixlist package (its packaged copy: nothing is downloaded at run time)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from domain_names import fold
from mail.auth.checks import DKIMResult, SPFResult
from mail.auth.lookups import Lookups, TemporaryDNSError

POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass fail none temperror permerror (RFC 8601 section 2.7.1, RFC 7489 11.2)
    domain: str  # the RFC5322.From domain
    policy: str = "none"  # what the domain asks for this message (p= or sp=)
    disposition: str = "none"  # what applies after pct= sampling: none, quarantine, reject
    aligned_spf: bool = False
    aligned_dkim: bool = False


@functools.cache
def public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 section 3.2: the public suffix plus one label (the domain itself when it is
    a public suffix or unknown)."""
    return public_suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 section 3.1: strict is the same name, relaxed the same organizational domain."""
    identifier, from_domain = fold(identifier), fold(from_domain)
    if not identifier:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 section 6.3), or None when it is not one: v=DMARC1
    must come first, p= must be a known policy (section 6.6.3 step 6)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not eq:
            if part.strip():
                return None
            continue
        tags.setdefault(name.strip().lower(), value.strip())
    if not text.lstrip().startswith("v") or tags.get("v") != "DMARC1":
        return None
    if tags.get("p", "").lower() not in POLICIES:
        return None
    return tags


def policy_record(lookups: Lookups, from_domain: str) -> tuple[dict[str, str] | None, bool]:
    """The DMARC record of `from_domain`, else of its organizational domain (RFC 7489
    section 6.6.3); with whether it came from the organizational domain. Several records at
    one name count as none (step 5). Raises TemporaryDNSError."""
    org = organizational_domain(from_domain)
    for name, inherited in ((from_domain, False), (org, True)):
        if inherited and org == from_domain:
            break
        records = [parse_record(t.decode("utf-8", "replace")) for t in lookups.txt(f"_dmarc.{name}")]
        records = [r for r in records if r is not None]
        if len(records) == 1:
            return records[0], inherited
    return None, False


def evaluate(
    lookups: Lookups,
    *,
    from_domain: str,
    spf: SPFResult,
    dkim: list[DKIMResult],
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """The DMARC result for a message whose RFC5322.From domain is `from_domain`.

    Passes when SPF passed for an aligned MAIL FROM domain (RFC 7489 section 4.2; the HELO
    identity does not count) or a DKIM signature of an aligned domain passed. `sample` draws
    in [0, 1) for pct= (section 6.6.4: a message outside the percentage gets the next
    weaker policy)."""
    if not from_domain:
        return DMARCResult("none", "")
    try:
        record, inherited = policy_record(lookups, from_domain)
    except TemporaryDNSError:
        return DMARCResult("temperror", from_domain)
    return decide(record, inherited, from_domain=from_domain, spf=spf, dkim=dkim, sample=sample)


def decide(
    record: dict[str, str] | None,
    inherited: bool,
    *,
    from_domain: str,
    spf: SPFResult,
    dkim: list[DKIMResult],
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """evaluate() once policy_record() gave `record` and `inherited`: no DNS."""
    if record is None:
        return DMARCResult("none", from_domain)
    policy = record["p"].lower()
    if inherited and record.get("sp", "").lower() in POLICIES:
        policy = record["sp"].lower()  # section 6.3: sp= for subdomains of the org domain
    spf_ok = (
        spf.result == "pass"
        and spf.scope == "mailfrom"
        and aligned(spf.domain, from_domain, _mode(record, "aspf"))
    )
    dkim_ok = any(r.result == "pass" and aligned(r.domain, from_domain, _mode(record, "adkim")) for r in dkim)
    if spf_ok or dkim_ok:
        return DMARCResult("pass", from_domain, policy, "none", spf_ok, dkim_ok)
    disposition = policy
    try:
        pct = min(100, max(0, int(record.get("pct", "100"))))
    except ValueError:
        pct = 100
    if policy != "none" and sample() * 100 >= pct:
        disposition = POLICIES[POLICIES.index(policy) - 1]
    return DMARCResult("fail", from_domain, policy, disposition)


def _mode(record: dict[str, str], tag: str) -> str:
    return "s" if record.get(tag, "r").lower() == "s" else "r"
