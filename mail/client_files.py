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
- POST /autodiscover/autodiscover.xml on autodiscover.<domain>: Outlook's "POX"
  autodiscover answer (responseschema 2006a) with the same servers, for the address the
  request names.
"""

from __future__ import annotations

from xml.etree import ElementTree

from django.http import HttpRequest, HttpResponse

from domain_names import DomainNameError, normalize_host
from mail.addresses import AddressError, parse_address
from mail.models import MailDomain
from mail.services.dns_records import mta_sts_policy, public_ports

MTA_STS_PATH = "/.well-known/mta-sts.txt"
AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
# An autodiscover request is a few hundred bytes of XML; anything much larger is refused unread.
MAX_AUTODISCOVER_REQUEST = 16 * 1024
_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def _host(request: HttpRequest) -> str:
    """The Host header's name in normal form, without a port; "" when it is not a host name.
    Read raw: Django's get_host() refuses names outside ALLOWED_HOSTS."""
    raw = request.META.get("HTTP_HOST", "")
    name = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
    try:
        return normalize_host(name)
    except DomainNameError:
        return ""


def _domain(name: str) -> MailDomain | None:
    return MailDomain.objects.filter(name=name, enabled=True).first() if name else None


def mta_sts_response(request: HttpRequest) -> HttpResponse:
    host = _host(request)
    domain = _domain(host.removeprefix("mta-sts.")) if host.startswith("mta-sts.") else None
    if domain is None or domain.mta_sts_mode == MailDomain.MtaStsMode.NONE or not request.is_secure():
        return HttpResponse("no MTA-STS policy here\n", status=404, content_type="text/plain")
    return HttpResponse(mta_sts_policy(domain), content_type="text/plain; charset=utf-8")


def _servers(domain: MailDomain) -> list[tuple[str, str, int, bool]]:
    """(incoming/outgoing, protocol, port, implicit TLS) of the servers a client of `domain`
    uses, in order of preference (RFC 8314 section 5.1 prefers implicit TLS)."""
    ports = public_ports()
    servers = [("incoming", "imap", ports["imaps"], True), ("incoming", "imap", ports["imap"], False)]
    if domain.submission_enabled:
        servers += [
            ("outgoing", "smtp", ports["submissions"], True),
            ("outgoing", "smtp", ports["submission"], False),
        ]
    return servers


def autoconfig_xml(domain: MailDomain) -> bytes:
    """Thunderbird's clientConfig 1.1 for `domain`: IMAP over implicit TLS, then STARTTLS;
    submission likewise when the domain takes submission (RFC 8314 section 5.1 prefers
    implicit TLS)."""
    root = ElementTree.Element("clientConfig", version="1.1")
    provider = ElementTree.SubElement(root, "emailProvider", id=domain.name)
    ElementTree.SubElement(provider, "domain").text = domain.name
    ElementTree.SubElement(provider, "displayName").text = domain.name
    ElementTree.SubElement(provider, "displayShortName").text = domain.name
    for kind, protocol, port, implicit in _servers(domain):
        server = ElementTree.SubElement(provider, f"{kind}Server", type=protocol)
        ElementTree.SubElement(server, "hostname").text = domain.effective_hostname
        ElementTree.SubElement(server, "port").text = str(port)
        ElementTree.SubElement(server, "socketType").text = "SSL" if implicit else "STARTTLS"
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


def autodiscover_xml(domain: MailDomain, address: str) -> bytes:
    """Outlook's autodiscover answer for `address`: IMAP and, when the domain takes
    submission, SMTP, each over implicit TLS with the address as login."""
    root = ElementTree.Element("Autodiscover", xmlns=_RESPONSE_NS)
    response = ElementTree.SubElement(root, "Response", xmlns=_OUTLOOK_NS)
    account = ElementTree.SubElement(response, "Account")
    ElementTree.SubElement(account, "AccountType").text = "email"
    ElementTree.SubElement(account, "Action").text = "settings"
    for _kind, protocol, port, implicit in _servers(domain):
        if not implicit:
            continue
        entry = ElementTree.SubElement(account, "Protocol")
        for tag, text in (
            ("Type", protocol.upper()),
            ("Server", domain.effective_hostname),
            ("Port", str(port)),
            ("LoginName", address),
            ("SSL", "on"),
            ("SPA", "off"),
            ("AuthRequired", "on"),
        ):
            ElementTree.SubElement(entry, tag).text = text
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def autodiscover_response(request: HttpRequest) -> HttpResponse:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = MAX_AUTODISCOVER_REQUEST + 1
    if length > MAX_AUTODISCOVER_REQUEST:
        return HttpResponse("request too large\n", status=413, content_type="text/plain")
    try:
        tree = ElementTree.fromstring(request.body)
    except ElementTree.ParseError:
        return HttpResponse("expected an autodiscover request\n", status=400, content_type="text/plain")
    text = next((e.text for e in tree.iter() if e.tag.rpartition("}")[2] == "EMailAddress"), "") or ""
    try:
        address = parse_address(text.strip())
    except AddressError:
        return HttpResponse("invalid EMailAddress\n", status=400, content_type="text/plain")
    domain = _domain(address.domain)
    if domain is None:
        return HttpResponse("no mail domain here\n", status=404, content_type="text/plain")
    return HttpResponse(autodiscover_xml(domain, str(address)), content_type="application/xml; charset=utf-8")


class ClientFilesMiddleware:
    """Answer the MTA-STS and autoconfig paths (GET and HEAD) and Outlook's autodiscover
    (POST); pass anything else on."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path in AUTODISCOVER_PATHS:
            if request.method != "POST":
                return HttpResponse(status=405, headers={"Allow": "POST"})
            return autodiscover_response(request)
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
