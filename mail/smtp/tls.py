"""The STARTTLS certificate: the configured pair, or a self-signed one made once."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_pair(*, directory: Path, hostname: str) -> tuple[Path, Path]:
    """cert.pem and key.pem in `directory`, generated for `hostname` when missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Write to temporary names and rename: two processes starting at once both end with
    # a matching pair.
    suffix = f".{os.getpid()}.tmp"
    key_tmp, cert_tmp = key_path.with_suffix(suffix + "k"), cert_path.with_suffix(suffix + "c")
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(key_tmp, key_path)
    os.replace(cert_tmp, cert_path)
    return cert_path, key_path


def certificate_file(*, cert: str, key: str, data_dir: Path) -> Path:
    """The certificate (chain) file server_context serves for these settings: `cert`, or the
    self-signed one in data_dir/tls/ (which may not exist before a listener made it)."""
    return Path(cert) if cert and key else data_dir / "tls" / "cert.pem"


def certificate_expiry(path: Path) -> tuple[str, datetime.datetime]:
    """(name, not-after) of the first certificate in the PEM file `path`: the name is its
    first DNS subject alternative name, else its common name.

    Raises OSError when the file cannot be read, ValueError when it holds no certificate.
    """
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        name = names.get_values_for_type(x509.DNSName)[0]
    except (x509.ExtensionNotFound, IndexError):
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(common[0].value) if common else ""
    return name, certificate.not_valid_after_utc


def server_context(*, cert: str, key: str, data_dir: Path, hostname: str) -> ssl.SSLContext:
    """A server SSLContext from `cert`/`key`, or the self-signed pair in data_dir/tls/."""
    if not cert or not key:
        cert_path, key_path = self_signed_pair(directory=data_dir / "tls", hostname=hostname)
        cert, key = str(cert_path), str(key_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
