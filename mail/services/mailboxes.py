"""Mailboxes and their folders."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Sum

from accounts.grants import GrantError, parse_resource
from accounts.models import AccessGrant
from domain_names import DomainNameError, normalize_host
from mail.addresses import AddressError, parse_address
from mail.models import Folder, Mailbox, MailDomain, Message
from mail.models.mailboxes import INBOX, SENT


class MailboxError(ValueError):
    """A mailbox change that is refused; the message says why."""


def ensure_mailbox(*, domain: MailDomain, local_part: str) -> Mailbox:
    """The mailbox local_part@domain with its inbox and sent folders, created if missing."""
    with transaction.atomic():
        mailbox, created = Mailbox.objects.get_or_create(domain=domain, local_part=local_part.casefold())
        if created:
            Folder.objects.bulk_create([Folder(mailbox=mailbox, name=n) for n in (INBOX, SENT)])
    return mailbox


def ensure_mailbox_for_grant(*, resource: str) -> Mailbox | None:
    """For a grant on smtp/mail/D:LOCAL with D a local domain, the mailbox, created if missing."""
    parsed = parse_resource(resource)
    if parsed.local is None or len(parsed.segments) != 3:
        return None
    domain = MailDomain.objects.filter(name=parsed.segments[2]).first()
    if domain is None:
        return None
    return ensure_mailbox(domain=domain, local_part=parsed.local)


def ensure_mailboxes_for_domain(*, domain: MailDomain) -> list[Mailbox]:
    """The mailboxes of every existing grant on smtp/mail/<domain>:LOCAL, created if missing.

    For a domain created after its users were granted their mailboxes.
    """
    prefix = f"smtp/mail/{domain.name}:"
    created = []
    with transaction.atomic():
        for path in AccessGrant.objects.filter(resource__startswith=prefix).values_list(
            "resource", flat=True
        ):
            try:
                local = parse_resource(path).local
            except GrantError:
                continue
            if local is not None:
                created.append(ensure_mailbox(domain=domain, local_part=local))
    return created


def _split(address: str) -> tuple[MailDomain, str]:
    try:
        parsed = parse_address(address)
    except AddressError as exc:
        raise MailboxError(str(exc)) from None
    domain = MailDomain.objects.filter(name=parsed.domain).first()
    if domain is None:
        raise MailboxError(f"{parsed.domain} is not a local mail domain")
    return domain, parsed.local.casefold()


def mailbox_create(*, address: str) -> tuple[Mailbox, bool]:
    """Create the mailbox `address` (idempotent); returns it and whether it was new.

    Raises MailboxError for an invalid address or a domain that is not local.
    """
    domain, local = _split(address)
    with transaction.atomic():
        existed = Mailbox.objects.filter(domain=domain, local_part=local).exists()
        mailbox = ensure_mailbox(domain=domain, local_part=local)
    return mailbox, not existed


def mailbox_list(*, domain: str | None = None) -> list[Mailbox]:
    """Every mailbox (of `domain` when given, in any case or IDNA form), with its domain,
    ordered by address. Raises MailboxError when `domain` is not a domain name."""
    qs = Mailbox.objects.select_related("domain")
    if domain:
        try:
            qs = qs.filter(domain__name=normalize_host(domain))
        except DomainNameError as exc:
            raise MailboxError(str(exc)) from None
    return list(qs)


def mailbox_delete(*, address: str) -> bool:
    """Delete the mailbox `address` with its folders and filed messages; whether it existed.

    The stored message bytes stay while a queue row or another copy still refers to them.
    """
    domain, local = _split(address)
    with transaction.atomic():
        deleted, _ = Mailbox.objects.filter(domain=domain, local_part=local).delete()
    return bool(deleted)


def mailbox_usage(mailbox_id: int) -> int:
    """Bytes stored in all folders of the mailbox: what its quota limits (RFC 9208 STORAGE)."""
    return Message.objects.filter(folder__mailbox_id=mailbox_id).aggregate(total=Sum("size"))["total"] or 0


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    """A size as the console takes it: bytes, or with a K, M, G or T suffix (1024-based);
    `none` or `off` for no limit. Raises MailboxError for anything else."""
    value = text.strip().upper().removesuffix("B")
    if value in ("NONE", "OFF"):
        return None
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "")
    if not number.isdigit():
        raise MailboxError(f"invalid size {text!r} (bytes, or a number with K, M, G or T; none for no limit)")
    return int(number) * _UNITS[unit]


def mailbox_find(*, address: str) -> Mailbox:
    """The mailbox `address`. Raises MailboxError for an invalid address, a domain that is not
    local or no such mailbox."""
    domain, local = _split(address)
    mailbox = Mailbox.objects.select_related("domain").filter(domain=domain, local_part=local).first()
    if mailbox is None:
        raise MailboxError(f"no mailbox {address}")
    return mailbox


def mailbox_set(*, address: str, quota: int | None) -> Mailbox:
    """Set the quota of the mailbox `address` (bytes; None: no limit).

    Raises MailboxError for an invalid address, a domain that is not local or no such mailbox.
    """
    mailbox = mailbox_find(address=address)
    mailbox.quota = quota
    mailbox.save(update_fields=["quota"])
    return mailbox
