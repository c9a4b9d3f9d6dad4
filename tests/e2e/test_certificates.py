"""`everlock serve` obtains a certificate from Pebble through its console and its hosted DNS,
and its SMTP and IMAP listeners present it (and then its renewal) without a restart."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.e2e.installation import Everlock
from tests.ports import free_port
from tests.sshadmin.openssh import ssh_exec
from tests.tls.pebble import Pebble

pytestmark = pytest.mark.e2e


def smtp_certificate(port: int, server_name: str | None) -> x509.Certificate:
    """The certificate the SMTP listener presents after STARTTLS, read by openssl s_client."""
    args = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-showcerts"]
    args += ["-servername", server_name] if server_name else ["-noservername"]
    result = subprocess.run(args, input=b"QUIT\r\n", capture_output=True, timeout=30)
    return x509.load_pem_x509_certificates(result.stdout)[0]


def imaps_certificate(port: int, server_name: str) -> x509.Certificate:
    """The certificate the implicit-TLS IMAP listener presents, read by Python's ssl."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def issuer(cert: x509.Certificate) -> str:
    return cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def wait_for(read, until, timeout: float = 15) -> x509.Certificate:
    deadline = time.monotonic() + timeout
    while True:
        cert = read()
        if until(cert) or time.monotonic() > deadline:
            return cert
        time.sleep(0.2)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certificates")
    ports = {k: free_port() for k in ("ssh", "smtp", "http", "imaps")}
    dns = free_port(udp=True)
    pebble = Pebble(tmp / "pebble", dns_port=dns, http_port=ports["http"])
    everlock = Everlock(
        tmp / "everlock",
        EVERLOCK_LOG="tls=info",
        EVERLOCK_ACME_DIRECTORY=pebble.directory,
        EVERLOCK_ACME_EMAIL="hostmaster@example.com",
        EVERLOCK_ACME_CA_FILE=str(pebble.ca_file),
        EVERLOCK_TLS_RELOAD_INTERVAL="0.5",
    )
    try:
        everlock.start(
            [
                "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}", "--backend-admin-ssh",
                "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
                "--backend-mail-smtp",
                "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{ports['http']}",
                "--frontend-imaps-listen", f"127.0.0.1:{ports['imaps']}",
                "--backend-dns-dns", "--frontend-dns-listen", f"127.0.0.1:{dns}",
                "--admin-user", "admin", "--admin-password", "change-me",
            ],
            ssh_port=ports["ssh"],
            ready=f"IMAP listener (implicit TLS) on 127.0.0.1:{ports['imaps']}",
        )  # fmt: skip
        yield everlock, ports, pebble
    finally:
        everlock.close()
        pebble.stop()


def test_issued_and_renewed_certificates_are_presented_without_a_restart(site):
    everlock, ports, _ = site
    before = smtp_certificate(ports["smtp"], "mail.example.com")
    assert issuer(before) == "localhost"  # the self-signed pair

    everlock.console("/dns zones create example.com")
    out = everlock.console("/tls request mail.example.com")
    assert out.startswith("certificate for mail.example.com issued by Pebble Intermediate CA ")
    assert out.rstrip().endswith("proved: mail.example.com by dns-01")

    first = wait_for(lambda: smtp_certificate(ports["smtp"], "mail.example.com"), lambda c: c != before)
    assert issuer(first).startswith("Pebble Intermediate CA ")
    assert first.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mail.example.com"
    # Each listener process of serve reloads the store on its own (within 0.5 s).
    assert (
        wait_for(lambda: imaps_certificate(ports["imaps"], "mail.example.com"), lambda c: c == first) == first
    )
    # A client that names no host, or another one, still gets the default certificate.
    assert smtp_certificate(ports["smtp"], None) == before
    assert imaps_certificate(ports["imaps"], "other.example.org") == before

    listing = everlock.console("/tls list").splitlines()
    assert listing[0].split() == ["NAME", "ISSUER", "EXPIRES", "SOURCE"]
    rows = {line.split()[0]: line for line in listing[1:]}
    assert issuer(first) in rows["mail.example.com"] and rows["mail.example.com"].endswith("acme")
    assert rows["localhost"].endswith("self-signed (default)")

    # A renewal lands in the database; the running listeners switch to it.
    everlock.console("/tls request mail.example.com")
    renewed = wait_for(lambda: smtp_certificate(ports["smtp"], "mail.example.com"), lambda c: c != first)
    assert renewed.serial_number != first.serial_number
    assert issuer(renewed).startswith("Pebble Intermediate CA ")
    assert (
        wait_for(lambda: imaps_certificate(ports["imaps"], "mail.example.com"), lambda c: c == renewed)
        == renewed
    )

    # Deleted: the listeners go back to the default certificate.
    out = everlock.console("/tls delete mail.example.com")
    assert out == (
        "1 certificate(s) holding mail.example.com deleted; the listeners stop presenting them within 0.5 s\n"
    )
    back = wait_for(lambda: smtp_certificate(ports["smtp"], "mail.example.com"), lambda c: c == before)
    assert back == before


def test_console_refuses_a_bad_name(site):
    everlock, ports, _ = site
    result = ssh_exec(
        ports["ssh"], "/tls request bad_name.example.com", tmp=everlock.data_dir, password="change-me"
    )
    assert (result.returncode, result.stderr) == (
        1,
        "error: invalid host name 'bad_name.example.com': bad label 'bad_name'\n"
        "usage: /tls request NAME...\n",
    )


def test_http01_answered_by_the_serve_processs_http_listener(tmp_path, transactional_db):
    # The internet's DNS, standing in for the provider of example.net: a DNS server of this
    # test (its own database) pointing mail.example.net at 127.0.0.1. The installation serves
    # no DNS, so the name is proved over HTTP by its HTTP listener.
    from dns_zones.services import record_add, zone_create
    from tests.dns_server import RunningDNS

    zone_create(origin="example.net")
    record_add(origin="example.net", name="mail", rtype="A", data="127.0.0.1")
    internet = RunningDNS()
    ports = {k: free_port() for k in ("ssh", "smtp", "http")}
    pebble = Pebble(tmp_path / "pebble", dns_port=internet.port, http_port=ports["http"])
    everlock = Everlock(
        tmp_path / "everlock",
        EVERLOCK_ACME_DIRECTORY=pebble.directory,
        EVERLOCK_ACME_EMAIL="hostmaster@example.net",
        EVERLOCK_ACME_CA_FILE=str(pebble.ca_file),
        EVERLOCK_TLS_RELOAD_INTERVAL="0.5",
    )
    try:
        everlock.start(
            [
                "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}", "--backend-admin-ssh",
                "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
                "--backend-mail-smtp",
                "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{ports['http']}",
                "--admin-user", "admin", "--admin-password", "change-me",
            ],
            ssh_port=ports["ssh"],
            ready=f"HTTP admin listener on 127.0.0.1:{ports['http']}",
        )  # fmt: skip
        before = smtp_certificate(ports["smtp"], "mail.example.net")
        out = everlock.console("/tls request mail.example.net")
        assert out.rstrip().endswith("proved: mail.example.net by http-01")
        issued = wait_for(lambda: smtp_certificate(ports["smtp"], "mail.example.net"), lambda c: c != before)
        assert issuer(issued).startswith("Pebble Intermediate CA ")
        assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mail.example.net"
    finally:
        everlock.close()
        pebble.stop()
        internet.stop()
