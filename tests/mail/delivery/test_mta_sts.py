"""Outbound MTA-STS (RFC 8461): the remote domain's policy served over HTTPS on loopback, its
TXT record by the local DNS server, its MX by aiosmtpd with a certificate from a private CA
(valid for the MX name, or for another name)."""

from __future__ import annotations

import http.server
import logging
import socket
import ssl
import threading
from datetime import timedelta

import pytest
from delivery_world import queue_message, remote_for
from django.utils import timezone

from mail.delivery.attempts import claim
from mail.delivery.batch import deliver_claims
from mail.delivery.mta_sts import Policy, PolicyError, PolicyFetcher, parse_policy, parse_txt, policy_for
from mail.models import Message, MtaStsPolicy, OutboundDelivery, OutboundRecipient, TlsResult
from mail.services.storage import read_content
from mail.smtp.extensions import EnvelopeParams, MailParams
from tests.certificates import PrivateCA

RAW = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHello Bob.\r\n"
ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.net\r\nmax_age: 86400\r\n"
TESTING = ENFORCE.replace("enforce", "testing")


class PolicyServer:
    """https://mta-sts.example.net/.well-known/mta-sts.txt on 127.0.0.1 (ephemeral port):
    `body`, `status` and `content_type` are what it answers; `requests` counts them."""

    def __init__(self, context: ssl.SSLContext):
        self.body, self.status, self.content_type = ENFORCE, 200, "text/plain"
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.headers["Host"], self.path))
                body = owner.body.encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(body)))
                if owner.status in (301, 302):
                    self.send_header("Location", "https://elsewhere.example.net/")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _server_context(issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    return context


@pytest.fixture
def world(tmp_path, sender, dns_server, sink):
    """The remote domain example.net: MX mx.example.net (127.0.0.1), its `_mta-sts` TXT
    (id 1), the policy server; `mx(valid=True)` starts its MX with a certificate for
    mx.example.net (or, with valid=False, for another name)."""
    ca = PrivateCA(tmp_path / "ca")
    policy_server = PolicyServer(_server_context(ca.issue("policy", ["mta-sts.example.net"])))
    dns_server.zone.add("example.net", "MX", "10 mx.example.net.")
    dns_server.zone.add("mx.example.net", "A", "127.0.0.1")
    dns_server.zone.add("mta-sts.example.net", "A", "127.0.0.1")
    dns_server.zone.add("_mta-sts.example.net", "TXT", '"v=STSv1; id=1"')

    class World:
        pass

    w = World()
    w.ca, w.dns, w.policy = ca, dns_server, policy_server

    def mx(valid: bool = True):
        name = "mx.example.net" if valid else "other.example.org"
        return sink(tls=True, tls_context=_server_context(ca.issue(f"mx-{valid}", [name])))

    def remote(port: int):
        base = remote_for(dns_server, port)
        fetcher = PolicyFetcher(resolver=base.resolver, port=policy_server.port, ca_file=str(ca.ca_file))
        return type(base)(
            resolver=base.resolver, port=port, tls_verify=False, ca_file=str(ca.ca_file), mta_sts=fetcher
        )

    def deliver(rows, port):
        deliver_claims(claim(ids=[r.id for r in rows]), remote=remote(port))

    w.mx, w.remote, w.deliver = mx, remote, deliver
    yield w
    policy_server.stop()


def results():
    return sorted(
        TlsResult.objects.values_list("domain", "policy_type", "policy_id", "mx_host", "result", "count")
    )


def test_enforce_delivers_over_verified_tls_to_a_host_the_policy_names(world):
    mx = world.mx(valid=True)
    world.deliver(queue_message(["bob@example.net"], raw=RAW), mx.port)
    assert [(r.tls, r.data) for r in mx.received] == [(True, RAW)]
    assert OutboundDelivery.objects.get().status == "delivered"
    assert world.policy.requests == [("mta-sts.example.net", "/.well-known/mta-sts.txt")]
    policy = MtaStsPolicy.objects.get()
    assert (policy.domain, policy.policy_id, policy.mode, policy.mx_patterns, policy.max_age) == (
        "example.net",
        "1",
        "enforce",
        ["mx.example.net"],
        86400,
    )
    assert results() == [("example.net", "sts", "1", "mx.example.net", "success", 1)]


def test_enforce_refuses_a_certificate_for_another_name_then_bounces_at_expiry(world):
    mx = world.mx(valid=False)
    rows = queue_message(["bob@example.net"], raw=RAW)
    world.deliver(rows, mx.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, mx.received) == ("queued", [])
    assert row.last_reply.startswith("451 4.4.1 mx.example.net [127.0.0.1]: certificate: ")
    assert "Hostname mismatch" in row.last_reply
    assert results() == [("example.net", "sts", "1", "mx.example.net", "certificate-host-mismatch", 1)]

    # Still refused at the last attempt: the message bounces as any undeliverable one does.
    OutboundDelivery.objects.filter(id=row.id).update(
        next_attempt_at=timezone.now(), expires_at=timezone.now() + timedelta(seconds=1)
    )
    world.deliver(rows, mx.port)
    row.refresh_from_db()
    assert (row.status, mx.received) == ("failed", [])
    [dsn] = [read_content(m.content) for m in Message.objects.filter(folder__name="inbox")]
    assert b"Action: failed" in dsn and b"certificate" in dsn
    # The cached policy served the second attempt.
    assert len(world.policy.requests) == 1


def test_enforce_does_not_dial_a_host_the_policy_does_not_name(world):
    mx = world.mx(valid=True)
    world.dns.zone.records["example.net."]["MX"] = ["10 mx.example.org."]
    world.dns.zone.add("mx.example.org", "A", "127.0.0.1")
    world.deliver(queue_message(["bob@example.net"], raw=RAW), mx.port)
    row = OutboundDelivery.objects.get()
    assert (row.status, mx.handler.connections) == ("queued", 0)
    assert (
        row.last_reply
        == "451 4.7.5 MTA-STS policy of example.net names none of its MX hosts (mx.example.org)"
    )
    assert results() == [("example.net", "sts", "1", "mx.example.org", "validation-failure", 1)]


def test_testing_mode_delivers_and_logs_what_enforce_would_refuse(world, caplog):
    world.policy.body = TESTING
    mx = world.mx(valid=False)
    with caplog.at_level(logging.WARNING, logger="mail.delivery"):
        world.deliver(queue_message(["bob@example.net"], raw=RAW), mx.port)
    assert [(r.tls, r.data) for r in mx.received] == [(True, RAW)]
    assert OutboundDelivery.objects.get().status == "delivered"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "MTA-STS policy of example.net (testing) not met, delivering anyway: "
        "mx.example.net [127.0.0.1]: certificate:"
    )
    # The failed verification and the session that delivered.
    assert results() == [
        ("example.net", "sts", "1", "mx.example.net", "certificate-host-mismatch", 1),
        ("example.net", "sts", "1", "mx.example.net", "success", 1),
    ]


def test_requiretls_goes_to_an_mx_validated_by_mta_sts(world):
    # RFC 8689 section 4.2.1: with EVERLOCK_SMTP_TLS_VERIFY off, an MX the domain's MTA-STS
    # policy names, reached over verified TLS, may take a REQUIRETLS message.
    peer = RequireTLSPeer(_server_context(world.ca.issue("mx", ["mx.example.net"])))
    params = EnvelopeParams(mail=MailParams(requiretls=True))
    world.deliver(queue_message(["bob@example.net"], raw=RAW, params=params), peer.port)
    peer.thread.join(10)
    assert OutboundRecipient.objects.get().status == "delivered"
    assert peer.tls is True
    assert [line for line in peer.lines if line.startswith(b"MAIL")] == [
        b"MAIL FROM:<alice@example.com> BODY=8BITMIME REQUIRETLS"
    ]


def test_policy_cache_follows_the_txt_id(world):
    fetcher = world.remote(25).mta_sts
    resolver = fetcher.resolver
    assert policy_for("example.net", resolver=resolver, fetcher=fetcher).policy.mode == "enforce"
    # Cached: the same id fetches nothing.
    world.policy.body = TESTING
    assert policy_for("example.net", resolver=resolver, fetcher=fetcher).policy.mode == "enforce"
    # The TXT record gone (perhaps by an attacker): the cached policy stays in force.
    del world.dns.zone.records["_mta-sts.example.net."]
    assert policy_for("example.net", resolver=resolver, fetcher=fetcher).policy.mode == "enforce"
    assert len(world.policy.requests) == 1
    # A new id: fetched again.
    world.dns.zone.add("_mta-sts.example.net", "TXT", '"v=STSv1; id=2"')
    found = policy_for("example.net", resolver=resolver, fetcher=fetcher)
    assert (found.policy.mode, found.policy.policy_id) == ("testing", "2")
    assert len(world.policy.requests) == 2
    # A fetch that fails keeps the cached policy, and says why.
    world.dns.zone.records["_mta-sts.example.net."]["TXT"] = ['"v=STSv1; id=3"']
    world.policy.status = 302
    found = policy_for("example.net", resolver=resolver, fetcher=fetcher)
    assert (found.policy.policy_id, found.failure, found.advertised_id) == (
        "2",
        "sts-policy-fetch-error",
        "3",
    )
    assert found.message == "mta-sts.example.net answered HTTP 302"
    # An expired policy is not used.
    MtaStsPolicy.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert policy_for("example.net", resolver=resolver, fetcher=fetcher).policy is None


def test_policy_fetch_refuses_what_rfc_8461_refuses(world):
    fetcher = world.remote(25).mta_sts
    world.policy.content_type = "text/html"
    with pytest.raises(PolicyError, match="sent text/html media type, not text/plain"):
        fetcher.fetch("example.net")
    world.policy.content_type = "text/plain; charset=utf-8"
    assert fetcher.fetch("example.net") == ENFORCE
    # A certificate from a CA we do not trust.
    untrusted = PolicyFetcher(resolver=fetcher.resolver, port=fetcher.port, ca_file="")
    with pytest.raises(PolicyError) as exc:
        untrusted.fetch("example.net")
    assert exc.value.result == "sts-webpki-invalid"


def test_no_txt_record_means_no_policy(world):
    del world.dns.zone.records["_mta-sts.example.net."]
    mx = world.mx(valid=False)
    world.deliver(queue_message(["bob@example.net"], raw=RAW), mx.port)
    assert len(mx.received) == 1 and world.policy.requests == []
    assert results() == [("example.net", "no-policy-found", "", "mx.example.net", "success", 1)]


def test_parse_policy_and_txt():
    assert parse_policy(ENFORCE) == ("enforce", ("mx.example.net",), 86400)
    assert parse_policy(
        "version: STSv1\nmode: testing\nmx: *.example.net\nmx: MX.example.org.\nmax_age: 604800\n"
    ) == (
        "testing",
        ("*.example.net", "mx.example.org"),
        604800,
    )
    with pytest.raises(PolicyError, match="invalid max_age"):
        parse_policy("version: STSv1\nmode: testing\nmx: a.example.net\nmax_age: -1\n")
    with pytest.raises(PolicyError, match="invalid policy mode 'strict'"):
        parse_policy("version: STSv1\nmode: strict\nmx: a.example.net\nmax_age: 1\n")
    # Mode none needs no mx; max_age is capped at a year (section 3.2).
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 99999999\n") == ("none", (), 31557600)
    with pytest.raises(PolicyError, match="policy version is not STSv1"):
        parse_policy("mode: enforce\nmx: a.example.net\nmax_age: 1\n")
    assert parse_txt(["v=STSv1; id=20160831085700Z"]) == "20160831085700Z"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc;"]) == "abc"
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: none (section 3.1)
    assert parse_txt(["v=STSv1; id=not-alnum"]) is None
    policy = Policy("example.net", "1", "enforce", ("*.example.net", "mx.example.org"), 1)
    assert [
        policy.matches(h) for h in ("a.example.net", "a.b.example.net", "example.net", "MX.example.org.")
    ] == [
        True,
        False,
        False,
        True,
    ]


class RequireTLSPeer:
    """One SMTP session on 127.0.0.1 offering STARTTLS (with `context`) and REQUIRETLS, as a
    peer that passes the requirement on would; records the command lines it read."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lines: list[bytes] = []
        self.tls = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        reader = conn.makefile("rb")
        conn.sendall(b"220 mx.example.net ESMTP\r\n")
        while line := reader.readline():
            line = line.rstrip(b"\r\n")
            self.lines.append(line)
            verb = line.split(b" ")[0].upper()
            if verb == b"EHLO":
                offer = b"250-REQUIRETLS\r\n" if self.tls else b"250-STARTTLS\r\n"
                conn.sendall(b"250-mx.example.net\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"STARTTLS":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                conn = self.context.wrap_socket(conn, server_side=True)
                reader = conn.makefile("rb")
                self.tls = True
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                while reader.readline() not in (b".\r\n", b""):
                    pass
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                break
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")
        conn.close()
        self.listener.close()


def test_a_policy_that_cannot_be_fetched_is_reported_and_mail_goes_as_without_one(world):
    world.policy.status = 404
    mx = world.mx(valid=True)
    world.deliver(queue_message(["bob@example.net"], raw=RAW), mx.port)
    assert len(mx.received) == 1
    assert results() == [
        ("example.net", "no-policy-found", "", "mx.example.net", "success", 1),
        ("example.net", "sts", "1", "", "sts-policy-fetch-error", 1),
    ]
