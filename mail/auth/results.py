"""The Authentication-Results header field (RFC 8601) with authres: written for a verdict,
read back for rules and the console, and the claims of outsiders removed.

The stored header is the one record of the checks: rules (mail.rules), the console and the
admin read what the receiving server wrote there, nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass

import authres
import authres.arc
import authres.dmarc

from mail.auth.verdict import Verdict

HEADER_NAME = "Authentication-Results"
# Keep folded lines well under RFC 5322's 78 characters where a result allows.
_FOLD = ";\r\n\t"


@dataclass(frozen=True)
class Outcome:
    """One method's result as read from a header: dkim=pass header.d=example.com..."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "example.com"), ...

    def __str__(self) -> str:
        props = " ".join(f"{name}={value}" for name, value in self.properties)
        return f"{self.method}={self.result}" + (f" {props}" if props else "")

    def get(self, name: str) -> str:
        return next((v for n, v in self.properties if n == name), "")


def header(authserv_id: str, verdict: Verdict) -> bytes:
    """The Authentication-Results field for `verdict`, folded, ending in CRLF."""
    results = []
    spf = verdict.spf
    identity = {"smtp_mailfrom": spf.domain} if spf.scope == "mailfrom" else {"smtp_helo": spf.domain}
    results.append(authres.SPFAuthenticationResult(result=spf.result, **identity))
    if not verdict.dkim:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    for sig in verdict.dkim:
        results.append(
            authres.DKIMAuthenticationResult(
                result=sig.result,
                result_comment=_comment(sig.reason),
                header_d=sig.domain or None,
                header_s=sig.selector or None,
                header_a=sig.algorithm or None,
            )
        )
    dmarc = verdict.dmarc
    results.append(
        authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result,
            # OpenDMARC's comment: what the domain asked and what was done.
            result_comment=f"p={dmarc.policy} dis={dmarc.disposition}" if dmarc.result == "fail" else None,
            header_from=dmarc.domain or None,
            policy=dmarc.disposition if dmarc.result == "fail" else None,
        )
    )
    results.append(authres.arc.ARCAuthenticationResult(result=verdict.arc))
    iprev, name = verdict.iprev
    results.append(
        authres.IPRevAuthenticationResult(
            result=iprev, policy_iprev=verdict.ip, policy_iprev_comment=_comment(name)
        )
    )
    field = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    name, _, value = str(field).partition(": ")
    return f"{name}: {value.replace('; ', _FOLD)}\r\n".encode("utf-8", "replace")


def _comment(text: str) -> str | None:
    # A comment (RFC 5322 section 3.2.2) holds no parentheses or backslashes unescaped, and
    # ";" is where the header is folded.
    cleaned = re.sub(r"[()\\;\r\n]", " ", text).strip()[:120]
    return cleaned or None


def parse(value: str) -> tuple[str, tuple[Outcome, ...]] | None:
    """(authserv-id, outcomes) of an Authentication-Results field value; None when it is not
    one authres can read."""
    try:
        parsed = authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
    except authres.AuthResError:
        return None
    outcomes = tuple(
        Outcome(
            method=r.method.lower(),
            result=(r.result or "").lower(),
            properties=tuple((f"{p.type}.{p.name}".lower(), str(p.value)) for p in r.properties),
        )
        for r in parsed.results
    )
    return str(parsed.authserv_id).lower(), outcomes


def ours(headers: tuple[tuple[str, str], ...], authserv_id: str) -> tuple[Outcome, ...] | None:
    """The outcomes of the topmost Authentication-Results field of `headers` when it is ours
    (its authserv-id is `authserv_id`); None when the message carries no results of ours.
    Only the topmost counts: ours is prepended there, and any older one claiming our id was
    removed on receipt (RFC 8601 section 5)."""
    for name, value in headers:
        if name.lower() == HEADER_NAME.lower():
            parsed = parse(value)
            if parsed is None or parsed[0] != authserv_id.lower():
                return None
            return parsed[1]
    return None


def without_claims(raw: bytes, authserv_ids: frozenset[str]) -> bytes:
    """`raw` without the Authentication-Results fields of its header section whose authserv-id
    is one of ours (RFC 8601 section 5: a field from outside claiming our name is removed
    before ours is added). Everything else stays byte for byte."""
    end = raw.find(b"\r\n\r\n")
    section = raw if end < 0 else raw[: end + 2]
    if b"authentication-results" not in section.lower():
        return raw
    fields: list[bytes] = []
    for line in section.split(b"\r\n")[:-1] if section.endswith(b"\r\n") else section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = []
    removed = False
    for field in fields:
        name, colon, value = field.partition(b":")
        text = value.decode("utf-8", "replace")
        # Parsed (authres is thorough, not fast) only when one of our names is in it at all.
        if (
            colon
            and name.strip().lower() == b"authentication-results"
            and any(i in text.lower() for i in authserv_ids)
        ):
            parsed = parse(text)
            claimed = parsed[0] if parsed else text.split(";")[0].strip().lower()
            if claimed in authserv_ids:
                removed = True
                continue
        kept.append(field)
    if not removed:
        return raw
    rest = b"" if end < 0 else raw[end + 2 :]
    return b"".join(f + b"\r\n" for f in kept) + rest
