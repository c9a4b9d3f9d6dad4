"""DKIM keys: generation, loading, and the public-key TXT record value.

Pure: no Django. Keys are PKCS#8 PEM text (what the domain TOML file and the database hold).
Ed25519 keys follow RFC 8463, RSA keys RFC 6376 with 2048 bits (RFC 8301 section 3.2 requires
at least 1024 for verifiers and recommends 2048 for signers).
"""

from __future__ import annotations

import base64
import functools
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

RSA_BITS = 2048
MIN_RSA_BITS = 1024

# A selector is one or more DNS labels (RFC 6376 section 3.1); we keep them to host-name
# characters plus "_" so they are safe in a TXT owner name.
_SELECTOR = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


class DKIMKeyError(ValueError):
    """A DKIM key or selector that cannot be used; the message says why."""


def _pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def generate_ed25519_pem() -> str:
    """A new Ed25519 private key as PKCS#8 PEM."""
    return _pem(ed25519.Ed25519PrivateKey.generate())


def generate_rsa_pem() -> str:
    """A new RSA-2048 private key (public exponent 65537) as PKCS#8 PEM."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))


@functools.lru_cache(maxsize=256)
def load_private_key(pem: str) -> ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey:
    """Parse PEM text into a private key; cached by the PEM text, since parsing an RSA key
    (and its consistency checks) costs more than signing with it.

    Raises DKIMKeyError for text that is not an unencrypted Ed25519 or RSA private key, or an
    RSA key shorter than 1024 bits (RFC 8301 section 3.2).
    """
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm) as exc:
        raise DKIMKeyError(f"not a PEM private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DKIMKeyError(f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DKIMKeyError(f"unsupported key type {type(key).__name__}; DKIM keys are Ed25519 or RSA")


def check_ed25519_pem(pem: str) -> None:
    """Raise DKIMKeyError unless `pem` is an Ed25519 private key."""
    if not isinstance(load_private_key(pem), ed25519.Ed25519PrivateKey):
        raise DKIMKeyError("expected an Ed25519 private key")


def check_rsa_pem(pem: str) -> None:
    """Raise DKIMKeyError unless `pem` is an RSA private key of at least 1024 bits."""
    if not isinstance(load_private_key(pem), rsa.RSAPrivateKey):
        raise DKIMKeyError("expected an RSA private key")


def check_selector(selector: str) -> str:
    """Return `selector` (lowercased) if it is a valid selector; else DKIMKeyError."""
    if not isinstance(selector, str) or not _SELECTOR.match(selector.lower()):
        raise DKIMKeyError(f"invalid selector {selector!r}")
    return selector.lower()


def txt_value(pem: str) -> str:
    """The DKIM key record (RFC 6376 section 3.6.1) for the private key `pem`.

    RSA: `v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo DER>`; Ed25519 (RFC 8463 section 4):
    `v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte public key>`.
    """
    key = load_private_key(pem)
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def txt_presentation(value: str) -> str:
    """`value` as TXT record data in zone-file presentation format: one quoted string.

    The DNS server splits strings longer than 255 octets on the wire (RFC 6376 section
    3.6.2.2 has verifiers join them back); the value holds no quote or backslash.
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
