"""The /mail console group: mail domains."""

from __future__ import annotations

from django.conf import settings
from django.db.models import TextChoices
from django.utils import timezone

from mail.delivery.resolver import make_resolver
from mail.models import MailDomain
from mail.services import dkim_rotation
from mail.services import domains as services
from mail.services.dns_status import check_domain, zone_lines
from mail.services.domains import DomainError
from sshadmin.commands import CommandError, command


def _on(value: bool) -> str:
    return "on" if value else "off"


def _errors(fn):
    """Turn a refused domain change into a console error line."""

    def wrapper(ctx, *args):
        try:
            return fn(ctx, *args)
        except DomainError as exc:
            raise CommandError(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@command("/mail domains create", usage="/mail domains create DOMAIN", summary="add a local mail domain")
@_errors
def domains_create(ctx, name: str) -> str:
    return "\n".join(services.domain_create(name=name).notes)


@command(
    "/mail domains set",
    usage="/mail domains set DOMAIN KEY=VALUE...",
    summary="change a domain: submission=on|off auth=on|off dkim=on|off hostname=FQDN enabled=on|off "
    "postmaster=LOCAL dmarc=none|quarantine|reject reports=ADDRESS mta-sts=enforce|testing|none",
)
@_errors
def domains_set(ctx, name: str, *pairs: str) -> str:
    return "\n".join(services.domain_set(name=name, **parse_settings(pairs)).notes)


def _on_off(key: str, value: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise CommandError(f"{key}={value}: the value must be on or off")
    return value.lower() == "on"


def _auth(key: str, value: str) -> MailDomain.SubmissionAuth:
    return MailDomain.SubmissionAuth.AUTHENTICATED if _on_off(key, value) else MailDomain.SubmissionAuth.NONE


def _choice(choices: type[TextChoices]):
    def parse(key: str, value: str) -> TextChoices:
        if value.lower() not in choices.values:
            raise CommandError(f"{key}={value}: the value must be one of {', '.join(choices.values)}")
        return choices(value.lower())

    return parse


def _text(key: str, value: str) -> str:
    return value


# Console key -> (keyword of mail.services.domains.domain_set, parser of the value's text).
SETTINGS = {
    "submission": ("submission_enabled", _on_off),
    "auth": ("submission_auth", _auth),
    "dkim": ("dkim_enabled", _on_off),
    "hostname": ("outbound_hostname", _text),
    "enabled": ("enabled", _on_off),
    "postmaster": ("postmaster", _text),
    "dmarc": ("dmarc_policy", _choice(MailDomain.DmarcPolicy)),
    "reports": ("report_address", _text),
    "mta-sts": ("mta_sts_mode", _choice(MailDomain.MtaStsMode)),
}


def parse_settings(pairs: tuple[str, ...]) -> dict[str, object]:
    """Turn "key=value" words into domain_set's keyword arguments. Raises CommandError for a
    malformed, unknown or repeated key or a value the key does not take."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"expected key=value, got {pair!r}")
        key = key.lower()
        if key not in SETTINGS:
            raise CommandError(f"unknown setting {key!r} (keys: {', '.join(SETTINGS)})")
        keyword, parse = SETTINGS[key]
        if keyword in out:
            raise CommandError(f"{key} given twice")
        out[keyword] = parse(key, value)
    return out


@command("/mail domains list", usage="/mail domains list", summary="list the local mail domains")
@_errors
def domains_list(ctx) -> str:
    rows = [("DOMAIN", "ENABLED", "SUBMISSION", "AUTH", "DKIM", "HOSTNAME")]
    for d in services.domain_list():
        rows.append(
            (
                d.name,
                _on(d.enabled),
                _on(d.submission_enabled),
                d.submission_auth,
                _on(d.dkim_enabled),
                d.outbound_hostname or f"{d.effective_hostname} (default)",
            )
        )
    if len(rows) == 1:
        return "no mail domains"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows
    )


@command(
    "/mail domains show",
    usage="/mail domains show DOMAIN",
    summary="print a domain's config file (private keys left out) and its DKIM records",
)
@_errors
def domains_show(ctx, name: str) -> str:
    domain = services.get_domain(name)
    lines = [services.domain_text(domain.name).rstrip("\n")]
    records = services.dkim_records(domain)
    if records:
        lines.append("")
        lines.append("# DKIM key records")
        lines.extend(f"# {r.zone_line()}" for r in records)
    rotation = dkim_rotation.rotation_state(domain)
    if rotation:
        lines.append(f"# DKIM key rotation: {rotation}")
    return "\n".join(lines)


@command(
    "/mail domains dkim rotate",
    usage="/mail domains dkim rotate DOMAIN",
    summary="publish new DKIM keys; signing moves to them once visible for their TTL, old keys retire",
)
@_errors
def domains_dkim_rotate(ctx, name: str) -> str:
    return "\n".join(dkim_rotation.rotation_start(name=name, now=timezone.now()).notes)


@command("/mail domains delete", usage="/mail domains delete DOMAIN", summary="remove a local mail domain")
@_errors
def domains_delete(ctx, name: str) -> str:
    normal = services.get_domain(name).name
    services.domain_delete(name=normal)
    return f"mail domain {normal} deleted"


@command(
    "/mail domains import",
    usage="/mail domains import DOMAIN",
    summary="read an edited everlock-mail/domains/DOMAIN.toml back",
)
@_errors
def domains_import(ctx, name: str) -> str:
    return "\n".join(services.domain_import(name=name).notes)


@command(
    "/mail domains records",
    usage="/mail domains records DOMAIN",
    summary="print every DNS record the domain needs, as zone-file lines to publish",
)
@_errors
def domains_records(ctx, name: str) -> str:
    domain = services.get_domain(name)
    return "\n".join([f"; DNS records of mail domain {domain.name}", *zone_lines(domain)])


@command(
    "/mail domains check",
    usage="/mail domains check DOMAIN",
    summary="look up the domain's DNS records through the resolver; say what is missing or different",
)
@_errors
def domains_check(ctx, name: str) -> str:
    domain = services.get_domain(name)
    try:
        resolver = make_resolver(settings.EVERLOCK_RESOLVER, timeout=3, lifetime=6)
    except ValueError as exc:
        raise CommandError(f"EVERLOCK_RESOLVER: {exc}") from None
    results = check_domain(domain, resolver=resolver)
    lines = []
    for r in results:
        line = f"{r.status.upper():9} {r.rtype:6} {r.name}"
        if r.status == "different":
            line += f": found {' | '.join(r.seen)}"
        if r.fix:
            line += f"\n          {r.fix}"
        lines.append(line)
    bad = sum(1 for r in results if r.status != "ok")
    lines.append(
        f"all {len(results)} records of {domain.name} are published"
        if not bad
        else f"{bad} of {len(results)} records of {domain.name} need attention"
    )
    return "\n".join(lines)
