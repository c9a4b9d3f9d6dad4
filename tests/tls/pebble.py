"""Pebble, Let's Encrypt's ACME test server (Debian package `pebble`), on loopback.

Each Pebble gets a CA and an HTTPS certificate for 127.0.0.1 generated here, its own ports,
the DNS server it must ask (`-dnsserver`: the installation's hosted DNS) and the port it
fetches http-01 answers from (`httpPort`: the installation's HTTP listener).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_ports


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_https_pair(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1 and localhost: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Everlock test ACME CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


class Pebble:
    """A running pebble; `directory` is its ACME directory URL, `ca_file` the CA of its HTTPS."""

    def __init__(self, directory: Path, *, dns_port: int, http_port: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert, key = write_https_pair(directory)
        self.port, self.management_port, tls_port = free_ports(3)
        config = directory / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": http_port,
                        "tlsPort": tls_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.log_path = directory / "pebble.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.directory, verify=str(self.ca_file), timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("pebble did not start:\n" + self.log) from None
                time.sleep(0.1)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def roots(self) -> list[x509.Certificate]:
        """The roots pebble issues under (generated at its start; not trusted anywhere else)."""
        pem = requests.get(
            f"https://127.0.0.1:{self.management_port}/roots/0", verify=str(self.ca_file), timeout=5
        ).content
        return x509.load_pem_x509_certificates(pem)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
