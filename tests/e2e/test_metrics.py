"""/metrics of a running installation, scraped over HTTP after real traffic: SMTP (inbound
and submission, in two listener processes), outbound deliveries by the worker processes,
IMAP logins, DNS queries; the queue and the certificate read at scrape time. And the JSON
log of a running installation."""

from __future__ import annotations

import imaplib
import json
import smtplib
import subprocess
import time
import urllib.request
from datetime import UTC, datetime

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.installation import EVERLOCK, Everlock, message_from_alice, submit
from tests.mail.delivery.delivery_world import Zone, running_dns_server, running_sinks
from tests.ports import free_port
from tests.processes import terminate

pytestmark = pytest.mark.e2e


def scrape(port: int, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one GET /metrics."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, metric: str, /, **labels: str) -> float:
    """The sample `metric` with exactly `labels` (0 when the scrape has none)."""
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def wait_for(check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def inbound(port: int, recipients: list[str]) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            return client.sendmail(
                "zoe@example.net",
                recipients,
                b"From: zoe@example.net\r\nSubject: hello\r\n\r\nHi.\r\n",
            )
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    zone = Zone()
    zone.add("example.net", "MX", "10 mx.example.net.")
    zone.add("mx.example.net", "A", "127.0.0.1")
    zone.servfail.add("lost.test.")
    remote_port = free_port()
    ports = {name: free_port() for name in ("ssh", "smtp", "smtp2", "submission", "imap", "http")}
    ports["dns"] = free_port(udp=True)
    with running_dns_server(zone) as resolver, running_sinks() as start_sink:
        mx = start_sink("127.0.0.1", remote_port)
        mx.handler.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user here"
        everlock = Everlock(
            tmp_path_factory.mktemp("metrics") / "var",
            EVERLOCK_RESOLVER=resolver.spec,
            EVERLOCK_REMOTE_SMTP_PORT=str(remote_port),
        )
        second = None
        try:
            everlock.start(
                [
                    "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}",
                    "--backend-admin-ssh", "--backend-mail-smtp",
                    "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
                    "--frontend-smtp-submission",
                    "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
                    "--frontend-imap-listen", f"127.0.0.1:{ports['imap']}",
                    "--frontend-dns-listen", f"127.0.0.1:{ports['dns']}",
                    "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{ports['http']}",
                    "--admin-user", "admin", "--admin-password", "change-me",
                ],
                ssh_port=ports["ssh"],
                ready=f"HTTP admin listener on 127.0.0.1:{ports['http']}",
            )  # fmt: skip
            for line in (
                "/dns zones create example.org",
                "/dns records add example.org www A 192.0.2.80",
                "/mail domains create example.com",
                "/mail domains set example.com submission=on auth=on",
                "/users add alice change-me --allow-weak",
                "/users grant alice smtp/mail/example.com:alice writer",
            ):
                everlock.console(line)
            # A second listener process on the same data dir and database.
            second = subprocess.Popen(
                [str(EVERLOCK), "runsmtp", "--listen", f"127.0.0.1:{ports['smtp2']}"],
                cwd=everlock.data_dir,
                env=everlock.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: _listening(ports["smtp2"]))
            yield everlock, ports, mx
        finally:
            if second is not None:
                terminate(second)
            everlock.close()


def _listening(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            return client.noop()[0] == 250
    except OSError:
        return False


def test_metrics_count_traffic_across_processes(site):
    _, ports, mx = site
    # Inbound: two messages through serve's listener, one through the second process; one
    # relay refused and one unknown mailbox.
    assert inbound(ports["smtp"], ["alice@example.com"]) == {}
    assert inbound(ports["smtp"], ["alice@example.com"]) == {}
    assert inbound(ports["smtp2"], ["alice@example.com"]) == {}
    assert inbound(ports["smtp"], ["someone@example.org"]) == {
        "someone@example.org": (554, b"5.7.1 Relaying denied")
    }
    assert inbound(ports["smtp2"], ["nobody@example.com"]) == {
        "nobody@example.com": (550, b"5.1.1 Mailbox unavailable")
    }
    # Submission: one message to two remote recipients (one refused by the MX), one to a
    # domain whose DNS fails, and a MAIL without AUTH.
    assert (
        submit(
            ports["submission"],
            "alice",
            message_from_alice("Numbers", "bob@example.net, nobody@example.net"),
        )
        == {}
    )
    assert submit(ports["submission"], "alice", message_from_alice("Lost", "carol@lost.test")) == {}
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as client:
        client.ehlo()
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
    # IMAP: one good login, one bad.
    with imaplib.IMAP4("127.0.0.1", ports["imap"]) as client:
        client.login("alice", "change-me")
        client.logout()
    with imaplib.IMAP4("127.0.0.1", ports["imap"]) as client, pytest.raises(imaplib.IMAP4.error):
        client.login("alice", "wrong password")

    # Deliveries happen in the worker processes; their counts reach the scrape.
    def delivered():
        samples = scrape(ports["http"])
        done = value(samples, "everlock_deliveries_total", result="delivered") == 1
        return samples if done and value(samples, "everlock_deliveries_total", result="deferred") else None

    samples = wait_for(delivered)
    assert [r.rcpt_tos for r in mx.received] == [["bob@example.net"]]
    assert value(samples, "everlock_smtp_messages_accepted_total", listener="inbound") == 3
    assert value(samples, "everlock_smtp_messages_accepted_total", listener="submission") == 2
    refused = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "everlock_smtp_messages_refused_total"
    }
    assert refused == {
        (("command", "RCPT"), ("listener", "inbound"), ("reason", "relay_denied")): 1,
        (("command", "RCPT"), ("listener", "inbound"), ("reason", "unknown_user")): 1,
        (("command", "MAIL"), ("listener", "submission"), ("reason", "auth_required")): 1,
    }
    assert value(samples, "everlock_deliveries_total", result="failed") == 1
    assert value(samples, "everlock_imap_logins_total", result="ok") == 1
    assert value(samples, "everlock_imap_logins_total", result="failed") == 1
    assert value(samples, "everlock_imap_connections_total", listener="imap") == 2
    assert value(samples, "everlock_imap_sessions_total") == 1
    assert value(samples, "everlock_imap_sessions_closed_total") == 1
    # The undeliverable message waits in the queue (its next attempt minutes away).
    assert value(samples, "everlock_queue_size", status="queued") == 1
    assert value(samples, "everlock_queue_size", status="held") == 0
    assert 0 < value(samples, "everlock_queue_oldest_age_seconds") < 120

    # DNS: the installation's own server counts what it answers, by transport and code.
    before = scrape(ports["http"])
    # The second UDP query of www is answered from the reply remembered for the first.
    queries = (["www.example.org", "A"], ["www.example.org", "A"], ["missing.example.org", "A"])
    for args in (*queries, ["www.example.org", "A", "+tcp"]):
        subprocess.run(
            ["dig", "-p", str(ports["dns"]), "@127.0.0.1", "+norec", "+tries=1", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
    name = "everlock_dns_queries_total"
    expected = {
        (transport, rcode): value(before, name, transport=transport, rcode=rcode) + count
        for transport, rcode, count in (("udp", "NOERROR", 2), ("udp", "NXDOMAIN", 1), ("tcp", "NOERROR", 1))
    }

    def counted():
        # The DNS server hands its counts over every 0.05 s.
        after = scrape(ports["http"])
        return {key: value(after, name, transport=key[0], rcode=key[1]) for key in expected} == expected

    wait_for(counted, timeout=10)


def test_metrics_show_when_the_served_certificate_expires(site):
    everlock, ports, _ = site
    certificate = x509.load_pem_x509_certificate((everlock.data_dir / "tls" / "cert.pem").read_bytes())
    samples = scrape(ports["http"])
    expiry = value(
        samples, "everlock_tls_certificate_expiry_timestamp_seconds", name="localhost", source="self-signed"
    )
    assert expiry == certificate.not_valid_after_utc.timestamp()
    assert expiry > datetime.now(UTC).timestamp()


def test_json_log_of_a_running_installation(tmp_path):
    """With EVERLOCK_LOG_FORMAT=json every line the server and its delivery worker print, from
    start to stop, is one JSON object; a failed login carries the client and login fields."""
    ports = {name: free_port() for name in ("ssh", "submission")}
    everlock = Everlock(tmp_path / "var", EVERLOCK_LOG_FORMAT="json")
    try:
        everlock.start(
            [
                "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}",
                "--backend-admin-ssh", "--backend-mail-smtp", "--frontend-smtp-submission",
                "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
                "--admin-user", "admin", "--admin-password", "change-me",
            ],
            ssh_port=ports["ssh"],
            ready=f"SMTP submission listener on 127.0.0.1:{ports['submission']}",
        )  # fmt: skip
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as client:
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("mallory", "not the password")
        everlock.wait_for_log("authentication failed for 'mallory'")
        assert everlock.stop() == 0
    finally:
        everlock.close()
    records = [json.loads(line) for line in everlock.log_path.read_text().splitlines()]
    assert {record["logger"] for record in records} >= {"everlock", "mail.smtp", "mail.delivery"}
    assert records[-1]["message"] == "stopped"
    failed = next(r for r in records if r["message"].startswith("smtp: authentication failed for 'mallory'"))
    assert (failed["level"], failed["client"], failed["login"], failed["service"]) == (
        "WARNING",
        "127.0.0.1",
        "mallory",
        "smtp",
    )
    for record in records:
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() is not None
