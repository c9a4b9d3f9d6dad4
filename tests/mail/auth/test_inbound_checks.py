"""The checks on the inbound listener: a real server on 127.0.0.1, smtplib clients sending
from 127.0.0.1 (allowed by the senders' SPF, with a PTR name that resolves back) or
127.0.0.2 (neither), and the senders' zones served by Everlock's own DNS server."""

from __future__ import annotations

import smtplib
import socket

import dkim
import pytest

from dns_zones.services import record_add, zone_create
from mail.auth import results
from mail.message import parse_message
from mail.models import Message, VacationReply
from mail.services.rules import dry_run, set_rules
from mail.services.storage import read_content
from tests.mail.auth.conftest import AUTHSERV_ID, letter, send, signed
from tests.mail.smtp.conftest import nothing_stored, start_smtp  # noqa: F401


def stored(folder: str = "inbox") -> bytes:
    message = Message.objects.get(folder__name=folder)
    return read_content(message.content)


def our_results(raw: bytes) -> list[str]:
    return [str(o) for o in results.ours(parse_message(raw).headers, AUTHSERV_ID)]


def test_signed_mail_passes_and_signatures_still_verify(checked_smtp, corpus_dns):
    raw = signed(letter("corpus.test"), corpus_dns, "corpus.test")
    assert send(checked_smtp, raw, mail_from="bounce@corpus.test") == (250, b"2.0.0 Accepted")
    got = stored()
    assert got.startswith(
        b"Return-Path: <bounce@corpus.test>\r\nAuthentication-Results: mail.example.com;\r\n\t"
    )
    assert our_results(got) == [
        "spf=pass smtp.mailfrom=corpus.test",
        "dkim=pass header.d=corpus.test header.a=ed25519-sha256 header.s=ed",
        "dkim=pass header.d=corpus.test header.a=rsa-sha256 header.s=rsa",
        "dmarc=pass header.from=corpus.test",
        "arc=none",
        "iprev=pass policy.iprev=127.0.0.1",
    ]
    # Prepended only: both signatures verify in the stored copy, by dkimpy and Mail::DKIM.
    verifier = dkim.DKIM(got)
    assert [verifier.verify(idx=i, dnsfunc=corpus_dns.server.dnsfunc) for i in (0, 1)] == [True, True]
    assert corpus_dns.server.mail_dkim_verdicts(got)[1] == "rsa-sha256 rsa pass"


def test_forged_sender_of_a_reject_domain_gets_550_and_nothing_is_stored(checked_smtp):
    reply = send(checked_smtp, letter("corpus.test"), mail_from="carol@corpus.test", source="127.0.0.2")
    assert reply == (550, b"5.7.1 Rejected by the DMARC policy of the From domain")
    assert nothing_stored()


def test_subdomain_policy_quarantine_files_into_junk(checked_smtp):
    reply = send(
        checked_smtp, letter("news.corpus.test"), mail_from="carol@news.corpus.test", source="127.0.0.2"
    )
    assert reply == (250, b"2.0.0 Accepted")
    got = stored("Junk")
    assert "dmarc=fail header.from=news.corpus.test policy.dmarc=quarantine" in our_results(got)
    assert "spf=fail smtp.mailfrom=news.corpus.test" in our_results(got)
    assert "iprev=fail policy.iprev=127.0.0.2" in our_results(got)
    assert b"dmarc=fail (p=quarantine dis=quarantine)" in got


def test_pct_zero_quarantines_instead_of_rejecting(checked_smtp):
    reply = send(checked_smtp, letter("half.test"), mail_from="carol@half.test", source="127.0.0.2")
    assert reply == (250, b"2.0.0 Accepted")
    assert b"dmarc=fail (p=reject dis=quarantine)" in stored("Junk")


def test_policy_none_is_delivered_and_marked(checked_smtp):
    reply = send(checked_smtp, letter("watch.test"), mail_from="carol@watch.test", source="127.0.0.2")
    assert reply == (250, b"2.0.0 Accepted")
    assert "dmarc=fail header.from=watch.test policy.dmarc=none" in our_results(stored())


def test_temporary_dns_failure_is_451_never_5xx(checked_smtp):
    # example.net is not served: its DMARC record cannot be had now.
    reply = send(checked_smtp, letter("mail.example.net"), mail_from="carol@mail.example.net")
    assert reply == (451, b"4.4.3 Temporary DNS failure checking the sender, try again later")
    assert nothing_stored()


def test_claims_to_our_authserv_id_are_removed_others_kept(checked_smtp, corpus_dns):
    forged = (
        "Authentication-Results: mail.example.com; spf=pass smtp.mailfrom=corpus.test; dmarc=pass\r\n"
        "Authentication-Results: mx.example.org; dkim=pass header.d=example.org\r\n"
    )
    raw = signed(letter("corpus.test"), corpus_dns, "corpus.test")
    assert send(checked_smtp, forged.encode() + raw, mail_from="bounce@corpus.test") == (
        250,
        b"2.0.0 Accepted",
    )
    got = stored()
    assert got.count(b"Authentication-Results: mail.example.com;") == 1
    assert b"Authentication-Results: mx.example.org; dkim=pass header.d=example.org\r\n" in got
    assert b"spf=pass smtp.mailfrom=corpus.test; dmarc=pass" not in got


def test_submission_is_not_checked(checked_smtp):
    with smtplib.SMTP("127.0.0.1", checked_smtp.submission_port, timeout=10) as client:
        client.login("alice", "change-me")
        client.sendmail(
            "alice@example.com", ["bob@example.com"], letter("example.com").replace(b"carol@", b"alice@")
        )
    assert b"Authentication-Results" not in stored()


@pytest.fixture
def dnsbl_smtp(corpus_dns, example_com, start_smtp, settings):  # noqa: F811
    """The inbound listener asking two DNSBLs: bl.example.net, which does not answer (not
    served here), and bl.test, hosted here, which lists 127.0.0.2."""
    zone_create(origin="bl.test")
    record_add(origin="bl.test", name="2.0.0.127", rtype="A", data="127.0.0.2")
    record_add(origin="bl.test", name="2.0.0.127", rtype="TXT", data='"127.0.0.2 is listed for testing"')
    settings.EVERLOCK_INBOUND_CHECKS = True
    settings.EVERLOCK_RESOLVER = corpus_dns.spec
    settings.EVERLOCK_DNSBL_ZONES = ["bl.example.net", "bl.test"]
    return start_smtp()


LISTED = b"554 5.7.1 Client address listed: 127.0.0.2 is listed for testing\r\n"


def test_dnsbl_listed_client_is_refused_at_the_greeting(dnsbl_smtp):
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", dnsbl_smtp.inbound_port, timeout=30, source_address=("127.0.0.2", 0))
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        554,
        b"5.7.1 Client address listed: 127.0.0.2 is listed for testing",
    )
    # A client the lists do not name is greeted and its mail taken.
    raw = letter("watch.test")
    assert send(dnsbl_smtp, raw, mail_from="carol@watch.test") == (250, b"2.0.0 Accepted")


def test_dnsbl_refused_client_gets_503_to_every_command_until_quit(dnsbl_smtp):
    with socket.create_connection(("127.0.0.1", dnsbl_smtp.inbound_port), 30, ("127.0.0.2", 0)) as client:
        reader = client.makefile("rb")
        assert reader.readline() == LISTED
        client.sendall(b"EHLO mx.corpus.test\r\nMAIL FROM:<carol@watch.test>\r\nSTARTTLS\r\n")
        assert [reader.readline() for _ in range(3)] == [
            b"503 5.7.0 Access denied, only QUIT is accepted\r\n"
        ] * 3
        client.sendall(b"QUIT\r\n")
        assert reader.readline() == b"221 2.0.0 Bye\r\n"
        assert reader.readline() == b""  # closed
    assert nothing_stored()


def test_dnsbl_refused_client_that_goes_on_is_let_go(dnsbl_smtp):
    with socket.create_connection(("127.0.0.1", dnsbl_smtp.inbound_port), 30, ("127.0.0.2", 0)) as client:
        reader = client.makefile("rb")
        assert reader.readline() == LISTED
        client.sendall(b"NOOP\r\n" * 25)
        answers = reader.read()  # up to the close
    assert (
        answers
        == b"503 5.7.0 Access denied, only QUIT is accepted\r\n" * 20
        + b"421 4.7.0 Too many errors, closing\r\n"
    )


RULES = """
[[rule]]
name = "failed dmarc"
match = { auth = "dmarc=fail" }
fileinto = "Suspicious"

[[rule]]
name = "spf pass"
match = { all = [ { spf = "pass" }, { dkim = ["pass"] } ] }
add_header = { name = "X-Checked", value = "yes" }

[[rule]]
name = "away"
scope = "bob@example.com"
vacation = { days = 1, body = "Away." }
"""


def test_rules_match_on_results_and_vacation_answers_verified_senders_only(checked_smtp, corpus_dns):
    set_rules(text=RULES)
    raw = signed(letter("corpus.test"), corpus_dns, "corpus.test")
    assert send(checked_smtp, raw, mail_from="carol@corpus.test") == (250, b"2.0.0 Accepted")
    assert send(
        checked_smtp, letter("watch.test", subject="Forged"), mail_from="carol@watch.test", source="127.0.0.2"
    ) == (
        250,
        b"2.0.0 Accepted",
    )
    good = Message.objects.get(folder__name="inbox")
    assert b"X-Checked: yes" in bytes(good.prepended_headers)
    forged = Message.objects.get(folder__name="Suspicious")
    # The vacation reply went to the sender that passed, not to the forged one.
    assert list(VacationReply.objects.values_list("sender", flat=True)) == ["carol@corpus.test"]
    # The dry run of a stored message shows the results and what the rules do with them.
    trace = dry_run(recipient="bob@example.com", message_id=forged.id).trace
    assert trace[0].startswith("authentication results: spf=fail dkim=none dmarc=fail arc=none iprev=fail")
    assert "rule 'failed dmarc' matches" in trace
    assert "  vacation: no reply (the sender carol@watch.test passed neither SPF nor DMARC)" in trace


def test_console_and_admin_show_the_results(checked_smtp, corpus_dns, client):
    from accounts.models import User
    from tests.sshadmin.commands.console import run

    raw = signed(letter("corpus.test"), corpus_dns, "corpus.test")
    assert send(checked_smtp, raw, mail_from="carol@corpus.test") == (250, b"2.0.0 Accepted")
    message = Message.objects.get()
    shown = run(f"/mail messages show {message.id}")
    assert shown.startswith(
        "checks: spf=pass smtp.mailfrom=corpus.test\n"
        "checks: dkim=pass header.d=corpus.test header.a=ed25519-sha256 header.s=ed\n"
        "checks: dkim=pass header.d=corpus.test header.a=rsa-sha256 header.s=rsa\n"
        "checks: dmarc=pass header.from=corpus.test\n"
        "checks: arc=none\n"
        "checks: iprev=pass policy.iprev=127.0.0.1\n"
        "\nReturn-Path: <carol@corpus.test>\r\n"
    )
    client.force_login(User.objects.create_superuser("root", password="x"))
    page = client.get(f"/mail/message/{message.id}/change/").content.decode()
    assert "Authentication results" in page
    assert "dmarc=pass header.from=corpus.test\narc=none\niprev=pass policy.iprev=127.0.0.1" in page


def test_an_arc_sealed_message_is_recorded_arc_pass(checked_smtp, corpus_dns):
    # A list at corpus.test received the message, recorded its results, and sealed it.
    received = b"Authentication-Results: lists.corpus.test; spf=pass smtp.mailfrom=watch.test\r\n" + letter(
        "watch.test"
    )
    seal = dkim.arc_sign(
        received, b"rsa", b"corpus.test", corpus_dns.keys.rsa_pem.encode(), b"lists.corpus.test"
    )
    raw = b"".join(seal) + received
    assert send(checked_smtp, raw, mail_from="list@corpus.test") == (250, b"2.0.0 Accepted")
    assert "arc=pass" in our_results(stored())


def test_success_reports_go_only_to_verified_senders(checked_smtp, corpus_dns):
    from mail.models import OutboundDelivery

    def send_asking_for_success(raw: bytes, sender: str, source: str) -> None:
        with smtplib.SMTP(
            "127.0.0.1", checked_smtp.inbound_port, timeout=30, source_address=(source, 0)
        ) as client:
            client.ehlo("mx.corpus.test")
            client.mail(sender)
            assert client.rcpt("bob@example.com", ["NOTIFY=SUCCESS"]) == (250, b"2.1.5 Recipient OK")
            assert client.data(raw) == (250, b"2.0.0 Accepted")

    send_asking_for_success(letter("watch.test", subject="Forged"), "carol@watch.test", "127.0.0.2")
    assert not OutboundDelivery.objects.exists()  # no backscatter to a sender that may be forged
    send_asking_for_success(
        signed(letter("corpus.test"), corpus_dns, "corpus.test"), "carol@corpus.test", "127.0.0.1"
    )
    report = OutboundDelivery.objects.get()
    assert (report.envelope_from, list(report.recipients.values_list("address", flat=True))) == (
        "",
        ["carol@corpus.test"],
    )
