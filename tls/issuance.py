"""One ACME order (RFC 8555 section 7.4) with the `acme` library: names in, chain and key out.

Each name is proved by dns-01 (a TXT record at _acme-challenge.NAME, section 8.4) when its
zone is hosted here and this installation serves DNS, else by http-01 (section 8.3: the
token answered at http://NAME/.well-known/acme-challenge/TOKEN by the HTTP listener,
tls.middleware). What an order publishes is withdrawn when it ends, whatever the outcome.
No database transaction is held while the CA is talked to.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from dataclasses import dataclass

import josepy
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.db import IntegrityError

from dns_zones.services import (
    RecordSpec,
    ZoneError,
    hosted_zone_for,
    replace_derived_records,
    withdraw_derived_records,
)
from tls.models import AcmeAccount, HTTPChallenge

log = logging.getLogger("tls")

# How long an order may take, authorizations and finalization together.
ORDER_TIMEOUT = datetime.timedelta(seconds=120)
# The TTL of the _acme-challenge TXT records: short, they live for one order.
CHALLENGE_TTL = 60
# DNS servers in other processes pick a zone change up by polling the database every 0.05 s
# (dns_zones.server.listener.POLL_INTERVAL): wait a few of those before asking the CA to look.
DNS_SETTLE = 0.5


class AcmeError(Exception):
    """An order that failed; the message says which name and why (the CA's words)."""


@dataclass(frozen=True)
class AcmeSettings:
    """Where certificates come from (EVERLOCK_ACME_*) and whether hosted zones are served."""

    directory: str
    email: str
    ca_file: str = ""
    dns_hosted: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.directory and self.email)

    @classmethod
    def from_settings(cls) -> AcmeSettings:
        from django.conf import settings

        return cls(
            directory=settings.EVERLOCK_ACME_DIRECTORY,
            email=settings.EVERLOCK_ACME_EMAIL,
            ca_file=settings.EVERLOCK_ACME_CA_FILE,
            dns_hosted=settings.EVERLOCK_DNS,
        )


@dataclass(frozen=True)
class Issued:
    chain_pem: str
    key_pem: str
    # The challenge type that proved each name this order had to prove.
    challenges: dict[str, str]


def _new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _network(acme: AcmeSettings, key: josepy.JWKEC, account=None) -> client.ClientNetwork:
    return client.ClientNetwork(
        key,
        account=account,
        alg=josepy.ES256,
        verify_ssl=acme.ca_file or True,
        user_agent="Everlock",
    )


def account_client(acme: AcmeSettings) -> client.ClientV2:
    """A client signed in with this directory's account, registered on first use."""
    account = AcmeAccount.objects.filter(directory=acme.directory).first()
    if account is not None:
        key = josepy.JWKEC.load(account.key_pem.encode())
        regr = messages.RegistrationResource(uri=account.uri, body=messages.Registration())
        net = _network(acme, key, regr)
        acme_client = client.ClientV2(client.ClientV2.get_directory(acme.directory, net), net)
        if account.email != acme.email:
            # EVERLOCK_ACME_EMAIL changed: the CA writes to the new address from now on.
            acme_client.update_registration(regr, messages.Registration.from_data(email=acme.email))
            AcmeAccount.objects.filter(id=account.id).update(email=acme.email)
            log.info("ACME account at %s: contact changed to %s", acme.directory, acme.email)
        return acme_client
    key_pem = _new_key_pem()
    key = josepy.JWKEC.load(key_pem)
    net = _network(acme, key)
    acme_client = client.ClientV2(client.ClientV2.get_directory(acme.directory, net), net)
    regr = acme_client.new_account(
        messages.NewRegistration.from_data(email=acme.email, terms_of_service_agreed=True)
    )
    # When another process registered at the same moment, its account is used from now on.
    with contextlib.suppress(IntegrityError):
        AcmeAccount.objects.create(
            directory=acme.directory, email=acme.email, key_pem=key_pem.decode(), uri=regr.uri
        )
    log.info("ACME account registered at %s for %s", acme.directory, acme.email)
    return acme_client


@dataclass
class _Published:
    name: str
    kind: str  # "dns-01" or "http-01"
    token: str = ""

    def withdraw(self) -> None:
        if self.kind == "dns-01":
            withdraw_derived_records(source=_dns_source(self.name))
        else:
            HTTPChallenge.objects.filter(token=self.token).delete()


def _dns_source(name: str) -> str:
    return f"acme:{name}"


def _validation_name(name: str) -> str:
    # A wildcard is proved at the name it covers (RFC 8555 section 8.4).
    return "_acme-challenge." + name.removeprefix("*.")


def _pick(authz: messages.Authorization, name: str, acme: AcmeSettings) -> messages.ChallengeBody:
    offered = {type(c.chall): c for c in authz.challenges}
    if (
        acme.dns_hosted
        and challenges.DNS01 in offered
        and hosted_zone_for(_validation_name(name)) is not None
    ):
        return offered[challenges.DNS01]
    if challenges.HTTP01 in offered and not name.startswith("*."):
        return offered[challenges.HTTP01]
    raise AcmeError(
        f"{name}: no challenge Everlock can answer (dns-01 needs the zone hosted here with "
        f"--backend-dns-dns; http-01 needs a name without a wildcard)"
    )


def _publish(challb: messages.ChallengeBody, name: str, key: josepy.JWK) -> _Published:
    validation = challb.validation(key)
    if isinstance(challb.chall, challenges.DNS01):
        record = RecordSpec(
            name=_validation_name(name), rtype="TXT", ttl=CHALLENGE_TTL, data=f'"{validation}"'
        )
        replace_derived_records(source=_dns_source(name), records=[record])
        return _Published(name, "dns-01")
    token = challb.chall.encode("token")
    HTTPChallenge.objects.update_or_create(token=token, defaults={"key_authorization": validation})
    return _Published(name, "http-01", token)


def _describe(exc: Exception) -> str:
    if isinstance(exc, errors.ValidationError):
        reasons = []
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    reasons.append(
                        f"{authzr.body.identifier.value} ({challb.chall.typ}): {challb.error.detail}"
                    )
        return "; ".join(reasons) or str(exc)
    if isinstance(exc, messages.Error):
        return exc.detail or exc.description or str(exc)
    return str(exc)


def order_certificate(names: list[str], *, acme: AcmeSettings) -> Issued:
    """Obtain a certificate for `names` (normal form, the first is the subject) from
    acme.directory: a new P-256 key, a CSR (acme.crypto_util.make_csr), one challenge per
    name, then the chain. Raises AcmeError with the CA's reason on any failure."""
    published: list[_Published] = []
    try:
        acme_client = account_client(acme)
        key_pem = _new_key_pem()
        order = acme_client.new_order(crypto_util.make_csr(key_pem, names))
        answers = []
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # proved recently; the CA reuses the authorization
            # A wildcard's authorization names the domain with wildcard=true (RFC 8555 7.1.4).
            name = ("*." if authzr.body.wildcard else "") + authzr.body.identifier.value
            challb = _pick(authzr.body, name, acme)
            published.append(_publish(challb, name, acme_client.net.key))
            answers.append(challb)
        if any(p.kind == "dns-01" for p in published):
            time.sleep(DNS_SETTLE)
        for challb in answers:
            acme_client.answer_challenge(challb, challb.response(acme_client.net.key))
        deadline = datetime.datetime.now() + ORDER_TIMEOUT
        order = acme_client.poll_and_finalize(order, deadline)
    except (errors.Error, messages.Error, requests.RequestException, josepy.errors.Error, ZoneError) as exc:
        raise AcmeError(f"{', '.join(names)}: {_describe(exc)}") from None
    finally:
        for item in published:
            item.withdraw()
    return Issued(
        chain_pem=order.fullchain_pem,
        key_pem=key_pem.decode(),
        challenges={item.name: item.kind for item in published},
    )
