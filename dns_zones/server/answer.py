"""Turning a query's wire bytes into the response's wire bytes, from a Snapshot.

Pure protocol logic, no I/O: the listener feeds datagrams and TCP messages in and sends what
comes out. Encoded responses are cached (AnswerCache) under the query's bytes after the
message ID up to its EDNS options (flags, counts, the question with the client's letter case,
the OPT record's payload size, version and DO bit: everything the answer depends on besides
the zone data), plus whether the query was padded; the options themselves (padding, cookies,
anything odd) are never part of the key. A hit costs one dict lookup and the ID is the only
thing patched. The cache is held to MAX_CACHE_BYTES and dropped whenever a new snapshot is
installed.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dns_zones.server.snapshot import Snapshot, ZoneData

log = logging.getLogger("dns_zones")

# The UDP payload size we advertise and honour at most: the DNS Flag Day 2020 value, which
# avoids IP fragmentation on common paths.
OUR_UDP_PAYLOAD = 1232
# RFC 1035 section 4.2.1: without EDNS a UDP message holds at most 512 octets.
CLASSIC_UDP_PAYLOAD = 512
MAX_CNAME_CHAIN = 8
# What the cached responses and their keys may take, counting CACHE_ENTRY_OVERHEAD bytes per
# entry for the objects around them; the oldest entries go first.
MAX_CACHE_BYTES = 8 * 1024 * 1024
CACHE_ENTRY_OVERHEAD = 150
# Larger responses (TCP only) are rebuilt each time.
MAX_CACHED_RESPONSE = 1500

_HEADER = struct.Struct("!HHHHHH")
QR = 0x8000
RD = 0x0100
OPCODE_MASK = 0x7800
# Query types that ask for a zone transfer or a mail-agent meta query: not offered here.
_REFUSED_QTYPES = {dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA, dns.rdatatype.MAILB}
# Types that may not appear in a question (RFC 6891 section 6.1.1 for OPT; TSIG/TKEY are
# transaction meta-records).
_BAD_QTYPES = {dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY}
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


_OPT_FIXED = struct.Struct("!BHHIH")  # root name, TYPE 41, CLASS = payload, TTL, RDLENGTH
_PADDING = 12  # RFC 7830


def cache_key(wire: bytes) -> bytes | None:
    """The cache key of the query `wire`, or None when it is not a plain query to cache: one
    question (uncompressed), nothing but an optional OPT record after it, options that tile
    its RDATA exactly (RFC 6891 section 6.1.2). The key is the bytes from the flags to the
    OPT record's TTL, and b"P" when the query carries a PADDING option (RFC 7830: padded
    queries get padded responses); the options' contents are left out."""
    if len(wire) < 17 or wire[4:10] != b"\x00\x01\x00\x00\x00\x00":  # QD=1, AN=0, NS=0
        return None
    position = 12
    while True:
        length = wire[position] if position < len(wire) else 0x40
        if length == 0:
            break
        if length > 63:  # a compression pointer, a label type we do not take, or the end
            return None
        position += 1 + length
    end_of_question = position + 5
    arcount = wire[10] << 8 | wire[11]
    if arcount == 0:
        return wire[2:end_of_question] if end_of_question == len(wire) else None
    if arcount != 1 or len(wire) < end_of_question + 11:
        return None
    root, rtype, _payload, _ttl, rdlength = _OPT_FIXED.unpack_from(wire, end_of_question)
    if root != 0 or rtype != dns.rdatatype.OPT or end_of_question + 11 + rdlength != len(wire):
        return None
    padded = False
    position = end_of_question + 11
    while position < len(wire):
        if position + 4 > len(wire):
            return None
        code, length = struct.unpack_from("!HH", wire, position)
        padded = padded or code == _PADDING
        position += 4 + length
    if position != len(wire):
        return None
    key = wire[2 : end_of_question + 9]
    return key + b"P" if padded else key


class AnswerCache:
    """Encoded responses (without their ID) by cache_key, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        return self.entries.get(key)

    def put(self, key: bytes, response: bytes) -> None:
        cost = len(key) + len(response) + CACHE_ENTRY_OVERHEAD
        if cost > self.max_bytes or key in self.entries:
            return
        while self.size + cost > self.max_bytes:
            old_key, old = self.entries.popitem(last=False)
            self.size -= len(old_key) + len(old) + CACHE_ENTRY_OVERHEAD
        self.entries[key] = response
        self.size += cost


def _header_only(wire: bytes, rcode: int) -> bytes:
    """A response carrying only a header: the query's ID, opcode and RD, with `rcode`."""
    (msg_id, flags) = struct.unpack_from("!HH", wire)
    return _HEADER.pack(msg_id, QR | (flags & (OPCODE_MASK | RD)) | rcode, 0, 0, 0, 0)


class Responder:
    """Answers queries from the installed Snapshot; see the module docstring for the cache."""

    def __init__(self, snapshot: Snapshot, *, cache_bytes: int = MAX_CACHE_BYTES):
        self.snapshot = snapshot
        self.cache_bytes = cache_bytes
        self._cache = {False: AnswerCache(cache_bytes // 2), True: AnswerCache(cache_bytes // 2)}

    @property
    def cached_bytes(self) -> int:
        return sum(cache.size for cache in self._cache.values())

    def install(self, snapshot: Snapshot) -> None:
        """Answer from `snapshot` from now on (and forget every cached response)."""
        self.snapshot = snapshot
        self._cache = {False: AnswerCache(self.cache_bytes // 2), True: AnswerCache(self.cache_bytes // 2)}

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The response to the query `wire`, or None when nothing must be sent.

        Nothing is sent for a message shorter than a header or a response (QR=1, RFC 1035
        section 4.1.1: answering responses invites loops). Never raises: anything unexpected
        is logged and answered SERVFAIL.
        """
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        cache = self._cache[tcp]
        key = cache_key(wire)
        if key is not None:
            hit = cache.get(key)
            if hit is not None:
                return wire[:2] + hit
        try:
            response, cacheable = self._answer(wire, tcp=tcp)
        except Exception:
            log.exception("DNS query could not be answered")
            return _header_only(wire, dns.rcode.SERVFAIL)
        if cacheable and key is not None and len(response) <= MAX_CACHED_RESPONSE:
            cache.put(key, response[2:])
        return response

    def _answer(self, wire: bytes, *, tcp: bool) -> tuple[bytes, bool]:
        flags = struct.unpack_from("!H", wire, 2)[0]
        opcode = (flags & OPCODE_MASK) >> 11
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            if opcode != dns.opcode.QUERY:
                # An UPDATE or other message we could not even read: still NOTIMP.
                return _header_only(wire, dns.rcode.NOTIMP), False
            # RFC 1035 section 4.1.1: FORMERR, "unable to interpret the query"; header only,
            # since the question itself may be what is broken.
            return _header_only(wire, dns.rcode.FORMERR), False
        if opcode != dns.opcode.QUERY:
            # RFC 1035 section 4.1.1: NOTIMP for a kind of query we do not support.
            return self._finish(query, dns.rcode.NOTIMP, tcp=tcp), True
        if query.edns > 0:
            # RFC 6891 section 6.1.3: a version we do not implement gets BADVERS (with our
            # version, 0, in the OPT record).
            return self._finish(query, dns.rcode.BADVERS, tcp=tcp), True
        # RFC 9619: a query holds exactly one question.
        if len(query.question) != 1:
            return self._finish(query, dns.rcode.FORMERR, tcp=tcp), True
        question = query.question[0]
        if question.rdtype in _BAD_QTYPES:
            return self._finish(query, dns.rcode.FORMERR, tcp=tcp), True
        if question.rdclass != dns.rdataclass.IN or question.rdtype in _REFUSED_QTYPES:
            return self._finish(query, dns.rcode.REFUSED, tcp=tcp), True
        zone = self.snapshot.find_zone(question.name.canonicalize())
        if zone is None:
            # Not authoritative and no recursion (RA stays 0): REFUSED (RFC 8906 section 3.1.3).
            return self._finish(query, dns.rcode.REFUSED, tcp=tcp), True
        response = self._make_response(query)
        _resolve(self.snapshot, zone, question.name, question.rdtype, response)
        return self._encode(query, response, tcp=tcp), True

    def _make_response(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=OUR_UDP_PAYLOAD)
        # make_response copies RD; we never recurse, so RA stays 0 (RFC 1035 section 4.1.1).
        response.flags &= ~(dns.flags.RA | dns.flags.AD)
        if query.ednsflags & dns.flags.DO:
            # RFC 3225 section 3: the DO bit of the query is copied into the response.
            response.ednsflags |= dns.flags.DO
        return response

    def _finish(self, query: dns.message.Message, rcode: int, *, tcp: bool) -> bytes:
        response = self._make_response(query)
        response.set_rcode(rcode)
        return self._encode(query, response, tcp=tcp)

    def _encode(self, query: dns.message.Message, response: dns.message.Message, *, tcp: bool) -> bytes:
        if tcp:
            limit = 65535
        elif query.edns >= 0:
            # RFC 6891 section 6.2.5: payload sizes below 512 are treated as 512.
            limit = max(CLASSIC_UDP_PAYLOAD, min(query.payload, OUR_UDP_PAYLOAD))
        else:
            limit = CLASSIC_UDP_PAYLOAD
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        # RFC 2181 section 9: the additional section is optional; drop it before truncating.
        # Except in a referral, where the addresses of name servers inside the delegated zone
        # are required glue (RFC 9471 section 2.1): when those do not fit, TC is set.
        response.additional = _required_glue(response)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        # RFC 1035 section 4.2.1, RFC 7766: set TC so the client retries over TCP.
        response.additional = []
        response.answer = []
        response.authority = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def _required_glue(response: dns.message.Message) -> list[dns.rrset.RRset]:
    """The glue a referral cannot go without: the addresses of its name servers that lie in
    the delegated zone (RFC 9471 section 2.1). Empty for anything but a referral."""
    if response.answer or response.flags & dns.flags.AA or not response.authority:
        return []
    ns = response.authority[0]
    if ns.rdtype != dns.rdatatype.NS:
        return []
    return [rrset for rrset in response.additional if rrset.name.is_subdomain(ns.name)]


def _negative(zone: ZoneData, response: dns.message.Message, rcode: int) -> None:
    # RFC 2308 sections 2.1 and 2.2: NXDOMAIN and NODATA carry the zone's SOA in authority.
    response.authority.append(zone.negative_soa)
    response.set_rcode(rcode)


def _rename(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype)
    out.update(rrset)
    return out


def _resolve(snapshot: Snapshot, zone: ZoneData, qname: dns.name.Name, qtype: int, response) -> None:
    """Fill `response` with the authoritative answer for (qname, qtype) (RFC 1034 4.3.2)."""
    name = qname
    lookup = qname.canonicalize()
    response.flags |= dns.flags.AA
    seen: set[dns.name.Name] = set()
    for step in range(MAX_CNAME_CHAIN + 1):
        cut = _delegation(zone, lookup, qtype)
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
                _negative(zone, response, dns.rcode.NOERROR)
                return
            node = _wildcard(zone, lookup)
            if node is None:
                _negative(zone, response, dns.rcode.NXDOMAIN)
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
            _negative(zone, response, dns.rcode.NOERROR)
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


def _delegation(zone: ZoneData, name: dns.name.Name, qtype: int) -> dns.name.Name | None:
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
