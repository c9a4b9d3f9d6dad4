"""The individual checks, each turning DNS answers and the message into a result of RFC 8601
section 2.7: SPF (RFC 7208, pyspf), DKIM (RFC 6376 and RFC 8463, dkimpy), ARC (RFC 8617,
dkimpy), iprev (RFC 8601 section 3) and DNSBLs (RFC 5782). Synchronous: they may wait on DNS,
so the SMTP listener runs them on its event loop only when the DNS cache has the answers
(mail.auth.checker)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dkim
import dkim.util
import dns.reversename
import spf

from mail.auth.lookups import Lookups, TemporaryDNSError

log = logging.getLogger("mail.auth")

# RFC 7208 section 4.6.4: at most 20 seconds for the whole SPF evaluation.
SPF_TIME_LIMIT = 20
# RFC 8601 section 3 leaves the number of PTR names to try to us; mox and Postfix try 10.
MAX_PTR_NAMES = 10


@dataclass(frozen=True)
class SPFResult:
    result: str  # pass fail softfail neutral none permerror temperror (RFC 7208 section 2.6)
    domain: str  # the domain checked: of MAIL FROM, or the HELO name for the null sender
    scope: str  # "mailfrom" or "helo"
    explanation: str = ""


@dataclass(frozen=True)
class DKIMResult:
    result: str  # pass fail neutral permerror temperror (RFC 8601 section 2.7.1)
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    identity: str = ""  # i=
    reason: str = ""


@dataclass(frozen=True)
class Listing:
    zone: str
    text: str  # the list's TXT record, or a line naming the zone


def check_spf(lookups: Lookups, *, ip: str, mail_from: str, helo: str) -> SPFResult:
    """SPF of MAIL FROM's domain, or of the HELO name when MAIL FROM is the null sender
    (RFC 7208 section 2.4). pyspf enforces the limits of section 4.6.4 (10 DNS mechanisms,
    2 void lookups) and the 20 s of section 4.6.4; every query goes through `lookups`
    (installed as pyspf's DNSLookup hook at start, see install_spf_lookups)."""
    scope = "mailfrom" if mail_from else "helo"
    domain = mail_from.rpartition("@")[2] if mail_from else helo
    if not domain:
        return SPFResult("none", "", scope)
    try:
        query = spf.query(
            i=ip, s=mail_from or f"postmaster@{helo}", h=helo or domain, querytime=SPF_TIME_LIMIT
        )
        result, _code, explanation = query.check()
    except spf.TempError as exc:
        return SPFResult("temperror", domain, scope, str(exc))
    # pyspf answers "ambiguous" only in its strict mode 2, which is not used.
    return SPFResult(
        result, domain, scope, explanation if result in ("fail", "permerror", "temperror") else ""
    )


def install_spf_lookups(lookups: Lookups) -> None:
    """Route pyspf's DNS through `lookups` (its public hook: the module's DNSLookup)."""
    spf.DNSLookup = lookups.spf_lookup


def check_dkim(
    lookups: Lookups | FetchedKeys, raw: bytes, *, parsed: dkim.DKIM | None = None
) -> list[DKIMResult]:
    """Every DKIM-Signature of `raw` verified (RSA and Ed25519); [] when there is none.
    `parsed` is dkim.DKIM(raw) when the caller has it already."""
    verifier = parsed or dkim.DKIM(raw)
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures):
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList:
            tags = {}
        facts = {
            "domain": tags.get(b"d", b"").decode("ascii", "replace").lower(),
            "selector": tags.get(b"s", b"").decode("ascii", "replace"),
            "algorithm": tags.get(b"a", b"").decode("ascii", "replace"),
            "identity": tags.get(b"i", b"").decode("ascii", "replace"),
        }
        try:
            ok = verifier.verify(idx=index, dnsfunc=lookups.dkim_txt)
        except TemporaryDNSError as exc:
            results.append(DKIMResult("temperror", **facts, reason=str(exc)))
            continue
        except dkim.DKIMException as exc:
            reason = str(exc)
            if reason.startswith("body hash mismatch"):
                # RFC 6376 section 6.1.3: the body was changed on the way.
                results.append(DKIMResult("fail", **facts, reason="body hash mismatch"))
                continue
            # RFC 6376 section 6.1: a signature that cannot be checked (syntax, expired, no
            # or unusable key) is PERMFAIL; RFC 8601 section 2.7.1 calls it permerror.
            results.append(DKIMResult("permerror", **facts, reason=reason))
            continue
        if ok:
            results.append(DKIMResult("pass", **facts))
            continue
        # dkimpy answers False both for a signature that does not verify (fail) and for a
        # key it could not use (missing, revoked with an empty p=, malformed): PERMFAIL, as
        # RFC 6376 section 6.1.2 says. The key lookup tells them apart (from the cache).
        unusable = _unusable_key(lookups, tags)
        if unusable:
            results.append(DKIMResult("permerror", **facts, reason=unusable))
        else:
            results.append(DKIMResult("fail", **facts, reason="signature did not verify"))
    return results


def _unusable_key(lookups: Lookups | FetchedKeys, tags: dict) -> str:
    """Why the key of a signature with these tags cannot be used, or "" when it can."""
    name = tags.get(b"s", b"") + b"._domainkey." + tags.get(b"d", b"") + b"."
    try:
        dkim.load_pk_from_dns(name, dnsfunc=lookups.dkim_txt)
    except dkim.KeyFormatError as exc:
        return str(exc) or "unusable key"
    except (ValueError, TypeError) as exc:
        return f"unusable key: {exc}"
    return ""


def check_arc(lookups: Lookups | FetchedKeys, raw: bytes) -> str:
    """The ARC chain validation status (RFC 8617 section 5.2): none, pass, fail, or
    temperror when a key could not be fetched."""
    try:
        status, _results, _reason = dkim.arc_verify(raw, dnsfunc=lookups.dkim_txt)
    except TemporaryDNSError:
        return "temperror"
    except dkim.DKIMException:
        return "fail"
    # dkimpy answers None for a chain an earlier hop already reported failed (section 5.2).
    return status.decode("ascii").lower() if status else "fail"


def check_iprev(lookups: Lookups, ip: str) -> tuple[str, str]:
    """iprev (RFC 8601 section 3): (result, the name found). pass when a PTR name of `ip`
    resolves back to it; fail when none does; temperror on DNS trouble."""
    try:
        names = lookups.pointers(ip)
        for name in names[:MAX_PTR_NAMES]:
            if ip in lookups.addresses(name):
                return "pass", name
    except TemporaryDNSError:
        return "temperror", ""
    return ("fail", names[0]) if names else ("fail", "")


def check_dnsbls(lookups: Lookups, ip: str, zones: tuple[str, ...]) -> Listing | None:
    """The first of `zones` that lists `ip` (an A record in 127.0.0.0/8, RFC 5782 section
    2.1), with its TXT reason; None when none does. A list that does not answer is skipped
    (logged): a DNSBL outage must not stop mail."""
    for zone in zones:
        name = dns.reversename.from_address(
            ip, v4_origin=dns.name.from_text(zone), v6_origin=dns.name.from_text(zone)
        )
        try:
            listed = [a for a in lookups.addresses(name.to_text()) if a.startswith("127.")]
            if not listed:
                continue
            texts = lookups.txt(name.to_text())
        except TemporaryDNSError as exc:
            log.warning("DNSBL %s did not answer for %s: %s", zone, ip, exc)
            continue
        text = texts[0].decode("utf-8", "replace") if texts else f"{ip} is listed by {zone}"
        return Listing(zone, text)
    return None


# -- DKIM and ARC from fetched keys -----------------------------------------------------------
# Verifying signatures is CPU work (dkimpy canonicalises and checks RSA in Python), the key
# lookups are DNS: the listener fetches the keys first (mail.auth.checker), and dkimpy's key
# lookups are then answered from what was fetched.

_KEY_HEADERS = (b"dkim-signature", b"arc-seal", b"arc-message-signature")


@dataclass(frozen=True)
class FetchedKeys:
    """Key records by the name dkimpy asks for (b"sel._domainkey.example.com."): the TXT
    value, or None when there is none; the names in `failed` could not be fetched now."""

    records: dict[bytes, bytes | None]
    failed: frozenset[bytes] = frozenset()

    def dkim_txt(self, name: bytes, timeout: float = 0) -> bytes | None:
        if name in self.failed:
            raise TemporaryDNSError(name.decode("ascii", "replace"))
        return self.records.get(name)


def fetch_keys(lookups: Lookups, headers: list[tuple[bytes, bytes]]) -> FetchedKeys:
    """The key records every DKIM-Signature, ARC-Seal and ARC-Message-Signature of a
    message's `headers` (as dkimpy parses them) names (its s= and d=), fetched through
    `lookups`."""
    records: dict[bytes, bytes | None] = {}
    failed = set()
    for name, value in headers:
        if name.lower() not in _KEY_HEADERS:
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList:
            continue
        if not tags.get(b"s") or not tags.get(b"d"):
            continue
        key = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
        if key in records or key in failed:
            continue
        try:
            records[key] = lookups.dkim_txt(key)
        except TemporaryDNSError:
            failed.add(key)
    return FetchedKeys(records, frozenset(failed))


def check_signatures(
    raw: bytes, keys: FetchedKeys, *, parsed: dkim.DKIM | None = None
) -> tuple[list[DKIMResult], str]:
    """check_dkim and check_arc of `raw` with the fetched `keys`: no DNS. `parsed` is
    dkim.DKIM(raw) when the caller has it already."""
    end = raw.find(b"\r\n\r\n")
    arc = check_arc(keys, raw) if b"arc-seal" in raw[:end].lower() else "none"
    return check_dkim(keys, raw, parsed=parsed), arc
