"""The /mail domains console commands, called through the command registry as the console does."""

from __future__ import annotations

import pytest

from dns_zones.models import Record
from mail.models import MailDomain
from sshadmin.commands import CommandError
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    return tmp_path


def test_product_doc_walkthrough_with_hosted_dns(settings, data_dir):
    settings.EVERLOCK_DNS = True
    run("/dns zones create example.com")
    assert run("/mail domains create example.com") == (
        "mail domain example.com created\n"
        "outbound hostname mail.example.com\n"
        "DKIM on: Ed25519 key (selector default) and RSA-2048 key (selector default-rsa)\n"
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com\n"
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com\n"
        "MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig records published in hosted zone example.com"
        " (/mail domains records example.com lists them)"
    )
    assert (
        run("/mail domains set example.com submission=on auth=on") == "mail domain example.com: submission=on"
    )
    assert run("/mail domains list") == (
        "DOMAIN       ENABLED  SUBMISSION  AUTH           DKIM  HOSTNAME\n"
        "example.com  on       on          authenticated  on    mail.example.com"
    )
    assert run("/mail domains set example.com dkim=off") == (
        "mail domain example.com: dkim=off\n"
        "DKIM off for example.com: signing stopped, DKIM TXT records withdrawn"
    )
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 0
    on = run("/mail domains set example.com dkim=on")
    assert on.splitlines()[0] == "mail domain example.com: dkim=on"
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 2
    assert (
        run("/mail domains set example.com hostname=mail.example.com") == "mail domain example.com unchanged"
    )

    d = MailDomain.objects.get()
    shown = run("/mail domains show example.com")
    assert "PRIVATE KEY" not in shown
    assert shown.startswith(
        "enabled = true\n\n"
        '[submission]\nenabled = true\nauth = "authenticated"\n\n'
        '[outbound]\nhostname = "mail.example.com"\n\n'
        '[outbound.dkim]\nenabled = true\nselector = "default"\nrsa_selector = "default-rsa"\n\n'
        "# DKIM key records\n"
        "# default._domainkey.example.com. 3600 IN TXT "
    )
    rsa = _rsa_value(d)
    assert shown.endswith(f'# default-rsa._domainkey.example.com. 3600 IN TXT "{rsa[:255]}" "{rsa[255:]}"')

    file_text = (data_dir / "everlock-mail/domains/example.com.toml").read_text()
    assert f'rsa_private_key_pem = """\n{d.dkim_rsa_private_key_pem}"""\n' in file_text


def _rsa_value(d: MailDomain) -> str:
    from mail.dkim.keys import txt_value

    return txt_value(d.dkim_rsa_private_key_pem)


def test_guidance_without_hosted_dns(settings):
    settings.EVERLOCK_DNS = False
    out = run("/mail domains create example.com")
    assert out == (
        "mail domain example.com created\n"
        "DKIM off: the DNS backend is not active here (EVERLOCK_DNS)\n"
        "to host the zone here: /dns zones create example.com (with EVERLOCK_DNS=on), "
        "then /mail domains set example.com dkim=on\n"
        "or run /mail domains set example.com dkim=on and publish the TXT records it prints "
        "with your DNS provider\n"
        "the other records the domain needs: /mail domains records example.com prints them, "
        "/mail domains check example.com checks them"
    )
    assert run("/mail domains list") == (
        "DOMAIN       ENABLED  SUBMISSION  AUTH           DKIM  HOSTNAME\n"
        "example.com  on       off         authenticated  off   mail.example.com (default)"
    )
    lines = run("/mail domains set example.com dkim=on").splitlines()
    assert lines[1] == (
        "the DNS backend is not active here (EVERLOCK_DNS); "
        "publish these TXT records with the zone's DNS provider:"
    )
    assert lines[2].startswith('  default._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=')
    assert lines[3].startswith(
        '  default-rsa._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=rsa; p=MIIBIjAN'
    )


def test_errors_are_one_line_and_change_nothing(settings):
    settings.EVERLOCK_DNS = False
    run("/mail domains create example.com")
    for line, message in [
        ("/mail domains create bad..name", "invalid domain name 'bad..name'"),
        ("/mail domains set example.com submission=on colour=blue", "unknown setting 'colour'"),
        ("/mail domains set example.com submission=on auth=maybe", "auth=maybe: the value must be on or off"),
        ("/mail domains set example.com submission", "expected key=value, got 'submission'"),
        ("/mail domains set example.com auth=on auth=off", "auth given twice"),
        ("/mail domains set example.com AUTH=on auth=off", "auth given twice"),
        (
            "/mail domains set example.com submission=on dmarc=sometimes",
            "dmarc=sometimes: the value must be one of none, quarantine, reject",
        ),
        ("/mail domains set example.com submission=on hostname=bad..host", "hostname: invalid domain name"),
        ("/mail domains set example.com submission=on reports=nobody", "reports: invalid address 'nobody'"),
        ("/mail domains set example.net submission=on", "no mail domain example.net"),
        ("/mail domains show example.net", "no mail domain example.net"),
        ("/mail domains delete example.net", "no mail domain example.net"),
        ("/mail domains import example.net", "no such file"),
    ]:
        with pytest.raises(CommandError) as exc:
            run(line)
        assert message in str(exc.value)
        assert "\n" not in str(exc.value)
    d = MailDomain.objects.get()
    assert (d.submission_enabled, d.submission_auth) == (False, "authenticated")
    with pytest.raises(CommandError, match="missing arguments"):
        run("/mail domains set example.com")


def test_set_turns_every_key_into_its_typed_setting(settings):
    settings.EVERLOCK_DNS = False
    run("/mail domains create example.com")
    assert run(
        "/mail domains set example.com Submission=ON auth=off hostname=MX.Example.com enabled=off "
        "postmaster=Hostmaster dmarc=Reject reports=dmarc@example.com mta-sts=Enforce"
    ) == (
        "mail domain example.com: enabled=off submission=on auth=off hostname=mx.example.com "
        "postmaster=hostmaster dmarc=reject reports=dmarc@example.com mta-sts=enforce"
    )
    d = MailDomain.objects.get()
    assert (
        d.submission_enabled,
        d.submission_auth,
        d.outbound_hostname,
        d.enabled,
        d.postmaster,
        d.dmarc_policy,
        d.report_address,
        d.mta_sts_mode,
    ) == (True, "none", "mx.example.com", False, "hostmaster", "reject", "dmarc@example.com", "enforce")


def test_import_and_delete(settings, data_dir):
    settings.EVERLOCK_DNS = False
    run("/mail domains create example.com")
    path = data_dir / "everlock-mail/domains/example.com.toml"
    path.write_text(path.read_text().replace("[submission]\nenabled = false", "[submission]\nenabled = true"))
    assert run("/mail domains import example.com") == (
        f"mail domain example.com imported from {path}\nmail domain example.com: submission=on"
    )
    assert MailDomain.objects.get().submission_enabled is True
    path.write_text("enabled = \n")
    with pytest.raises(CommandError, match=r"not valid TOML: .*\(at line 1, column 11\)"):
        run("/mail domains import example.com")
    assert run("/mail domains delete Example.com") == "mail domain example.com deleted"
    assert not path.exists()
    assert run("/mail domains list") == "no mail domains"


def test_dkim_rotate_publishes_new_keys_and_show_tells_the_state(settings, data_dir):
    settings.EVERLOCK_DNS = True
    run("/dns zones create example.com")
    run("/mail domains create example.com")
    out = run("/mail domains dkim rotate example.com").splitlines()
    day = out[0].split("selectors ")[1].split(" ")[0]
    assert out == [
        f"DKIM key rotation of example.com started: new keys under selectors {day} (Ed25519) "
        f"and {day}-rsa (RSA)",
        "signing stays with default and default-rsa until the new records have been visible through the "
        "resolver for their TTL (3600 s)",
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com",
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com",
        f"DKIM TXT published in hosted zone example.com: {day}._domainkey.example.com",
        f"DKIM TXT published in hosted zone example.com: {day}-rsa._domainkey.example.com",
    ]
    shown = run("/mail domains show example.com")
    assert f'[outbound.dkim.rotation]\nstate = "publishing"\nselector = "{day}"\n' in shown
    assert shown.endswith(
        f"# DKIM key rotation: publishing new keys {day}, {day}-rsa: not yet visible through the resolver"
    )
    assert shown.count("IN TXT") == 4
    with pytest.raises(CommandError, match=r"a DKIM key rotation of example\.com is in progress"):
        run("/mail domains dkim rotate example.com")


def test_dkim_rotate_for_a_zone_hosted_elsewhere_prints_the_records(settings, data_dir):
    settings.EVERLOCK_DNS = False
    run("/mail domains create example.com")
    with pytest.raises(CommandError, match=r"DKIM is off for example\.com"):
        run("/mail domains dkim rotate example.com")
    run("/mail domains set example.com dkim=on")
    out = run("/mail domains dkim rotate example.com").splitlines()
    assert out[2] == (
        "the DNS backend is not active here (EVERLOCK_DNS); "
        "publish these TXT records with the zone's DNS provider:"
    )
    assert [line.split(". ")[0].strip() for line in out[3:]] == [
        "default._domainkey.example.com",
        "default-rsa._domainkey.example.com",
        f"{out[0].split('selectors ')[1].split(' ')[0]}._domainkey.example.com",
        f"{out[0].split('selectors ')[1].split(' ')[0]}-rsa._domainkey.example.com",
    ]
    assert all(' 3600 IN TXT "v=DKIM1; k=' in line for line in out[3:])
