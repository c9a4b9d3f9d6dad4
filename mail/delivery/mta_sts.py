"""MTA-STS (RFC 8461) for the domains we deliver to, and the TLS results TLS-RPT reports on.

Before delivering to a domain, the worker asks `PolicyStore.policy_for(domain)`:

1. the `_mta-sts.<domain>` TXT record (through our resolver) gives the current policy id
   (section 3.1);
2. a policy cached in the database (MtaStsPolicy, shared by every worker) that has not
   expired is used when the TXT record names its id, or when there is no TXT record at all
   (section 5.1: an attacker could remove it);
3. otherwise the policy is fetched from https://mta-sts.<domain>/.well-known/mta-sts.txt
   (section 3.3): the certificate verified for that name, no redirects, status 200,
   text/plain, at most 64 KiB, a short timeout; it is cached for its max_age;
4. a fetch that fails leaves the cached policy in force, if any (section 5.1).

In `enforce` mode, mail goes only to MX hosts the policy names, over TLS with a verified
certificate (section 5); anything else is a temporary failure, so the message waits and
bounces at expiry like any undeliverable one. In `testing` mode, what enforce would have
refused is logged and delivery goes on as without a policy.

Every SMTP session records its outcome per recipient domain and day (TlsResult), with the
RFC 8460 section 4.3 result types, for TLS-RPT reports.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta

import dns.exception
import dns.resolver
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from domain_names import fold
from mail.models import MtaStsPolicy, TlsResult

log = logging.getLogger("mail.delivery")

WELL_KNOWN = "/.well-known/mta-sts.txt"
# RFC 8461 section 3.3: the policy body is at most 64 KiB; section 3.2: max_age at most a year.
MAX_POLICY = 64 * 1024
MAX_AGE_LIMIT = 31557600
FETCH_TIMEOUT = 10.0
_POLICY_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(Exception):
    """A policy that could not be fetched or does not parse; the message says why.
    `result` is the RFC 8460 result type to report."""

    def __init__(self, message: str, *, result: str = "sts-policy-fetch-error"):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Policy:
    """A domain's policy: mode "enforce", "testing" or "none", the mx patterns, max_age."""

    domain: str
    policy_id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def matches(self, host: str) -> bool:
        """Whether MX host `host` is one the policy names (RFC 8461 section 4.1): equal, or
        a "*." pattern whose wildcard stands for exactly the leftmost label."""
        host = fold(host)
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, _, rest = host.partition(".")
                if first and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(strings: list[str]) -> str | None:
    """The policy id of the `_mta-sts` TXT records `strings` (each record's strings joined),
    or None when there is not exactly one valid STSv1 record (RFC 8461 section 3.1)."""
    ids = []
    for text in strings:
        fields = [f.strip() for f in text.split(";")]
        if fields[0] != "v=STSv1":
            continue
        values = dict(f.partition("=")[::2] for f in fields[1:] if f)
        ids.append(values.get("id", ""))
    if len(ids) != 1 or not _POLICY_ID.match(ids[0]):
        return None
    return ids[0]


def parse_policy(text: str) -> tuple[str, tuple[str, ...], int]:
    """(mode, mx patterns, max_age) of policy file `text` (RFC 8461 section 3.2).

    Raises PolicyError(result="sts-policy-invalid") for a missing or invalid field."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line without a colon: {line[:80]!r}", result="sts-policy-invalid")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("policy version is not STSv1", result="sts-policy-invalid")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"invalid policy mode {mode!r}", result="sts-policy-invalid")
    max_age_text = (fields.get("max_age") or [""])[0]
    if not max_age_text.isdigit() or len(max_age_text) > 10:
        raise PolicyError(f"invalid max_age {max_age_text!r}", result="sts-policy-invalid")
    mx = tuple(fold(m) for m in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("policy names no mx", result="sts-policy-invalid")
    return mode, mx, min(int(max_age_text), MAX_AGE_LIMIT)


class _PolicyConnection(http.client.HTTPSConnection):
    """An HTTPS connection to an address we resolved ourselves, with the policy host's name
    for SNI and certificate verification."""

    def __init__(self, host: str, *, address: str, port: int, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.verify_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            self.sock = self.verify_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@dataclass(frozen=True)
class PolicyFetcher:
    """Fetches policies over HTTPS: `port` (443 on the internet), trusting `ca_file` (the
    system's store when empty), names resolved through `resolver`."""

    resolver: object
    port: int = 443
    ca_file: str = ""
    timeout: float = FETCH_TIMEOUT

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)

    def fetch(self, domain: str) -> str:
        """The policy text of `domain`. Raises PolicyError (result "sts-webpki-invalid" for a
        certificate that does not verify, "sts-policy-fetch-error" otherwise)."""
        host = f"mta-sts.{domain}"
        addresses = []
        for rdtype in ("A", "AAAA"):
            try:
                addresses += [rr.to_text() for rr in self.resolver.resolve(host, rdtype)]
            except dns.exception.DNSException:
                continue
        if not addresses:
            raise PolicyError(f"{host} has no address")
        context = self.context()
        error = ""
        for address in addresses:
            conn = _PolicyConnection(
                host, address=address, port=self.port, context=context, timeout=self.timeout
            )
            try:
                conn.request("GET", WELL_KNOWN, headers={"Host": host, "Accept": "text/plain"})
                response = conn.getresponse()
                # Section 3.3: redirects are not followed; only 200 counts.
                if response.status != 200:
                    raise PolicyError(f"{host} answered HTTP {response.status}")
                media_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
                if media_type != "text/plain":
                    raise PolicyError(f"{host} sent {media_type or 'no'} media type, not text/plain")
                body = response.read(MAX_POLICY + 1)
                if len(body) > MAX_POLICY:
                    raise PolicyError(f"{host} sent a policy larger than {MAX_POLICY} bytes")
                return body.decode("utf-8")
            except ssl.SSLCertVerificationError as exc:
                raise PolicyError(
                    f"{host} [{address}]: certificate: {exc.verify_message}", result="sts-webpki-invalid"
                ) from None
            except (OSError, http.client.HTTPException, UnicodeError) as exc:
                error = f"{host} [{address}]:{self.port}: {exc}"
            finally:
                conn.close()
        raise PolicyError(error)


def _txt_id(resolver, domain: str) -> str | None:
    try:
        answer = resolver.resolve(f"_mta-sts.{domain}", "TXT", raise_on_no_answer=False)
    except dns.exception.DNSException:
        return None
    if answer.rrset is None:
        return None
    return parse_txt([b"".join(rr.strings).decode("utf-8", "replace") for rr in answer])


def _policy(row: MtaStsPolicy) -> Policy:
    return Policy(row.domain, row.policy_id, row.mode, tuple(row.mx_patterns), row.max_age)


@dataclass(frozen=True)
class Lookup:
    """What policy_for found: the policy in force (None: deliver as without one) and, when
    a published policy could not be used, the RFC 8460 result type and message."""

    policy: Policy | None
    failure: str = ""
    message: str = ""
    # The id the TXT record advertised when its policy could not be used.
    advertised_id: str = ""


def policy_for(domain: str, *, resolver, fetcher: PolicyFetcher, now: datetime | None = None) -> Lookup:
    """The MTA-STS policy in force for `domain` (see the module docstring). Never raises
    for the remote side's failures; stores what it fetched."""
    now = now or timezone.now()
    row = MtaStsPolicy.objects.filter(domain=domain, expires_at__gt=now).first()
    policy_id = _txt_id(resolver, domain)
    if row is not None and policy_id in (None, row.policy_id):
        return Lookup(_policy(row))
    if policy_id is None:
        return Lookup(None)
    try:
        mode, mx, max_age = parse_policy(fetcher.fetch(domain))
    except PolicyError as exc:
        log.info("MTA-STS policy of %s (id %s) not fetched: %s", domain, policy_id, exc)
        return Lookup(_policy(row) if row is not None else None, exc.result, str(exc), policy_id)
    MtaStsPolicy.objects.update_or_create(
        domain=domain,
        defaults={
            "policy_id": policy_id,
            "mode": mode,
            "mx": "\n".join(mx),
            "max_age": max_age,
            "fetched_at": now,
            "expires_at": now + timedelta(seconds=max_age),
        },
    )
    log.info("MTA-STS policy of %s fetched: id %s, mode %s, mx %s", domain, policy_id, mode, " ".join(mx))
    return Lookup(Policy(domain, policy_id, mode, mx, max_age))


def record_result(
    *, domain: str, policy: Policy | None, mx_host: str = "", result: str, policy_id: str = ""
) -> None:
    """Count one session (or policy failure) of `domain` today under `result`, for
    `policy` (or, when a published policy could not be had, its advertised `policy_id`)."""
    policy_id = policy.policy_id if policy else policy_id
    key = dict(
        domain=domain,
        day=timezone.now().date(),
        policy_type=TlsResult.PolicyType.STS if policy_id else TlsResult.PolicyType.NO_POLICY,
        policy_id=policy_id,
        mx_host=mx_host,
        result=result,
    )
    if TlsResult.objects.filter(**key).update(count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            TlsResult.objects.create(**key, count=1)
    except IntegrityError:
        # Another worker created the counter meanwhile.
        TlsResult.objects.filter(**key).update(count=F("count") + 1)


def certificate_result(exc: ssl.SSLCertVerificationError) -> str:
    """The RFC 8460 section 4.3 result type of a certificate that did not verify."""
    code = getattr(exc, "verify_code", 0)
    if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return "certificate-host-mismatch"
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return "certificate-expired"
    if code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed, untrusted chain
        return "certificate-not-trusted"
    return "validation-failure"
