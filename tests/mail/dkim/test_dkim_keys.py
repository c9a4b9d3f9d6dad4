"""DKIM keys: generation, loading checks, selectors and the public TXT value."""

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mail.dkim.keys import (
    DKIMKeyError,
    check_ed25519_pem,
    check_rsa_pem,
    check_selector,
    generate_ed25519_pem,
    generate_rsa_pem,
    load_private_key,
    txt_presentation,
    txt_value,
)


def _pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_generated_keys_and_their_records():
    ed, rs = generate_ed25519_pem(), generate_rsa_pem()
    assert ed.startswith("-----BEGIN PRIVATE KEY-----\n") and ed.endswith("-----END PRIVATE KEY-----\n")
    assert load_private_key(rs).key_size == 2048
    assert load_private_key(rs) is load_private_key(rs)  # parsed once, cached by PEM
    ed_value = txt_value(ed)
    assert ed_value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_value.split("p=")[1])) == 32  # RFC 8463 section 4: raw key
    rsa_value = txt_value(rs)
    assert rsa_value.startswith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA")
    assert len(rsa_value) > 255
    assert txt_presentation(rsa_value) == f'"{rsa_value}"'
    check_ed25519_pem(ed)
    check_rsa_pem(rs)
    with pytest.raises(DKIMKeyError, match="expected an RSA private key"):
        check_rsa_pem(ed)
    with pytest.raises(DKIMKeyError, match="expected an Ed25519 private key"):
        check_ed25519_pem(rs)


def test_unusable_keys_are_refused():
    with pytest.raises(DKIMKeyError, match=r"^not a PEM private key"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    # RFC 8301 section 3.2: 1024 bits is the smallest RSA key a verifier accepts.
    assert (
        load_private_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))).key_size
        == 1024
    )
    with pytest.raises(DKIMKeyError, match=r"^unsupported key type"):
        load_private_key(_pem(ec.generate_private_key(ec.SECP256R1())))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [("default", "default"), ("Default-RSA", "default-rsa"), ("2026.jan", "2026.jan"), ("s_1", "s_1")],
)
def test_valid_selectors(selector, expected):
    assert check_selector(selector) == expected


@pytest.mark.parametrize("selector", ["", "bad selector", "-x", "x-", "a..b", "x" * 64, 'q"', 5])
def test_invalid_selectors(selector):
    with pytest.raises(DKIMKeyError, match=r"^invalid selector"):
        check_selector(selector)
