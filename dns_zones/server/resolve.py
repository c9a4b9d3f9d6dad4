"""The authoritative lookup (RFC 1034 section 4.3.2): what a response to (qname, qtype) holds.

Fills a dnspython response from a Snapshot. The Responder uses it to precompile wire answers
(dns_zones.server.wire) and, for the rare query the wire path does not take, to answer
directly.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from dns_zones.server.snapshot import Snapshot, ZoneData

MAX_CNAME_CHAIN = 8
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


def required_glue(response: dns.message.Message) -> list[dns.rrset.RRset]:
    """The glue a referral cannot go without: the addresses of its name servers that lie in
    the delegated zone (RFC 9471 section 2.1). Empty for anything but a referral."""
    if response.answer or response.flags & dns.flags.AA or not response.authority:
        return []
    ns = response.authority[0]
    if ns.rdtype != dns.rdatatype.NS:
        return []
    return [rrset for rrset in response.additional if rrset.name.is_subdomain(ns.name)]


def negative(zone: ZoneData, response: dns.message.Message, rcode: int) -> None:
    """Make `response` the negative answer `rcode` (NXDOMAIN, or NOERROR for NODATA) of `zone`."""
    # RFC 2308 sections 2.1 and 2.2: NXDOMAIN and NODATA carry the zone's SOA in authority.
    response.authority.append(zone.negative_soa)
    response.set_rcode(rcode)


def _rename(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype)
    out.update(rrset)
    return out


def resolve(snapshot: Snapshot, zone: ZoneData, qname: dns.name.Name, qtype: int, response) -> None:
    """Fill `response` with the authoritative answer for (qname, qtype) (RFC 1034 4.3.2)."""
    name = qname
    lookup = qname.canonicalize()
    response.flags |= dns.flags.AA
    seen: set[dns.name.Name] = set()
    for step in range(MAX_CNAME_CHAIN + 1):
        cut = delegation(zone, lookup, qtype)
        if cut is not None:
            # A referral is not authoritative data (RFC 1034 section 4.3.2 step 3b).
            if step == 0:
                response.flags &= ~dns.flags.AA
            ns = zone.nodes[cut][dns.rdatatype.NS]
            response.authority.append(ns)
            _add_glue(snapshot, ns, response)
            return
        node = zone.nodes.get(lookup)
        owner = name
        if node is None:
            if lookup in zone.names:  # an empty non-terminal: NODATA (RFC 8020)
                negative(zone, response, dns.rcode.NOERROR)
                return
            node = _wildcard(zone, lookup)
            if node is None:
                negative(zone, response, dns.rcode.NXDOMAIN)
                return
        if qtype == dns.rdatatype.ANY:
            # RFC 8482 section 4.2: answer ANY with one RRset of the name, not all of them.
            first = node[min(node)]
            response.answer.append(_rename(first, owner))
            return
        rrset = node.get(qtype)
        if rrset is not None:
            response.answer.append(_rename(rrset, owner) if rrset.name != owner else rrset)
            if qtype in (dns.rdatatype.MX, dns.rdatatype.NS, dns.rdatatype.SRV):
                _add_glue(snapshot, rrset, response)
            return
        cname = node.get(dns.rdatatype.CNAME)
        if cname is None:
            negative(zone, response, dns.rcode.NOERROR)
            return
        response.answer.append(_rename(cname, owner) if cname.name != owner else cname)
        # RFC 1034 section 3.6.2: restart at the canonical name, inside our data only; a loop
        # or a name we are not authoritative for ends the chain (the resolver continues).
        seen.add(lookup)
        name = cname[0].target
        lookup = name.canonicalize()
        zone = snapshot.find_zone(lookup)
        if zone is None or lookup in seen:
            return
    # A chain longer than MAX_CNAME_CHAIN: answer what we have; the resolver continues.


def delegation(zone: ZoneData, name: dns.name.Name, qtype: int) -> dns.name.Name | None:
    """The highest zone cut between the apex (exclusive) and `name`, or None.

    At the cut itself a DS query is answered from the parent side (RFC 4035 section 3.1.4.1).
    """
    if not zone.cuts:
        return None
    labels = len(zone.origin)
    for depth in range(labels + 1, len(name) + 1):
        candidate = name.split(depth)[1]
        if candidate in zone.cuts:
            if candidate == name and qtype == dns.rdatatype.DS:
                return None
            return candidate
    return None


def _wildcard(zone: ZoneData, name: dns.name.Name):
    """The node of the wildcard that matches the non-existent `name` (RFC 4592), or None."""
    # The closest encloser is the nearest existing ancestor; the apex always exists.
    encloser = name.parent()
    while encloser not in zone.names:
        encloser = encloser.parent()
    return zone.nodes.get(dns.name.Name((b"*", *encloser.labels)))


def _add_glue(snapshot: Snapshot, rrset: dns.rrset.RRset, response) -> None:
    """Add addresses we hold for the targets of NS, MX or SRV records (RFC 1034 4.3.2 step 6)."""
    for rdata in rrset:
        target = getattr(rdata, "target", None) or getattr(rdata, "exchange", None)
        if target is None:
            continue
        target = target.canonicalize()
        zone = snapshot.find_zone(target)
        if zone is None:
            continue
        node = zone.nodes.get(target)
        if not node:
            continue
        for rdtype in _ADDRESS_TYPES:
            address = node.get(rdtype)
            if address is not None and address not in response.additional:
                response.additional.append(address)
