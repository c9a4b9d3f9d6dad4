"""Precompiled wire answers: a Snapshot turned into response bytes to patch and send.

For every RRset of every hosted name, WireAnswers holds the response body (the sections after
the question) ready to send, built once by dns_zones.server.resolve when the snapshot is
loaded; the negative answers have templates: NXDOMAIN and NODATA per zone, the referral per
delegation, and wildcard expansions per (wildcard, type), compiled on first use. Answering
a query then costs a dictionary lookup and a join: the query's ID and question (with the
client's letter case, RFC 4343) are copied in front of the body, the EDNS OPT record after it.

A body's compression pointers (RFC 1035 section 4.1.4) may point into the question: at the
name asked, or at the part of it every question of the template shares (the zone's origin,
the closest encloser, the delegation point); see Template for how that holds for any name of
the same length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dns_zones.server.resolve import delegation, negative, required_glue, resolve
from dns_zones.server.snapshot import Snapshot, ZoneData

# Templates compiled on first use (wildcard expansions, CNAME chains, types a name lacks at a
# delegation) are kept up to this many per snapshot, each with its bodies for at most
# LAZY_BODIES question lengths; past that they are encoded for each query. Odd questions
# cannot grow the memory of a process by more than about 4096 * 32 small bodies.
MAX_LAZY_TEMPLATES = 4096
LAZY_BODIES = 32

_COUNTS = struct.Struct("!HHHH")
QR = 0x8000
TC = 0x0200


@dataclass(frozen=True)
class Body:
    """The sections after the question, and the header's QDCOUNT..ARCOUNT words for them
    without (`head`) and with (`head_opt`) an OPT record added to the additional section."""

    data: bytes
    head: bytes
    head_opt: bytes


class Template:
    """The answer to every question filed under it: its flags, and the sections of the full
    response and of a reduced one (the additional section cut to the glue a referral
    requires, RFC 9471) for when the full one does not fit the client's limit; the responder
    sets TC when neither does.

    `asked` is the owner that stands for the question (the name a wildcard answers for), and
    `anchor` a suffix of every question served: the bodies are encoded by dnspython (with name
    compression) once per question length, with a stand-in question of that length ending in
    `anchor`, so a compression pointer lands on the same octets of any real question.
    """

    __slots__ = ("_bodies", "anchor", "asked", "exact", "flags", "flags_rd", "full", "keep", "reduced")

    def __init__(
        self,
        flags: int,
        full: tuple[list, list, list],
        reduced: tuple[list, list, list],
        *,
        anchor: dns.name.Name = dns.name.root,
        asked: dns.name.Name | None = None,
    ):
        self.flags = struct.pack("!H", flags)
        self.flags_rd = struct.pack("!H", flags | dns.flags.RD)
        self.full = full
        self.reduced = reduced
        self.anchor = anchor
        self.asked = asked
        self._bodies: dict[int, tuple[Body, Body]] = {}
        # How many question lengths keep their bodies (a name is at most 255 octets).
        self.keep = 256
        # The bodies of a template for one name (WireAnswers.exact), for that name's length.
        self.exact: tuple[Body, Body] | None = None

    def bodies(self, name_length: int) -> tuple[Body, Body]:
        """The full and reduced bodies for a question name of `name_length` octets."""
        found = self._bodies.get(name_length)
        if found is None:
            question = _stand_in(self.anchor, name_length)
            full = self._encode(question, self.full)
            # Without an additional section to cut, the reduced body is the full one.
            same = self.reduced[2] == self.full[2]
            found = (full, full if same else self._encode(question, self.reduced))
            if len(self._bodies) < self.keep:
                self._bodies[name_length] = found
        return found

    def _encode(self, question: dns.name.Name, sections: tuple[list, list, list]) -> Body:
        message = dns.message.Message(id=0)
        message.flags = 0
        message.question = [dns.rrset.RRset(question, dns.rdataclass.IN, dns.rdatatype.A)]
        message.answer, message.authority, message.additional = (
            [_rename(rrset, question) if rrset.name == self.asked else rrset for rrset in section]
            for section in sections
        )
        wire = message.to_wire(max_size=65535)
        counts = struct.unpack_from("!HHHH", wire, 4)
        start = 12 + len(question.to_wire()) + 4
        return Body(wire[start:], _COUNTS.pack(*counts), _COUNTS.pack(*counts[:3], counts[3] + 1))


def _stand_in(anchor: dns.name.Name, length: int) -> dns.name.Name:
    """A name of `length` wire octets ending in `anchor`, the rest in labels of 0xFF octets,
    which no name of the zone data holds (dns_zones.records), so nothing is compressed
    against them."""
    rest = length - len(anchor.to_wire())
    labels = []
    while rest > 0:
        size = min(63, rest - 1)
        if rest - (size + 1) == 1:
            size -= 1
        labels.append(b"\xff" * size)
        rest -= size + 1
    return dns.name.Name((*labels, *anchor.labels))


def _rename(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype)
    out.update(rrset)
    return out


def compile_response(
    response: dns.message.Message, *, anchor: dns.name.Name, asked: dns.name.Name | None = None
) -> Template:
    """A Template from the sections of `response` (filled by resolve()); see Template."""
    flags = (response.flags & ~(dns.flags.RD | dns.flags.RA | dns.flags.AD)) | response.rcode() | QR
    return Template(
        flags,
        (list(response.answer), list(response.authority), list(response.additional)),
        (list(response.answer), list(response.authority), required_glue(response)),
        anchor=anchor,
        asked=asked,
    )


def _response(qname: dns.name.Name, qtype: int) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, use_edns=False)
    response = dns.message.make_response(query)
    response.flags &= ~(dns.flags.RA | dns.flags.AD)
    return response


@dataclass
class NameInfo:
    """What the wire path needs to know of an existing name (or empty non-terminal)."""

    # NODATA for the types the name lacks; None where that depends on the type (a CNAME, a
    # name at or below a delegation).
    nodata: Template | None
    # The referral for names below this one that do not exist, when it lies at or below a cut.
    referral: Template | None
    # The wildcard "*.<this name>" when there is one.
    wildcard: dns.name.Name | None
    nxdomain: Template


class WireAnswers:
    """The Snapshot `snapshot` precompiled; lookup() finds the template for a question."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        # By question: the lowercased name, the type and the class (IN) as on the wire.
        self.exact: dict[bytes, Template] = {}
        self.names: dict[bytes, NameInfo] = {}
        self._lazy: dict[bytes, Template] = {}
        # Not authoritative and no recursion (RA stays 0): REFUSED (RFC 8906 section 3.1.3).
        self.refused = Template(QR | dns.rcode.REFUSED, ([], [], []), ([], [], []))
        # Parents first, so a zone hosted inside another one files its own names last.
        for origin in sorted(snapshot.zones, key=len):
            self._compile_zone(snapshot.zones[origin])

    def _compile_zone(self, zone: ZoneData) -> None:
        nxdomain = compile_response(_negative(zone, dns.rcode.NXDOMAIN), anchor=zone.origin)
        nodata = compile_response(_negative(zone, dns.rcode.NOERROR), anchor=zone.origin)
        referrals = {cut: self._compile(cut, dns.rdatatype.NS, anchor=cut) for cut in zone.cuts}
        for name in zone.names:
            if self.snapshot.find_zone(name) is not zone:
                continue  # the apex or a name of a zone hosted inside this one: filed there
            key = name.canonicalize().to_wire()
            node = zone.nodes.get(name, {})
            cut = delegation(zone, name, dns.rdatatype.A)
            for rdtype in node:
                self.exact[key + struct.pack("!HH", rdtype, dns.rdataclass.IN)] = self._compile(
                    name, rdtype, exact=True
                )
            wildcard = dns.name.Name((b"*", *name.labels))
            self.names[key] = NameInfo(
                nodata=nodata if cut is None and dns.rdatatype.CNAME not in node else None,
                referral=referrals[cut] if cut is not None else None,
                wildcard=wildcard if wildcard in zone.nodes else None,
                nxdomain=nxdomain,
            )

    def _compile(
        self,
        name: dns.name.Name,
        qtype: int,
        *,
        exact: bool = False,
        asked: dns.name.Name | None = None,
        anchor: dns.name.Name | None = None,
    ) -> Template:
        """The template of resolve() for (`name`, `qtype`): for that name only when `exact`;
        otherwise for the names below `anchor`, the owner `asked` standing for the question."""
        response = _response(name, qtype)
        resolve(self.snapshot, self.snapshot.find_zone(name), name, qtype, response)
        if exact:
            template = compile_response(response, anchor=name)
            template.exact = template.bodies(len(name.to_wire()))  # encoded now, not on a query
            return template
        return compile_response(response, anchor=anchor, asked=asked)

    def _lazy_template(self, key: bytes, build) -> Template:
        template = self._lazy.get(key)
        if template is None:
            template = build()
            template.keep = LAZY_BODIES
            if len(self._lazy) < MAX_LAZY_TEMPLATES:
                self._lazy[key] = template
        return template

    def lookup(self, name: bytes, starts: list[int], qtype: int) -> Template:
        """The template for a question of `qtype` about `name` (the lowercased wire name, its
        labels beginning at the offsets `starts`) when `exact` has none."""
        info = self.names.get(name)
        if info is not None:  # the name exists, but not with this type
            if info.nodata is not None and qtype != dns.rdatatype.ANY:
                return info.nodata
            return self._lazy_template(
                b"n" + name + struct.pack("!H", qtype),
                lambda: self._compile(dns.name.from_wire(name, 0)[0], qtype, exact=True),
            )
        for start in starts[1:]:
            info = self.names.get(name[start:])
            if info is not None:
                break
        else:
            return self.refused  # not in a hosted zone
        if info.referral is not None:
            return info.referral
        wildcard = info.wildcard
        if wildcard is None:
            return info.nxdomain
        # RFC 4592: answered from the wildcard, its owner replaced by the question.
        return self._lazy_template(
            b"w" + wildcard.to_wire() + struct.pack("!H", qtype),
            lambda: self._compile(wildcard, qtype, asked=wildcard, anchor=wildcard.parent()),
        )


def _negative(zone: ZoneData, rcode: int) -> dns.message.Message:
    response = _response(zone.origin, dns.rdatatype.A)
    response.flags |= dns.flags.AA
    negative(zone, response, rcode)
    return response
