"""Record types, TTLs and data: the one form we store, and parsing with dnspython.

Pure: no Django. Owner names are in the normal form of domain_names.normalize_owner; record
data is kept in presentation format (as in a zone file) with absolute names.
"""

from __future__ import annotations

import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.txtbase
import dns.rrset
import dns.tokenizer

# Types an administrator may add. SOA is built from the zone's fields; DNSSEC types are not
# served (the zones are unsigned); zone transfers are not offered.
ALLOWED_TYPES = (
    "A",
    "AAAA",
    "CAA",
    "CNAME",
    "DS",
    "HINFO",
    "MX",
    "NS",
    "PTR",
    "SRV",
    "SSHFP",
    "TLSA",
    "TXT",
    "SVCB",
    "HTTPS",
    "NAPTR",
    "LOC",
    "SPF",
    "URI",
)

# RFC 2181 section 8: a TTL is an unsigned 31-bit number; 0 is legal ("do not cache").
MIN_TTL = 0
MAX_TTL = 2**31 - 1

# RFC 1035 section 3.3.14: one character-string holds at most 255 octets.
MAX_STRING = 255


class RecordError(ValueError):
    """A name, type, TTL or record data that is not valid; the message says why."""


def check_ttl(ttl: int) -> int:
    """Return `ttl` if it is a valid TTL (0 .. 2**31-1, RFC 2181 section 8); else RecordError."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL:
        raise RecordError(f"TTL must be a whole number from {MIN_TTL} to {MAX_TTL}")
    return ttl


def check_type(rtype: str) -> str:
    """Return the upper-case mnemonic if administrators may add this type; else RecordError."""
    if not isinstance(rtype, str):
        raise RecordError("invalid record type")
    upper = rtype.upper()
    if upper not in ALLOWED_TYPES:
        raise RecordError(f"record type {rtype!r} is not supported (one of {', '.join(ALLOWED_TYPES)})")
    return upper


def parse_rdata(rtype: str, data: str, *, origin: str | None = None) -> dns.rdata.Rdata:
    """Parse presentation-format `data` of type `rtype` into a dnspython rdata.

    Relative names in the data are relative to `origin` (normal form) when given, else to the
    root. TXT-like strings longer than 255 octets are split into several strings of at most
    255 (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2: DKIM keys are concatenated back).
    Raises RecordError when the data does not parse for the type.
    """
    if not isinstance(data, str) or not data.strip():
        raise RecordError("record data is empty")
    if "\n" in data or "\r" in data or "\x00" in data:
        raise RecordError("record data must be on one line")
    try:
        rdtype = dns.rdatatype.from_text(rtype)
    except dns.exception.DNSException:
        raise RecordError(f"unknown record type {rtype!r}") from None
    relative_to = dns.name.from_text(origin + ".") if origin else dns.name.root
    try:
        if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
            return _parse_strings(rdtype, data)
        return dns.rdata.from_text(dns.rdataclass.IN, rdtype, data, origin=relative_to, relativize=False)
    except (dns.exception.DNSException, ValueError, TypeError, UnicodeError) as exc:
        raise RecordError(f"invalid {rtype} data {data!r}: {exc or type(exc).__name__}") from None


def _parse_strings(rdtype: dns.rdatatype.RdataType, data: str) -> dns.rdata.Rdata:
    tok = dns.tokenizer.Tokenizer(data)
    strings: list[bytes] = []
    for token in tok:
        if token.is_eol_or_eof():
            break
        if not (token.is_quoted_string() or token.is_identifier()):
            raise dns.exception.SyntaxError("expected a string")
        value = token.unescape_to_bytes().value
        # An empty string ("") stays one empty string rather than vanishing.
        strings.extend(value[i : i + MAX_STRING] for i in range(0, len(value), MAX_STRING) or [0])
    if not strings:
        raise dns.exception.SyntaxError("no strings")
    cls = dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype)
    assert issubclass(cls, dns.rdtypes.txtbase.TXTBase)
    return cls(dns.rdataclass.IN, rdtype, strings)


# RFC 1035 section 4.2.2: a DNS message over TCP is at most 65,535 octets.
MAX_MESSAGE = 65535


def check_servable(name: str, rtype: str, data: list[str]) -> None:
    """Raise RecordError unless the RRset of `name` and `rtype` with the records `data`
    (stored forms) fits in one DNS answer over TCP, with its question and an EDNS OPT
    record: a record that cannot be sent would make the whole name answer SERVFAIL."""
    owner = dns.name.from_text(name + ".")
    rdtype = dns.rdatatype.from_text(rtype)
    rdatas = [parse_rdata(rtype, text) for text in data]
    query = dns.message.make_query(owner, rdtype, use_edns=0)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_rdata_list(owner, 0, rdatas))
    try:
        size = len(response.to_wire(max_size=MAX_MESSAGE))
    except (dns.exception.DNSException, ValueError, OverflowError):
        size = None
    if size is None:
        total = sum(len(r.to_wire()) for r in rdatas)
        raise RecordError(
            f"the {rtype} records of {name} would take {total} octets: more than one DNS answer "
            f"can carry ({MAX_MESSAGE} octets, RFC 1035 section 4.2.2), so the name could not be served"
        )


def canonical_data(rtype: str, data: str, *, origin: str | None = None) -> str:
    """Validate `data` and return it in the form we store: presentation format, names absolute."""
    return parse_rdata(rtype, data, origin=origin).to_text()


def txt_text(data: str) -> str:
    """The text of TXT record data (presentation format): its strings joined, as SPF, DKIM
    and DMARC read them (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2). Raises RecordError
    for data that does not parse."""
    return b"".join(parse_rdata("TXT", data).strings).decode("utf-8", "replace")


def txt_kind(data: str) -> str:
    """The version tag that says what a TXT record is ("v=spf1", "v=dmarc1", "v=stsv1"...),
    lowercased; "" for other text or data that does not parse."""
    try:
        words = txt_text(data).split(";")[0].split()
    except RecordError:
        return ""
    first = words[0].lower() if words else ""
    return first if first.startswith("v=") else ""
