"""Mail domains: create, change, delete, import from their TOML file; DKIM set-up.

Every change runs in one transaction and, on commit, rewrites the domain's file
everlock-mail/domains/<domain>.toml under the data dir (or removes it on delete); the database
stays the source of truth. DKIM TXT records are published as derived records of the hosted DNS
(source "mail.dkim:<domain>"), and the other records the domain needs (MX, SPF, DMARC,
MTA-STS, TLS-RPT, SRV, autoconfig: mail.services.dns_records) under "mail.dns:<domain>", when
the DNS backend is active (settings.EVERLOCK_DNS) and the domain lies in a hosted zone;
otherwise the result carries guidance on publishing them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, models, transaction

from dns_zones.services import RecordSpec, hosted_zone_for, replace_derived_records, withdraw_derived_records
from domain_names import DomainNameError, normalize_host
from mail import config_files
from mail.addresses import AddressError, is_valid_local_part, parse_address
from mail.config_files import ConfigFileError, DomainConfig, RotationConfig
from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem, txt_presentation, txt_value
from mail.models import DkimRotation, MailDomain
from mail.services.dns_records import derived_records, dns_source
from mail.services.mailboxes import ensure_mailboxes_for_domain

log = logging.getLogger("mail.domains")

DKIM_TTL = 3600


class DomainError(ValueError):
    """A mail domain change that is refused (bad name, unknown domain, bad setting)."""


@dataclass(frozen=True)
class DkimRecord:
    """A DKIM key record: owner name and TXT value (unquoted)."""

    name: str
    value: str

    def zone_line(self) -> str:
        """The record as a zone-file line to publish with another DNS provider. A
        character-string holds at most 255 octets (RFC 1035 section 3.3), so a longer value
        (an RSA key) is written as several strings, which verifiers join (RFC 6376 section
        3.6.2.2)."""
        strings = [self.value[i : i + 255] for i in range(0, len(self.value), 255)]
        return f"{self.name}. {DKIM_TTL} IN TXT " + " ".join(txt_presentation(s) for s in strings)


@dataclass
class DomainChange:
    """What a service call did: the domain, whether anything changed, and lines to show."""

    domain: MailDomain
    changed: bool
    notes: list[str] = field(default_factory=list)


def dkim_source(name: str) -> str:
    return f"mail.dkim:{name}"


def dkim_records(domain: MailDomain) -> list[DkimRecord]:
    """The TXT records matching the domain's keys (Ed25519 first), whether DKIM is on or not,
    then those of the other keys of a key rotation in progress (mail.services.dkim_rotation)."""
    out = []
    keys = [
        (domain.dkim_selector, domain.dkim_private_key_pem),
        (domain.dkim_rsa_selector, domain.dkim_rsa_private_key_pem),
    ]
    rotation = DkimRotation.objects.filter(domain_id=domain.pk).first() if domain.pk else None
    if rotation is not None:
        keys += [
            (rotation.selector, rotation.private_key_pem),
            (rotation.rsa_selector, rotation.rsa_private_key_pem),
        ]
    for selector, pem in keys:
        if pem:
            out.append(DkimRecord(f"{selector}._domainkey.{domain.name}", txt_value(pem)))
    return out


def _normal_name(name: str) -> str:
    try:
        return normalize_host(name)
    except DomainNameError as exc:
        raise DomainError(str(exc)) from None


def get_domain(name: str) -> MailDomain:
    """The mail domain `name` (any case or IDNA form). Raises DomainError if there is none."""
    normal = _normal_name(name)
    try:
        return MailDomain.objects.get(name=normal)
    except MailDomain.DoesNotExist:
        raise DomainError(f"no mail domain {normal}") from None


def domain_list() -> list[MailDomain]:
    return list(MailDomain.objects.order_by("name"))


def domain_text(name: str) -> str:
    """The domain's TOML as in its file, with the private key fields left out."""
    return config_files.render(DomainConfig.from_domain(get_domain(name)), private_keys=False)


def _dns_hosts(name: str) -> bool:
    return bool(settings.EVERLOCK_DNS) and hosted_zone_for(name) is not None


def sync_file_on_commit(name: str) -> None:
    data_dir = settings.DATA_DIR

    def sync() -> None:
        domain = MailDomain.objects.filter(name=name).first()
        if domain is None:
            config_files.remove(data_dir, name)
        else:
            config_files.write(data_dir, DomainConfig.from_domain(domain))

    transaction.on_commit(sync)


def _publish_dns(domain: MailDomain) -> list[str]:
    """Publish the domain's records other than DKIM (dns_records) in its hosted zone, or
    withdraw them when it is not hosted here; return notes."""
    source = dns_source(domain.name)
    if not _dns_hosts(domain.name):
        withdraw_derived_records(source=source)
        return []
    replace_derived_records(source=source, records=[r.spec for r in derived_records(domain)])
    zone = hosted_zone_for(domain.name)
    return [
        f"MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig records published in hosted zone "
        f"{zone.origin} (/mail domains records {domain.name} lists them)"
    ]


def publish_dkim_records(domain: MailDomain) -> list[str]:
    """Publish or withdraw the domain's DKIM records to match its state; return notes."""
    source = dkim_source(domain.name)
    records = dkim_records(domain)
    if domain.dkim_enabled and _dns_hosts(domain.name):
        replace_derived_records(
            source=source,
            records=[RecordSpec(r.name, "TXT", DKIM_TTL, txt_presentation(r.value)) for r in records],
        )
        zone = hosted_zone_for(domain.name)
        return [f"DKIM TXT published in hosted zone {zone.origin}: {r.name}" for r in records]
    withdraw_derived_records(source=source)
    if not domain.dkim_enabled:
        return []
    return [
        _why_not_hosted(domain.name) + "; publish these TXT records with the zone's DNS provider:",
        *(f"  {r.zone_line()}" for r in records),
    ]


def _why_not_hosted(name: str) -> str:
    if not settings.EVERLOCK_DNS:
        return "the DNS backend is not active here (EVERLOCK_DNS)"
    return f"the DNS zone of {name} is not hosted here"


def new_dkim_keys() -> tuple[str, str]:
    """Fresh keys for a domain that may need them; generated outside any transaction (RSA
    generation takes a while and must not hold the database's write lock)."""
    return generate_ed25519_pem(), generate_rsa_pem()


def _enable_dkim(domain: MailDomain, keys: tuple[str, str] | None) -> None:
    if not domain.dkim_private_key_pem or not domain.dkim_rsa_private_key_pem:
        ed, rsa = keys or new_dkim_keys()
        domain.dkim_private_key_pem = domain.dkim_private_key_pem or ed
        domain.dkim_rsa_private_key_pem = domain.dkim_rsa_private_key_pem or rsa
    domain.dkim_enabled = True


def domain_create(*, name: str) -> DomainChange:
    """Create the local mail domain `name`; an existing domain is returned unchanged.

    When the DNS backend is active and a hosted zone contains the domain, DKIM is set up:
    outbound hostname mail.<domain>, an Ed25519 and an RSA-2048 key, signing on, TXT records
    published. Otherwise DKIM stays off and the notes say how to set it up.
    Raises DomainError for an invalid name.
    """
    normal = _normal_name(name)
    existing = MailDomain.objects.filter(name=normal).first()
    if existing is not None:
        return DomainChange(existing, False, [f"mail domain {normal} exists"])
    keys = new_dkim_keys() if _dns_hosts(normal) else None
    with transaction.atomic():
        domain, created = MailDomain.objects.get_or_create(name=normal)
        if not created:
            return DomainChange(domain, False, [f"mail domain {normal} exists"])
        notes = [f"mail domain {normal} created"]
        if _dns_hosts(normal):
            domain.outbound_hostname = domain.outbound_hostname or f"mail.{normal}"
            _enable_dkim(domain, keys)
            domain.save()
            notes.append(f"outbound hostname {domain.outbound_hostname}")
            notes.append("DKIM on: Ed25519 key (selector default) and RSA-2048 key (selector default-rsa)")
            notes.extend(publish_dkim_records(domain))
            notes.extend(_publish_dns(domain))
        else:
            notes.extend(
                [
                    f"DKIM off: {_why_not_hosted(normal)}",
                    f"to host the zone here: /dns zones create {normal}"
                    + ("" if settings.EVERLOCK_DNS else " (with EVERLOCK_DNS=on)")
                    + f", then /mail domains set {normal} dkim=on",
                    f"or run /mail domains set {normal} dkim=on and publish the TXT records it prints"
                    " with your DNS provider",
                    f"the other records the domain needs: /mail domains records {normal} prints them,"
                    f" /mail domains check {normal} checks them",
                ]
            )
        # Users granted mailboxes of this domain before it existed get them now.
        boxes = ensure_mailboxes_for_domain(domain=domain)
        if boxes:
            notes.append("mailboxes from existing grants: " + ", ".join(b.address for b in boxes))
        sync_file_on_commit(normal)
    log.info("mail domain %s created", normal)
    return DomainChange(domain, True, notes)


def _checked_hostname(value: str) -> str:
    try:
        return normalize_host(value)
    except DomainNameError as exc:
        raise DomainError(f"hostname: {exc}") from None


def _checked_postmaster(value: str) -> str:
    if value and not is_valid_local_part(value):
        raise DomainError(f"postmaster: invalid local part {value!r}")
    return value.casefold()


def _checked_reports(value: str) -> str:
    try:
        return str(parse_address(value)) if value else ""
    except AddressError as exc:
        raise DomainError(f"reports: {exc}") from None


def _checked_choice(value: str, choices: type[models.TextChoices], key: str) -> str:
    if value not in choices.values:
        raise DomainError(f"{key}={value}: the value must be one of {', '.join(choices.values)}")
    return value


def domain_set(
    *,
    name: str,
    enabled: bool | None = None,
    submission_enabled: bool | None = None,
    submission_auth: MailDomain.SubmissionAuth | None = None,
    dkim_enabled: bool | None = None,
    outbound_hostname: str | None = None,
    postmaster: str | None = None,
    dmarc_policy: MailDomain.DmarcPolicy | None = None,
    report_address: str | None = None,
    mta_sts_mode: MailDomain.MtaStsMode | None = None,
) -> DomainChange:
    """Apply the settings given (None leaves one as it is) to domain `name`, all or none.

    `outbound_hostname` is the EHLO host name; `postmaster` a local part of this
    domain whose mailbox takes postmaster@ mail ("": the first admin's); `report_address`
    where DMARC and TLS-RPT reports go ("": postmaster@); `dmarc_policy` the published DMARC
    policy and `mta_sts_mode` the MTA-STS policy served. The domain's derived DNS records are
    brought up to date. dkim_enabled=True generates missing keys and publishes the TXT
    records (or says what to publish elsewhere); False stops signing and withdraws them.
    Idempotent. Raises DomainError for an unknown domain or an invalid value (nothing
    changes then).
    """
    if outbound_hostname is not None:
        outbound_hostname = _checked_hostname(outbound_hostname)
    if postmaster is not None:
        postmaster = _checked_postmaster(postmaster)
    if report_address is not None:
        report_address = _checked_reports(report_address)
    if dmarc_policy is not None:
        dmarc_policy = _checked_choice(dmarc_policy, MailDomain.DmarcPolicy, "dmarc")
    if mta_sts_mode is not None:
        mta_sts_mode = _checked_choice(mta_sts_mode, MailDomain.MtaStsMode, "mta-sts")
    if submission_auth is not None:
        submission_auth = _checked_choice(submission_auth, MailDomain.SubmissionAuth, "auth")
    wanted = {
        "enabled": enabled,
        "submission_enabled": submission_enabled,
        "submission_auth": submission_auth,
        "outbound_hostname": outbound_hostname,
        "postmaster": postmaster,
        "dmarc_policy": dmarc_policy,
        "report_address": report_address,
        "mta_sts_mode": mta_sts_mode,
    }
    wanted = {field: value for field, value in wanted.items() if value is not None}
    current = get_domain(name)
    keys = None
    if dkim_enabled and not (current.dkim_private_key_pem and current.dkim_rsa_private_key_pem):
        keys = new_dkim_keys()
    with transaction.atomic():
        domain = MailDomain.objects.select_for_update().get(id=current.id)
        before = DomainConfig.from_domain(domain)
        for field_name, value in wanted.items():
            setattr(domain, field_name, value)
        if dkim_enabled is True:
            _enable_dkim(domain, keys)
        elif dkim_enabled is False:
            domain.dkim_enabled = False
            # Keys that no longer sign need no rotation.
            DkimRotation.objects.filter(domain=domain).delete()
        after = DomainConfig.from_domain(domain)
        changed = after != before
        if changed:
            domain.save()
            sync_file_on_commit(domain.name)
        notes = [_change_line(domain.name, before, after)]
        # Quietly: the records follow the settings just changed (the hostname, submission,
        # DMARC, MTA-STS); /mail domains records lists them.
        _publish_dns(domain)
        if dkim_enabled is not None:
            notes.extend(publish_dkim_records(domain))
            if not domain.dkim_enabled:
                notes.append(f"DKIM off for {domain.name}: signing stopped, DKIM TXT records withdrawn")
    if changed:
        log.info("mail domain %s changed: %s", domain.name, notes[0].partition(": ")[2])
    return DomainChange(domain, changed, notes)


def _on(value: bool) -> str:
    return "on" if value else "off"


def _change_line(name: str, before: DomainConfig, after: DomainConfig) -> str:
    parts = []
    if before.enabled != after.enabled:
        parts.append(f"enabled={_on(after.enabled)}")
    if before.submission_enabled != after.submission_enabled:
        parts.append(f"submission={_on(after.submission_enabled)}")
    if before.submission_auth != after.submission_auth:
        parts.append(f"auth={_on(after.submission_auth == 'authenticated')}")
    if before.outbound_hostname != after.outbound_hostname:
        parts.append(f"hostname={after.outbound_hostname}")
    if before.postmaster != after.postmaster:
        parts.append(f"postmaster={after.postmaster}")
    if before.dmarc_policy != after.dmarc_policy:
        parts.append(f"dmarc={after.dmarc_policy}")
    if before.report_address != after.report_address:
        parts.append(f"reports={after.report_address}")
    if before.mta_sts_mode != after.mta_sts_mode:
        parts.append(f"mta-sts={after.mta_sts_mode}")
    if before.dkim_enabled != after.dkim_enabled:
        parts.append(f"dkim={_on(after.dkim_enabled)}")
    if (before.dkim_private_key_pem, before.dkim_rsa_private_key_pem) != (
        after.dkim_private_key_pem,
        after.dkim_rsa_private_key_pem,
    ):
        parts.append("DKIM keys generated")
    if before.dkim_selector != after.dkim_selector or before.dkim_rsa_selector != after.dkim_rsa_selector:
        parts.append(f"selectors={after.dkim_selector},{after.dkim_rsa_selector}")
    if not parts:
        return f"mail domain {name} unchanged"
    return f"mail domain {name}: " + " ".join(parts)


def domains_publish_dns() -> int:
    """Bring the derived DNS records of every mail domain up to date (after the settings they
    depend on, EVERLOCK_PUBLIC_ADDRESSES or EVERLOCK_PUBLIC_PORTS, changed); return how
    many domains there are. Idempotent: records already current are left as they are."""
    domains = list(MailDomain.objects.order_by("name"))
    for domain in domains:
        with transaction.atomic():
            _publish_dns(domain)
    return len(domains)


def domain_delete(*, name: str) -> bool:
    """Delete domain `name` with its mailboxes, withdraw its DKIM records, remove its file.

    Returns whether it existed. Raises DomainError for an invalid name.
    """
    normal = _normal_name(name)
    with transaction.atomic():
        deleted, _ = MailDomain.objects.filter(name=normal).delete()
        withdraw_derived_records(source=dkim_source(normal))
        withdraw_derived_records(source=dns_source(normal))
        sync_file_on_commit(normal)
    if deleted:
        log.info("mail domain %s deleted", normal)
    return bool(deleted)


def domain_import(*, name: str) -> DomainChange:
    """Read everlock-mail/domains/<name>.toml back into the database (creating the domain if
    needed) and publish or withdraw its DKIM records to match.

    Raises DomainError for an invalid name, or a file that is missing, does not parse or does
    not validate (the message names the line or field); then nothing changes.
    """
    normal = _normal_name(name)
    path = config_files.domain_path(settings.DATA_DIR, normal)
    try:
        config = config_files.read(path, name=normal)
    except ConfigFileError as exc:
        raise DomainError(str(exc)) from None
    return _apply_config(config, source=str(path))


def domain_import_all() -> list[DomainChange]:
    """Import every file under everlock-mail/domains/ (see domain_import), each on its own.

    Raises DomainError for the first file that fails; files before it are imported.
    """
    directory = config_files.domains_dir(settings.DATA_DIR)
    names = sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []
    return [domain_import(name=n) for n in names]


def _apply_config(config: DomainConfig, *, source: str) -> DomainChange:
    with transaction.atomic():
        domain = MailDomain.objects.select_for_update().filter(name=config.name).first()
        created = domain is None
        if created:
            domain = MailDomain(name=config.name)
        before = DomainConfig.from_domain(domain)
        for f in DomainConfig.__dataclass_fields__:
            if f != "dkim_rotation":
                setattr(domain, f, getattr(config, f))
        changed = created or before != config
        if changed:
            domain.save()
            _apply_rotation(domain, config.dkim_rotation)
        notes = [f"mail domain {config.name} imported from {source}" + ("" if changed else " (unchanged)")]
        if changed and not created:
            line = _change_line(config.name, before, config)
            notes.append(line.replace(" generated", " replaced"))
        notes.extend(publish_dkim_records(domain))
        _publish_dns(domain)
        # Rewrite the file in our canonical layout (comments or key order are not kept).
        sync_file_on_commit(config.name)
    log.info("mail domain %s imported from %s", config.name, source)
    return DomainChange(domain, changed, notes)


def _apply_rotation(domain: MailDomain, rotation: RotationConfig | None) -> None:
    """Make the domain's DKIM key rotation row what its file says (none: no rotation)."""
    if rotation is None:
        DkimRotation.objects.filter(domain=domain).delete()
        return
    DkimRotation.objects.update_or_create(
        domain=domain, defaults={f: getattr(rotation, f) for f in RotationConfig.__dataclass_fields__}
    )


def receiving_hostnames() -> dict[str, str]:
    """{mail domain: its hostname}: the authserv-id of the Authentication-Results of mail
    received for it (RFC 8601 section 2.5), the domain's outbound hostname setting."""
    close_old_connections()
    return {d.name: d.effective_hostname for d in MailDomain.objects.only("name", "outbound_hostname")}
