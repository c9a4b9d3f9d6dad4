"""DKIM key rotation: new keys published, signing switched once they are visible, old ones retired.

`/mail domains dkim rotate example.com` calls rotation_start(): a new Ed25519 and a new RSA key
under new selectors (named after the day: 20261201 and 20261201-rsa) are published beside the
keys that sign (in the hosted zone, or printed to publish elsewhere). advance_rotations(),
run by the delivery workers' timer (mail.delivery.tasks.Rescan), then moves each rotation on:

1. publishing: the new records are looked up through the resolver (EVERLOCK_RESOLVER). Once
   every one of them has been seen, continuously, for their TTL, a verifier can no longer hold
   a cached "no such key" for them, and signing switches to the new keys.
2. retiring: the old keys' records stay published for the grace period
   (EVERLOCK_DKIM_ROTATION_GRACE), so mail signed with them just before the switch still
   verifies when it is checked late; then they are withdrawn and the rotation ends.

The state is a DkimRotation row; the domain's TOML file shows it under
[outbound.dkim.rotation], and the admin's domain page too.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import dns.exception
import dns.resolver
from django.db import transaction

from mail.dkim.keys import txt_value
from mail.models import DkimRotation, MailDomain
from mail.services.domains import (
    DKIM_TTL,
    DkimRecord,
    DomainChange,
    DomainError,
    get_domain,
    new_dkim_keys,
    publish_dkim_records,
    sync_file_on_commit,
)

log = logging.getLogger("mail.domains")


def new_selectors(domain: MailDomain, today: datetime) -> tuple[str, str]:
    """Selectors for the next keys: the day (YYYYMMDD) for Ed25519, with "-rsa" for RSA, and
    "-2", "-3"... when the day's names are taken by the keys in use."""
    taken = {domain.dkim_selector, domain.dkim_rsa_selector}
    base = today.strftime("%Y%m%d")
    n = 1
    while True:
        name = base if n == 1 else f"{base}-{n}"
        if name not in taken and f"{name}-rsa" not in taken:
            return name, f"{name}-rsa"
        n += 1


def rotation_records(rotation: DkimRotation) -> list[DkimRecord]:
    """The key records of the rotation's own keys (the new ones, then the old ones)."""
    name = rotation.domain.name
    return [
        DkimRecord(f"{rotation.selector}._domainkey.{name}", txt_value(rotation.private_key_pem)),
        DkimRecord(f"{rotation.rsa_selector}._domainkey.{name}", txt_value(rotation.rsa_private_key_pem)),
    ]


def rotation_start(*, name: str, now: datetime) -> DomainChange:
    """Start a key rotation of domain `name`: new keys under new selectors, published beside
    the signing ones (or the records to publish in the notes).

    Raises DomainError for an unknown domain, one that does not sign (DKIM off), or one whose
    rotation is already in progress.
    """
    current = get_domain(name)
    if not current.dkim_enabled:
        raise DomainError(
            f"DKIM is off for {current.name}: turn it on first (/mail domains set {current.name} dkim=on)"
        )
    if DkimRotation.objects.filter(domain=current).exists():
        raise DomainError(f"a DKIM key rotation of {current.name} is in progress: {rotation_state(current)}")
    ed25519, rsa = new_dkim_keys()
    with transaction.atomic():
        domain = MailDomain.objects.select_for_update().get(id=current.id)
        if DkimRotation.objects.filter(domain=domain).exists():
            raise DomainError(f"a DKIM key rotation of {domain.name} is in progress")
        selector, rsa_selector = new_selectors(domain, now)
        DkimRotation.objects.create(
            domain=domain,
            selector=selector,
            private_key_pem=ed25519,
            rsa_selector=rsa_selector,
            rsa_private_key_pem=rsa,
            ttl=DKIM_TTL,
            started_at=now,
        )
        notes = [
            f"DKIM key rotation of {domain.name} started: new keys under selectors {selector} (Ed25519) "
            f"and {rsa_selector} (RSA)",
            f"signing stays with {domain.dkim_selector} and {domain.dkim_rsa_selector} until the new "
            f"records have been visible through the resolver for their TTL ({DKIM_TTL} s)",
            *publish_dkim_records(domain),
        ]
        sync_file_on_commit(domain.name)
    log.info("DKIM key rotation of %s started: selectors %s, %s", domain.name, selector, rsa_selector)
    return DomainChange(domain, True, notes)


def rotation_state(domain: MailDomain) -> str:
    """One line saying where the domain's key rotation stands ("" when none is in progress)."""
    rotation = DkimRotation.objects.filter(domain=domain).first()
    if rotation is None:
        return ""
    if rotation.state == DkimRotation.State.PUBLISHING:
        seen = (
            f"visible since {rotation.visible_since:%Y-%m-%d %H:%M:%S} UTC, signing switches "
            f"{rotation.ttl} s after that"
            if rotation.visible_since
            else "not yet visible through the resolver"
        )
        return f"publishing new keys {rotation.selector}, {rotation.rsa_selector}: {seen}"
    return (
        f"signing with the new keys since {rotation.switched_at:%Y-%m-%d %H:%M:%S} UTC; old keys "
        f"{rotation.selector}, {rotation.rsa_selector} stay published for the grace period"
    )


def _visible(resolver: dns.resolver.Resolver, record: DkimRecord) -> bool:
    """Whether the resolver returns `record`'s value among the TXT records of its name."""
    try:
        answer = resolver.resolve(record.name, "TXT")
    except (dns.exception.DNSException, OSError) as exc:
        log.info("DKIM key record %s not visible yet: %s", record.name, exc)
        return False
    return any(b"".join(rdata.strings).decode("ascii", "replace") == record.value for rdata in answer)


def advance_rotations(*, now: datetime, resolver: dns.resolver.Resolver, grace: timedelta) -> list[str]:
    """Move every rotation in progress one step on where it is due (see the module
    docstring); returns a line per change. The lookups happen outside any transaction."""
    notes = []
    for rotation in DkimRotation.objects.select_related("domain").order_by("id"):
        if rotation.state == DkimRotation.State.PUBLISHING:
            visible = all(_visible(resolver, record) for record in rotation_records(rotation))
            note = _after_lookup(rotation.id, visible=visible, now=now)
        else:
            note = _retire(rotation.id, now=now, grace=grace)
        if note:
            log.info("%s", note)
            notes.append(note)
    return notes


def _after_lookup(rotation_id: int, *, visible: bool, now: datetime) -> str:
    with transaction.atomic():
        rotation = DkimRotation.objects.select_for_update().filter(id=rotation_id).first()
        if rotation is None or rotation.state != DkimRotation.State.PUBLISHING:
            return ""
        name = rotation.domain.name
        if not visible:
            if rotation.visible_since is None:
                return ""
            # Visible for the whole TTL means without a gap: start the wait again.
            rotation.visible_since = None
            rotation.save(update_fields=["visible_since"])
            sync_file_on_commit(name)
            return f"DKIM key rotation of {name}: the new records are no longer visible; waiting again"
        if rotation.visible_since is None:
            rotation.visible_since = now
            rotation.save(update_fields=["visible_since"])
            sync_file_on_commit(name)
            return (
                f"DKIM key rotation of {name}: the new records are visible; "
                f"signing switches in {rotation.ttl} s"
            )
        if now < rotation.visible_since + timedelta(seconds=rotation.ttl):
            return ""
        domain = MailDomain.objects.select_for_update().get(id=rotation.domain_id)
        old = (
            domain.dkim_selector,
            domain.dkim_private_key_pem,
            domain.dkim_rsa_selector,
            domain.dkim_rsa_private_key_pem,
        )
        domain.dkim_selector, domain.dkim_private_key_pem = rotation.selector, rotation.private_key_pem
        domain.dkim_rsa_selector, domain.dkim_rsa_private_key_pem = (
            rotation.rsa_selector,
            rotation.rsa_private_key_pem,
        )
        domain.save()
        rotation.selector, rotation.private_key_pem, rotation.rsa_selector, rotation.rsa_private_key_pem = old
        rotation.state = DkimRotation.State.RETIRING
        rotation.switched_at = now
        rotation.save()
        publish_dkim_records(domain)
        sync_file_on_commit(domain.name)
        return (
            f"DKIM key rotation of {name}: signing with {domain.dkim_selector} and "
            f"{domain.dkim_rsa_selector}; {old[0]} and {old[2]} stay published for the grace period"
        )


def _retire(rotation_id: int, *, now: datetime, grace: timedelta) -> str:
    with transaction.atomic():
        rotation = DkimRotation.objects.select_for_update().filter(id=rotation_id).first()
        if (
            rotation is None
            or rotation.state != DkimRotation.State.RETIRING
            or now < rotation.switched_at + grace
        ):
            return ""
        domain = MailDomain.objects.select_for_update().get(id=rotation.domain_id)
        old = (rotation.selector, rotation.rsa_selector)
        rotation.delete()
        publish_dkim_records(domain)
        sync_file_on_commit(domain.name)
        return f"DKIM key rotation of {domain.name} done: old selectors {old[0]} and {old[1]} withdrawn"
