"""The files mail software fetches over HTTP(S) from a mail domain's names: the MTA-STS
policy (RFC 8461 section 3.3) and Thunderbird's autoconfig file.

They are served by a middleware in front of the admin, because they are chosen by the Host
header (`mta-sts.<domain>`, `autoconfig.<domain>`), which names a mail domain rather than a
host of the admin (ALLOWED_HOSTS): the middleware answers these paths itself, for the local
mail domains only, and passes every other request on.

- https://mta-sts.<domain>/.well-known/mta-sts.txt: the domain's policy, text/plain, over
  HTTPS only (RFC 8461 section 3.3: a policy fetched otherwise must not be used).
- /mail/config-v1.1.xml and /.well-known/autoconfig/mail/config-v1.1.xml on
  autoconfig.<domain> (or any name with ?emailaddress=user@<domain>): the IMAP and
  submission servers, ports and security, and the login (the whole address).
"""

from __future__ import annotations

from xml.etree import ElementTree

from django.http import HttpRequest, HttpResponse

from mail.addresses import AddressError, normalize_domain, parse_address
from mail.models import MailDomain
from mail.services.dns_records import mta_sts_policy, public_ports

MTA_STS_PATH = "/.well-known/mta-sts.txt"
AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")


def _host(request: HttpRequest) -> str:
    """The Host header's name in normal form, without a port; "" when it is not a host name.
    Read raw: Django's get_host() refuses names outside ALLOWED_HOSTS."""
    raw = request.META.get("HTTP_HOST", "")
    name = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
    try:
        return normalize_domain(name)
    except AddressError:
        return ""


def _domain(name: str) -> MailDomain | None:
    return MailDomain.objects.filter(name=name, enabled=True).first() if name else None


def mta_sts_response(request: HttpRequest) -> HttpResponse:
    host = _host(request)
    domain = _domain(host.removeprefix("mta-sts.")) if host.startswith("mta-sts.") else None
    if domain is None or domain.mta_sts_mode == MailDomain.MtaStsMode.NONE or not request.is_secure():
        return HttpResponse("no MTA-STS policy here\n", status=404, content_type="text/plain")
    return HttpResponse(mta_sts_policy(domain), content_type="text/plain; charset=utf-8")


def autoconfig_xml(domain: MailDomain) -> bytes:
    """Thunderbird's clientConfig 1.1 for `domain`: IMAP over implicit TLS, then STARTTLS;
    submission likewise when the domain takes submission (RFC 8314 section 5.1 prefers
    implicit TLS)."""
    ports = public_ports()
    root = ElementTree.Element("clientConfig", version="1.1")
    provider = ElementTree.SubElement(root, "emailProvider", id=domain.name)
    ElementTree.SubElement(provider, "domain").text = domain.name
    ElementTree.SubElement(provider, "displayName").text = domain.name
    ElementTree.SubElement(provider, "displayShortName").text = domain.name
    servers = [
        ("incomingServer", "imap", ports["imaps"], "SSL"),
        ("incomingServer", "imap", ports["imap"], "STARTTLS"),
    ]
    if domain.submission_enabled:
        servers += [
            ("outgoingServer", "smtp", ports["submissions"], "SSL"),
            ("outgoingServer", "smtp", ports["submission"], "STARTTLS"),
        ]
    for tag, kind, port, socket_type in servers:
        server = ElementTree.SubElement(provider, tag, type=kind)
        ElementTree.SubElement(server, "hostname").text = domain.effective_hostname
        ElementTree.SubElement(server, "port").text = str(port)
        ElementTree.SubElement(server, "socketType").text = socket_type
        ElementTree.SubElement(server, "username").text = "%EMAILADDRESS%"
        ElementTree.SubElement(server, "authentication").text = "password-cleartext"
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def autoconfig_response(request: HttpRequest) -> HttpResponse:
    name = ""
    address = request.GET.get("emailaddress", "")
    if address:
        try:
            name = parse_address(address).domain
        except AddressError:
            return HttpResponse("invalid emailaddress\n", status=400, content_type="text/plain")
    else:
        host = _host(request)
        name = host.removeprefix("autoconfig.") if host.startswith("autoconfig.") else ""
    domain = _domain(name)
    if domain is None:
        return HttpResponse("no mail domain here\n", status=404, content_type="text/plain")
    return HttpResponse(autoconfig_xml(domain), content_type="application/xml; charset=utf-8")


class ClientFilesMiddleware:
    """Answer the MTA-STS and autoconfig paths (GET and HEAD); pass anything else on."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == MTA_STS_PATH:
            handler = mta_sts_response
        elif request.path in AUTOCONFIG_PATHS:
            handler = autoconfig_response
        else:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
        response = handler(request)
        response["Cache-Control"] = "max-age=300"
        return response
