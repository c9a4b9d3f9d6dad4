"""Certificates: request one, renew the due ones, list what the listeners present.

request_certificate() runs one ACME order (tls.issuance) and stores the result; the listener
processes pick the new row up by themselves (tls.store). renew_due() is the periodic work:
it orders a certificate for every name Everlock serves that has none, and renews each
certificate two thirds into its lifetime (Let's Encrypt's advice: with 90-day certificates,
30 days before expiry), leaving a third of it for retries when the CA or the network fails.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from django.core.cache import cache
from django.db import transaction

from domain_names import DomainNameError, normalize_host
from tls.issuance import AcmeError, AcmeSettings, order_certificate
from tls.models import Certificate, HTTPChallenge
from tls.store import CertificateStore, Presented, describe_pem

log = logging.getLogger("tls")

# Only one process renews at a time (several delivery workers run the timer): a lock in the
# shared cache, held at most this long.
RENEWAL_LOCK = "tls:renewal"
RENEWAL_LOCK_SECONDS = 3600
# An http-01 answer older than this belongs to no running order (an order lasts minutes).
STALE_CHALLENGE = datetime.timedelta(days=1)


class CertificateError(ValueError):
    """A request that cannot be made (bad name, ACME off) or an order that failed."""


def normalize_certificate_name(name: str) -> str:
    """`name` as a certificate holds it: lower-case A-labels, no trailing dot, at least two
    labels, an optional leading "*." (wildcard). Raises CertificateError."""
    wildcard = name.startswith("*.")
    try:
        host = normalize_host(name[2:] if wildcard else name)
    except DomainNameError as exc:
        raise CertificateError(f"invalid host name {exc.name!r}: {exc.reason}") from None
    return f"*.{host}" if wildcard else host


def _renew_after(not_before: datetime.datetime, not_after: datetime.datetime) -> datetime.datetime:
    return not_before + (not_after - not_before) * 2 / 3


def request_certificate(*, names: list[str], acme: AcmeSettings, requested: bool = True) -> Certificate:
    """Obtain one certificate for `names` and store it; return the row.

    `requested`: an administrator asked for it (renewed until deleted), rather than renewal
    for the names Everlock serves. Earlier certificates for exactly these names are deleted
    with the same commit (the new one replaces them on every listener within
    EVERLOCK_TLS_RELOAD_INTERVAL). Raises CertificateError for an invalid name, ACME not
    configured, or a failed order.
    """
    if not acme.enabled:
        raise CertificateError("ACME is off: set EVERLOCK_ACME_EMAIL (and EVERLOCK_ACME_DIRECTORY)")
    wanted = list(dict.fromkeys(normalize_certificate_name(n) for n in names))
    if not wanted:
        raise CertificateError("give at least one name")
    try:
        issued = order_certificate(wanted, acme=acme)
    except AcmeError as exc:
        raise CertificateError(str(exc)) from None
    _, issuer, not_before, not_after = describe_pem(issued.chain_pem.encode())
    with transaction.atomic():
        for old in Certificate.objects.select_for_update().all():
            if sorted(old.names) == sorted(wanted):
                old.delete()
        cert = Certificate.objects.create(
            names=wanted,
            chain_pem=issued.chain_pem,
            key_pem=issued.key_pem,
            issuer=issuer,
            not_before=not_before,
            not_after=not_after,
            renew_after=_renew_after(not_before, not_after),
            directory=acme.directory,
            requested=requested,
            challenges=issued.challenges,
        )
    log.info(
        "certificate for %s issued by %s, valid until %s", ", ".join(wanted), issuer, f"{not_after:%Y-%m-%d}"
    )
    return cert


def served_names(*, admin_host: str) -> list[str]:
    """The names Everlock serves over TLS: each enabled mail domain's outbound hostname,
    mta-sts.<domain> (RFC 8461 section 3.3) and autoconfig.<domain>, and `admin_host`."""
    from mail.models import MailDomain

    names: list[str] = []
    for domain in MailDomain.objects.filter(enabled=True).order_by("name"):
        names += [domain.effective_hostname, f"mta-sts.{domain.name}", f"autoconfig.{domain.name}"]
    if admin_host:
        names.append(admin_host)
    out = []
    for name in names:
        try:
            out.append(normalize_certificate_name(name))
        except CertificateError:
            log.warning("%s is not a host name a certificate can hold; skipped", name)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Order:
    names: list[str]
    requested: bool = False


def due_requests(*, served: list[str], now: datetime.datetime) -> list[Order]:
    """The orders renewal should place at `now`: each certificate past its renew_after (same
    names) that an administrator requested or that holds a served name, then each served
    name no unexpired certificate covers. A certificate for names no longer served (a
    deleted mail domain) is left to expire."""
    covered: set[str] = set()
    orders: list[Order] = []
    seen: set[tuple[str, ...]] = set()
    for cert in Certificate.objects.filter(not_after__gt=now).order_by("-id"):
        key = tuple(sorted(cert.names))
        if key in seen:
            continue
        seen.add(key)
        covered.update(cert.names)
        if cert.renew_after <= now and (cert.requested or set(cert.names) & set(served)):
            orders.append(Order(list(cert.names), cert.requested))
    orders += [Order([name]) for name in served if name not in covered]
    return orders


def missing_names(*, admin_host: str, now: datetime.datetime | None = None) -> list[tuple[str, str]]:
    """The served names no unexpired certificate holds, each with the reason its last order
    failed ("" when it has not been tried yet)."""
    now = now or datetime.datetime.now(datetime.UTC)
    covered = {
        n
        for names in Certificate.objects.filter(not_after__gt=now).values_list("names", flat=True)
        for n in names
    }
    return [
        (name, last_failure([name])) for name in served_names(admin_host=admin_host) if name not in covered
    ]


def delete_certificates(*, name: str) -> int:
    """Delete every certificate holding `name` (so that it is neither presented nor renewed);
    return how many there were. Raises CertificateError for an invalid name."""
    name = normalize_certificate_name(name)
    with transaction.atomic():
        ids = [c.id for c in Certificate.objects.select_for_update().only("id", "names") if name in c.names]
        Certificate.objects.filter(id__in=ids).delete()
    return len(ids)


@dataclass(frozen=True)
class RenewalOutcome:
    names: tuple[str, ...]
    error: str = ""


def _failure_key(names: list[str] | tuple[str, ...]) -> str:
    return "tls:failed:" + hashlib.sha256(",".join(sorted(names)).encode()).hexdigest()


def last_failure(names: list[str] | tuple[str, ...]) -> str:
    """The CA's reason for the last failed renewal order for exactly `names`, while it is
    not retried yet (EVERLOCK_ACME_RETRY_AFTER); else ""."""
    return cache.get(_failure_key(names), "")


def renew_due(
    *, acme: AcmeSettings, admin_host: str, retry_after: float, now: datetime.datetime | None = None
) -> list[RenewalOutcome]:
    """Place every order due_requests() names, one after the other; return the outcomes.

    A failure is logged and remembered for `retry_after` seconds, during which the same
    order is not placed again (a CA limits failed validations: Let's Encrypt to 5 per name
    per hour). Does nothing when ACME is off or another process is renewing."""
    if not acme.enabled or not cache.add(RENEWAL_LOCK, "1", RENEWAL_LOCK_SECONDS):
        return []
    try:
        now = now or datetime.datetime.now(datetime.UTC)
        # Answers an order left behind when its process was killed mid-order.
        HTTPChallenge.objects.filter(created_at__lt=now - STALE_CHALLENGE).delete()
        # An expired certificate is never presented again.
        Certificate.objects.filter(not_after__lte=now).delete()
        outcomes = []
        for order in due_requests(served=served_names(admin_host=admin_host), now=now):
            names = order.names
            if last_failure(names):
                continue
            try:
                request_certificate(names=names, acme=acme, requested=order.requested)
                outcomes.append(RenewalOutcome(tuple(names)))
            except CertificateError as exc:
                log.warning("certificate renewal failed: %s", exc)
                cache.set(_failure_key(names), str(exc), retry_after)
                outcomes.append(RenewalOutcome(tuple(names), str(exc)))
        return outcomes
    finally:
        cache.delete(RENEWAL_LOCK)


def presented_certificates(
    *, cert_file: str, key_file: str, data_dir: Path, hostname: str
) -> list[Presented]:
    """What the TLS listeners present, as a store built now from the same settings sees it."""
    store = CertificateStore(cert_file=cert_file, key_file=key_file, data_dir=data_dir, hostname=hostname)
    store.refresh()
    return store.presented()
