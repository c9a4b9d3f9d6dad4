"""Console commands of the /tls group: the certificates the TLS listeners present."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from sshadmin.commands import CommandError, Context, command, table
from tls.issuance import AcmeSettings
from tls.services import (
    CertificateError,
    delete_certificates,
    missing_names,
    presented_certificates,
    request_certificate,
)


@command("/tls list", usage="/tls list", summary="list the TLS certificates: name, issuer, expiry, source")
def tls_list(ctx: Context) -> str:
    presented = presented_certificates(
        cert_file=settings.EVERLOCK_TLS_CERT,
        key_file=settings.EVERLOCK_TLS_KEY,
        data_dir=Path(settings.DATA_DIR),
        hostname=settings.EVERLOCK_HOSTNAME,
    )
    rows = [("NAME", "ISSUER", "EXPIRES", "SOURCE")]
    for cert in presented:
        source = cert.source + (" (default)" if cert.default else "")
        rows += [(name, cert.issuer, f"{cert.not_after:%Y-%m-%d %H:%M}", source) for name in cert.names]
    acme = AcmeSettings.from_settings()
    for name, failure in missing_names(admin_host=settings.EVERLOCK_ADMIN_HOST):
        if not acme.enabled:
            state = "none (ACME off)"
        else:
            state = f"none: {failure}" if failure else "none yet (ordered at the next check)"
        rows.append((name, "-", "-", state))
    return table(rows)


@command(
    "/tls request",
    usage="/tls request NAME...",
    summary="obtain one certificate for the names by ACME now",
)
def tls_request(ctx: Context, *names: str) -> str:
    try:
        cert = request_certificate(names=list(names), acme=AcmeSettings.from_settings())
    except CertificateError as exc:
        raise CommandError(str(exc)) from None
    proofs = ", ".join(f"{name} by {kind}" for name, kind in cert.challenges.items())
    return (
        f"certificate for {', '.join(cert.names)} issued by {cert.issuer}, "
        f"valid until {cert.not_after:%Y-%m-%d %H:%M} UTC, renewed from {cert.renew_after:%Y-%m-%d}"
        + (f"\nproved: {proofs}" if proofs else "")
    )


@command(
    "/tls delete",
    usage="/tls delete NAME",
    summary="stop presenting and renewing the certificates that hold a name",
)
def tls_delete(ctx: Context, name: str) -> str:
    try:
        deleted = delete_certificates(name=name)
    except CertificateError as exc:
        raise CommandError(str(exc)) from None
    if not deleted:
        raise CommandError(f"no certificate holds {name}")
    return (
        f"{deleted} certificate(s) holding {name} deleted; the listeners stop presenting them "
        f"within {settings.EVERLOCK_TLS_RELOAD_INTERVAL:g} s"
    )
