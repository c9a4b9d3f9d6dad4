"""Turning a query's wire bytes into the response's wire bytes, from a Snapshot.

Pure protocol logic, no I/O: the listener feeds datagrams and TCP messages in and sends what
comes out. A plain query (one question of class IN, at most an OPT record of EDNS version 0
without padding) is answered from the precompiled wire answers (dns_zones.server.wire): the
query's ID and question are copied around a ready body, the OPT record appended, and TC set
when the answer does not fit. Anything else (other classes and opcodes, padding, malformed
messages) is read with dnspython and answered through dns_zones.server.resolve.

Over UDP the same query comes again and again (resolvers re-ask as TTLs run out), so
respond_udp() remembers each reply by the query's octets after its ID: a query seen before is
answered by one dictionary lookup, its ID put in front of the stored reply. The memory is
forgotten with the snapshot it was built from.
"""

from __future__ import annotations

import logging
import struct

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

from dns_zones.server.resolve import required_glue, resolve
from dns_zones.server.snapshot import Snapshot
from dns_zones.server.wire import TC, WireAnswers

log = logging.getLogger("dns_zones")

# The UDP payload size we advertise and honour at most: the DNS Flag Day 2020 value, which
# avoids IP fragmentation on common paths.
OUR_UDP_PAYLOAD = 1232
# RFC 1035 section 4.2.1: without EDNS a UDP message holds at most 512 octets.
CLASSIC_UDP_PAYLOAD = 512
# RFC 1035 section 4.2.2: a message over TCP holds at most 65,535 octets.
TCP_LIMIT = 65535
# RFC 1035 section 3.1: a name takes at most 255 octets.
MAX_NAME = 255
# Replies respond_udp() remembers at most (then it starts afresh), and the longest query whose
# reply it keeps: at most about 8192 * 1.7 KB per process, whatever clients send.
UDP_REPLIES = 8192
UDP_REPLY_QUERY = 512

_HEADER = struct.Struct("!HHHHHH")
QR = 0x8000
RD = 0x0100
OPCODE_MASK = 0x7800
# Query types that ask for a zone transfer or a mail-agent meta query: not offered here.
_REFUSED_QTYPES = {dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA, dns.rdatatype.MAILB}
# Types that may not appear in a question (RFC 6891 section 6.1.1 for OPT; TSIG/TKEY are
# transaction meta-records).
_BAD_QTYPES = {dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY}
# Question types the wire path leaves to the fallback.
_FALLBACK_QTYPES = _REFUSED_QTYPES | _BAD_QTYPES

_OPT_FIXED = struct.Struct("!BHHIH")  # root name, TYPE 41, CLASS = payload, TTL, RDLENGTH
_OPTION = struct.Struct("!HH")
_PADDING = 12  # RFC 7830
_OPT = dns.rdatatype.OPT
# Our OPT record: EDNS version 0, our payload size; with the DO bit copied (RFC 3225 section 3).
_OUR_OPT = _OPT_FIXED.pack(0, _OPT, OUR_UDP_PAYLOAD, 0, 0)
_OUR_OPT_DO = _OPT_FIXED.pack(0, _OPT, OUR_UDP_PAYLOAD, dns.flags.DO, 0)
_NO_OPT_HEAD = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_OPT_HEAD = b"\x00\x01\x00\x00\x00\x00\x00\x01"


def _header_only(wire: bytes, rcode: int) -> bytes:
    """A response carrying only a header: the query's ID, opcode and RD, with `rcode`."""
    (msg_id, flags) = struct.unpack_from("!HH", wire)
    return _HEADER.pack(msg_id, QR | (flags & (OPCODE_MASK | RD)) | rcode, 0, 0, 0, 0)


def _assemble(wire: bytes, template, bodies, question: bytes, opt: bytes, limit: int) -> bytes:
    """The response to `wire` from `template` (its `bodies` for the question's length): the
    query's ID, the flags with the query's RD, the question as asked, a body, `opt`."""
    full, reduced = bodies
    flags = template.flags_rd if wire[2] & 1 else template.flags
    fixed = 12 + len(question) + len(opt)
    if fixed + len(full.data) <= limit:
        return b"".join((wire[:2], flags, full.head_opt if opt else full.head, question, full.data, opt))
    # RFC 2181 section 9: the additional section is optional, except the glue a referral
    # requires (RFC 9471 section 2.1).
    if fixed + len(reduced.data) <= limit:
        return b"".join(
            (wire[:2], flags, reduced.head_opt if opt else reduced.head, question, reduced.data, opt)
        )
    # RFC 1035 section 4.2.1, RFC 7766: set TC so the client retries over TCP.
    truncated = struct.pack("!H", int.from_bytes(flags, "big") | TC)
    return b"".join((wire[:2], truncated, _OPT_HEAD if opt else _NO_OPT_HEAD, question, opt))


class Responder:
    """Answers queries from the installed WireAnswers (see the module docstring)."""

    def __init__(self, answers: WireAnswers | Snapshot):
        self.answers = answers if isinstance(answers, WireAnswers) else WireAnswers(answers)
        # By the query's octets after its ID: the response's octets after its ID (UDP only).
        self.udp_replies: dict[bytes, bytes] = {}

    @property
    def snapshot(self) -> Snapshot:
        return self.answers.snapshot

    def install(self, answers: WireAnswers) -> None:
        """Answer from `answers` from now on."""
        self.answers = answers
        # A new dict, not clear(): the one a listener is reading from stays as it was.
        self.udp_replies = {}

    def respond_udp(self, wire: bytes, key: bytes | None = None) -> bytes | None:
        """respond(wire, tcp=False) without the response's first two octets (the query's ID),
        remembered in `udp_replies` under `key`, the query's octets after its ID (wire[2:],
        passed by a caller that has it already, its hash computed): the response is a
        function of those and the snapshot alone, so a listener that finds a query there
        answers with its ID followed by the stored reply. SERVFAIL (a failure that may pass)
        and replies to long queries are not kept."""
        response = self.respond(wire, tcp=False)
        if response is None:
            return None
        reply = response[2:]
        if len(wire) <= UDP_REPLY_QUERY and reply[1] & 0x0F != dns.rcode.SERVFAIL:
            replies = self.udp_replies
            if len(replies) >= UDP_REPLIES:
                replies.clear()
            replies[wire[2:] if key is None else key] = reply
        return reply

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The response to the query `wire`, or None when nothing must be sent.

        Nothing is sent for a message shorter than a header or a response (QR=1, RFC 1035
        section 4.1.1: answering responses invites loops). Never raises: anything unexpected
        is logged and answered SERVFAIL.
        """
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        try:
            return self._from_templates(wire, tcp) or self.fallback(wire, tcp=tcp)
        except Exception:
            log.exception("DNS query could not be answered")
            return _header_only(wire, dns.rcode.SERVFAIL)

    def _from_templates(self, wire: bytes, tcp: bool) -> bytes | None:
        """The answer from the precompiled templates, or None when the query is not a plain
        one (see the module docstring) and the fallback must read it."""
        # Opcode QUERY, QDCOUNT 1, ANCOUNT 0, NSCOUNT 0.
        if wire[2] & 0x78 or wire[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return None
        # The common case first: a question the zone data holds as it is, alone or followed by
        # an OPT record of EDNS version 0 without options. The question matching a key of
        # `exact` is what proves the message has this shape.
        arcount = wire[10:12]
        if arcount == b"\x00\x00":
            question, opt = wire[12:], b""
        elif (
            arcount == b"\x00\x01"
            and wire[-11:-8] == b"\x00\x00\x29"
            and not wire[-5]
            and wire[-2:] == b"\x00\x00"
        ):
            question, opt = wire[12:-11], _OUR_OPT_DO if wire[-4] & 0x80 else _OUR_OPT
        else:
            question = None
        if question is not None:
            template = self.answers.exact.get(question[:-4].lower() + question[-4:])
            if template is not None:
                if tcp:
                    limit = TCP_LIMIT
                elif opt:
                    payload = wire[-8] << 8 | wire[-7]
                    limit = max(CLASSIC_UDP_PAYLOAD, min(payload, OUR_UDP_PAYLOAD))
                else:
                    limit = CLASSIC_UDP_PAYLOAD
                return _assemble(wire, template, template.exact, question, opt, limit)
        return self._parse_question(wire, tcp)

    def _parse_question(self, wire: bytes, tcp: bool) -> bytes | None:
        size = len(wire)
        position = 12
        starts = []
        while True:
            if position >= size:
                return None
            length = wire[position]
            if length == 0:
                break
            if length > 63:  # a compression pointer, or a label type we do not take
                return None
            starts.append(position - 12)
            position += 1 + length
        end_of_name = position + 1
        end_of_question = end_of_name + 4
        if (
            end_of_name - 12 > MAX_NAME
            or end_of_question > size
            or wire[end_of_name + 2 : end_of_question] != b"\x00\x01"
        ):
            return None
        qtype = wire[end_of_name] << 8 | wire[end_of_name + 1]
        if qtype in _FALLBACK_QTYPES:
            return None
        arcount = wire[10:12]
        if arcount == b"\x00\x00":
            if end_of_question != size:
                return None
            opt = b""
            limit = TCP_LIMIT if tcp else CLASSIC_UDP_PAYLOAD
        elif arcount == b"\x00\x01":
            if size < end_of_question + 11:
                return None
            root, rtype, payload, ttl, rdlength = _OPT_FIXED.unpack_from(wire, end_of_question)
            # The OPT record of EDNS version 0 (the TTL's second octet), its options tiling
            # its data exactly (RFC 6891 section 6.1.2); a padded query goes to the fallback,
            # which pads the response (RFC 7830).
            if root or rtype != _OPT or ttl & 0x00FF0000 or end_of_question + 11 + rdlength != size:
                return None
            position = end_of_question + 11
            while position < size:
                if position + 4 > size:
                    return None
                code, length = _OPTION.unpack_from(wire, position)
                if code == _PADDING:
                    return None
                position += 4 + length
            if position != size:
                return None
            opt = _OUR_OPT_DO if ttl & dns.flags.DO else _OUR_OPT
            # RFC 6891 section 6.2.5: payload sizes below 512 are treated as 512.
            limit = TCP_LIMIT if tcp else max(CLASSIC_UDP_PAYLOAD, min(payload, OUR_UDP_PAYLOAD))
        else:
            return None
        name = wire[12:end_of_name].lower()
        answers = self.answers
        question = wire[12:end_of_question]
        template = answers.exact.get(name + question[-4:])
        if template is None:
            template = answers.lookup(name, starts, qtype)
        return _assemble(wire, template, template.bodies(end_of_name - 12), question, opt, limit)

    def fallback(self, wire: bytes, *, tcp: bool) -> bytes:
        """The answer built with dnspython's object model: the query read by dnspython, the
        response filled by resolve(). Used for the queries the templates do not take; the
        templates' answers are tested against it."""
        flags = struct.unpack_from("!H", wire, 2)[0]
        opcode = (flags & OPCODE_MASK) >> 11
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            if opcode != dns.opcode.QUERY:
                # An UPDATE or other message we could not even read: still NOTIMP.
                return _header_only(wire, dns.rcode.NOTIMP)
            # RFC 1035 section 4.1.1: FORMERR, "unable to interpret the query"; header only,
            # since the question itself may be what is broken.
            return _header_only(wire, dns.rcode.FORMERR)
        if opcode != dns.opcode.QUERY:
            # RFC 1035 section 4.1.1: NOTIMP for a kind of query we do not support.
            return self._finish(query, dns.rcode.NOTIMP, tcp=tcp)
        if query.edns > 0:
            # RFC 6891 section 6.1.3: a version we do not implement gets BADVERS (with our
            # version, 0, in the OPT record).
            return self._finish(query, dns.rcode.BADVERS, tcp=tcp)
        # RFC 9619: a query holds exactly one question.
        if len(query.question) != 1:
            return self._finish(query, dns.rcode.FORMERR, tcp=tcp)
        question = query.question[0]
        if question.rdtype in _BAD_QTYPES:
            return self._finish(query, dns.rcode.FORMERR, tcp=tcp)
        if question.rdclass != dns.rdataclass.IN or question.rdtype in _REFUSED_QTYPES:
            return self._finish(query, dns.rcode.REFUSED, tcp=tcp)
        zone = self.snapshot.find_zone(question.name.canonicalize())
        if zone is None:
            # Not authoritative and no recursion (RA stays 0): REFUSED (RFC 8906 section 3.1.3).
            return self._finish(query, dns.rcode.REFUSED, tcp=tcp)
        response = self._make_response(query)
        resolve(self.snapshot, zone, question.name, question.rdtype, response)
        return self._encode(query, response, tcp=tcp)

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
            limit = TCP_LIMIT
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
        response.additional = required_glue(response)
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
