"""The HTTPS listener, fetched with curl: the MTA-STS policy of a mail domain (RFC 8461
section 3.3), Thunderbird's autoconfig file, the admin; and `everlock serve
--frontend-https-listen`."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from xml.etree import ElementTree

import pytest

from everlock_site.https import start_https
from everlock_site.listen import ListenAddress
from mail.models import MailDomain
from mail.services.dns_records import mta_sts_id, mta_sts_policy
from mail.services.domains import domain_create, domain_set, get_domain
from tests.certificates import PrivateCA
from tests.everlock_site.test_http_listener import base_env, running
from tests.log_lines import without_time
from tests.ports import free_port
from tls.store import CertificateStore


class RunningHTTPS:
    """start_https() on its own event loop in a thread of the test process."""

    def __init__(self, context):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_https(listens={"https": ListenAddress("127.0.0.1", 0)}, context=context), self.loop
        )
        self.listener = future.result(timeout=30)
        self.port = self.listener.address.port

    def stop(self):
        self.listener.close()
        asyncio.run_coroutine_threadsafe(self.listener.wait_closed(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def https(tmp_path, settings, transactional_db):
    ca = PrivateCA(tmp_path / "ca")
    names = ["mta-sts.example.com", "autoconfig.example.com", "autodiscover.example.com", "localhost"]
    issued = ca.issue("web", names)
    settings.DATA_DIR = tmp_path
    # The store the listeners share, with the test CA's certificate as its default.
    store = CertificateStore(
        cert_file=str(issued.cert), key_file=str(issued.key), data_dir=tmp_path, hostname="localhost"
    )
    server = RunningHTTPS(store.context)
    server.ca = ca
    yield server
    server.stop()


def curl(server, host: str, path: str, *extra: str) -> tuple[str, str]:
    """GET https://host:port/path through curl (verifying against the test CA, `host`
    resolved to 127.0.0.1); returns (response head, body)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(server.ca.ca_file), "-D", "-",
         "--resolve", f"{host}:{server.port}:127.0.0.1", *extra, f"https://{host}:{server.port}{path}"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    return head, body


def test_mta_sts_policy_is_served_for_the_domains_policy_host(https):
    domain_create(name="example.com")
    head, body = curl(https, "mta-sts.example.com", "/.well-known/mta-sts.txt")
    assert head.startswith("HTTP/1.1 200 OK")
    assert "Content-Type: text/plain; charset=utf-8" in head.splitlines()
    assert body == "version: STSv1\r\nmode: testing\r\nmx: mail.example.com\r\nmax_age: 604800\r\n"
    old_id = mta_sts_id(body)

    domain_set(
        name="example.com", mta_sts_mode=MailDomain.MtaStsMode.ENFORCE, outbound_hostname="mx.example.com"
    )
    _, body = curl(https, "mta-sts.example.com", "/.well-known/mta-sts.txt")
    assert body == "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 604800\r\n"
    # The id published in the _mta-sts TXT record moves with the policy.
    assert mta_sts_id(body) == mta_sts_id(mta_sts_policy(get_domain("example.com"))) != old_id

    domain_set(name="example.com", mta_sts_mode=MailDomain.MtaStsMode.NONE)
    head, _ = curl(https, "mta-sts.example.com", "/.well-known/mta-sts.txt")
    assert head.startswith("HTTP/1.1 404")


def test_no_policy_for_other_names_or_unknown_domains(https):
    domain_create(name="example.com")
    # Only the policy host of a local mail domain has one; the certificate names localhost too.
    head, body = curl(https, "localhost", "/.well-known/mta-sts.txt")
    assert head.startswith("HTTP/1.1 404") and body == "no MTA-STS policy here\n"
    head, _ = curl(
        https, "mta-sts.example.com", "/.well-known/mta-sts.txt", "-H", "Host: mta-sts.example.net"
    )
    assert head.startswith("HTTP/1.1 404")


def test_autoconfig_names_the_imap_and_submission_servers(https):
    domain_create(name="example.com")
    domain_set(name="example.com", submission_enabled=True)
    for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
        head, body = curl(https, "autoconfig.example.com", path)
        assert head.startswith("HTTP/1.1 200 OK"), path
        assert "Content-Type: application/xml; charset=utf-8" in head.splitlines()
        provider = ElementTree.fromstring(body).find("emailProvider")
        assert provider.get("id") == "example.com"
        assert provider.findtext("domain") == "example.com"
        servers = [
            (s.tag, s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"))
            for s in provider
            if s.tag.endswith("Server")
        ]
        assert servers == [
            ("incomingServer", "imap", "mail.example.com", "993", "SSL"),
            ("incomingServer", "imap", "mail.example.com", "143", "STARTTLS"),
            ("outgoingServer", "smtp", "mail.example.com", "465", "SSL"),
            ("outgoingServer", "smtp", "mail.example.com", "587", "STARTTLS"),
        ]
        assert {s.findtext("username") for s in provider if s.tag.endswith("Server")} == {"%EMAILADDRESS%"}
    # Thunderbird also asks any host with the address it is setting up.
    _, body = curl(https, "localhost", "/mail/config-v1.1.xml?emailaddress=alice%40example.com")
    assert ElementTree.fromstring(body).find("emailProvider").get("id") == "example.com"
    head, _ = curl(https, "localhost", "/mail/config-v1.1.xml?emailaddress=alice%40example.net")
    assert head.startswith("HTTP/1.1 404")
    head, _ = curl(https, "localhost", "/mail/config-v1.1.xml?emailaddress=not-an-address")
    assert head.startswith("HTTP/1.1 400")


AUTODISCOVER_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>alice@example.com</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""


def test_outlook_autodiscover_names_the_servers(https):
    domain_create(name="example.com")
    domain_set(name="example.com", submission_enabled=True)
    post = ("-X", "POST", "-H", "Content-Type: text/xml")
    head, body = curl(
        https,
        "autodiscover.example.com",
        "/autodiscover/autodiscover.xml",
        *post,
        "--data-binary",
        AUTODISCOVER_REQUEST,
    )
    assert head.startswith("HTTP/1.1 200 OK")
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    account = ElementTree.fromstring(body).find("r:Response/r:Account", ns)
    assert account.findtext("r:Action", namespaces=ns) == "settings"
    protocols = [
        tuple(p.findtext(f"r:{tag}", namespaces=ns) for tag in ("Type", "Server", "Port", "LoginName", "SSL"))
        for p in account.findall("r:Protocol", ns)
    ]
    assert protocols == [
        ("IMAP", "mail.example.com", "993", "alice@example.com", "on"),
        ("SMTP", "mail.example.com", "465", "alice@example.com", "on"),
    ]
    # Another domain's address, a request that is not XML, a GET: refused.
    other = AUTODISCOVER_REQUEST.replace("example.com<", "example.net<")
    assert curl(
        https, "autodiscover.example.com", "/autodiscover/autodiscover.xml", *post, "--data-binary", other
    )[0].startswith("HTTP/1.1 404")
    assert curl(
        https, "autodiscover.example.com", "/autodiscover/autodiscover.xml", *post, "--data-binary", "x"
    )[0].startswith("HTTP/1.1 400")
    assert curl(https, "autodiscover.example.com", "/autodiscover/autodiscover.xml")[0].startswith(
        "HTTP/1.1 405"
    )


def test_the_admin_is_served_over_https(https):
    head, _ = curl(https, "localhost", "/")
    assert head.startswith("HTTP/1.1 302") and "Location: /login/?next=/" in head.splitlines()
    head, body = curl(https, "localhost", "/login/")
    assert head.startswith("HTTP/1.1 200 OK")
    assert "<title>Log in | Everlock</title>" in body


def test_serve_starts_the_https_frontend(tmp_path):
    ca = PrivateCA(tmp_path / "ca")
    issued = ca.issue("web", ["localhost"])
    env = base_env(
        tmp_path,
        EVERLOCK_LOG="warning,everlock=info,everlock_site.http=info",
        EVERLOCK_TLS_CERT=str(issued.cert),
        EVERLOCK_TLS_KEY=str(issued.key),
    )
    port = free_port()
    with running(["serve", "--frontend-https-listen", f"127.0.0.1:{port}"], env) as process:
        lines = [without_time(process.stderr.readline()) for _ in range(3)]
        assert lines == [
            "[INFO everlock] starting frontend-https",
            f"[INFO everlock_site.http] frontend-https: binding HTTPS listener on 127.0.0.1:{port}",
            f"[INFO everlock_site.http] HTTPS listener on 127.0.0.1:{port}",
        ]
        result = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca.ca_file),
             f"https://localhost:{port}/login/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.stdout == "200", result.stderr
    assert process.returncode == 0


def test_the_policy_is_never_served_over_plain_http(client, settings, tmp_path, transactional_db):
    # RFC 8461 section 3.3: a policy fetched without HTTPS must not be used; none is offered.
    settings.DATA_DIR = tmp_path
    domain_create(name="example.com")
    plain = client.get("/.well-known/mta-sts.txt", HTTP_HOST="mta-sts.example.com")
    assert plain.status_code == 404
    secure = client.get("/.well-known/mta-sts.txt", HTTP_HOST="mta-sts.example.com", secure=True)
    assert (secure.status_code, secure["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert (
        client.post("/.well-known/mta-sts.txt", HTTP_HOST="mta-sts.example.com", secure=True).status_code
        == 405
    )
    # Autoconfig is plain data: clients also ask for it over HTTP.
    assert client.get("/mail/config-v1.1.xml", HTTP_HOST="autoconfig.example.com").status_code == 200
