"""The zone data the DNS server answers from: an immutable in-memory snapshot.

`load_snapshot()` and `data_version()` touch the database and run in a worker thread, never on
the event loop; the Snapshot they build is plain dnspython objects and is only read there.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from django.db import connection

from dns_zones.models import Record, Zone
from dns_zones.records import RecordError, parse_rdata

log = logging.getLogger("dns_zones")

IN = dns.rdataclass.IN


@dataclass
class ZoneData:
    """One hosted zone: its RRsets by owner name and type, and every name that exists.

    `names` includes empty non-terminals (RFC 8020: below them there is data, so they are
    answered NODATA, not NXDOMAIN). `cuts` are the delegation points below the apex.
    """

    origin: dns.name.Name
    soa: dns.rrset.RRset
    negative_soa: dns.rrset.RRset
    nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = field(default_factory=dict)
    names: set[dns.name.Name] = field(default_factory=set)
    cuts: set[dns.name.Name] = field(default_factory=set)

    def add(self, name: dns.name.Name, ttl: int, rdata: dns.rdata.Rdata) -> None:
        node = self.nodes.setdefault(name, {})
        rrset = node.get(rdata.rdtype)
        if rrset is None:
            rrset = node[rdata.rdtype] = dns.rrset.RRset(name, IN, rdata.rdtype)
            rrset.update_ttl(ttl)
        else:
            # RFC 2181 section 5.2: the TTLs of an RRset are equal; we serve the smallest.
            rrset.update_ttl(min(ttl, rrset.ttl))
        rrset.add(rdata)
        while name != self.origin and name not in self.names:
            self.names.add(name)
            name = name.parent()
        self.names.add(self.origin)


@dataclass
class Snapshot:
    """Every hosted zone by origin; `version` is the data_version() it was loaded at."""

    zones: dict[dns.name.Name, ZoneData]
    version: tuple = ()

    def find_zone(self, qname: dns.name.Name) -> ZoneData | None:
        """The most specific hosted zone containing `qname`, or None."""
        name = qname
        while True:
            zone = self.zones.get(name)
            if zone is not None:
                return zone
            if len(name) <= 1:
                return None
            name = name.parent()


def data_version() -> tuple:
    """A cheap fingerprint of all zone data: changes whenever any zone or record changes.

    Every record change bumps its zone's serial (dns_zones.services), zone edits touch
    updated_at, and zone creation or deletion changes the count and the highest id.
    Every DNS process polls it many times a second, so it is one plain SELECT: the same
    aggregate built by the ORM takes about 1.4 ms of CPU against 0.01 ms (SQLite), which made
    an idle DNS process use 3% of a core.
    """
    with connection.cursor() as cursor:
        cursor.execute(_version_sql())
        return tuple(cursor.fetchone())


@functools.cache
def _version_sql() -> str:
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        return quote(Zone._meta.get_field(name).column)

    return (
        f"SELECT COUNT(*), SUM({column('serial')}), MAX({column('id')}), MAX({column('updated_at')}) "
        f"FROM {quote(Zone._meta.db_table)}"
    )


def _mailbox_name(hostmaster: str) -> str:
    # RFC 1035 section 8: the SOA RNAME is a mailbox with "@" replaced by "."; a dot inside
    # the local part is escaped.
    if "@" in hostmaster:
        local, _, domain = hostmaster.rpartition("@")
        return local.replace(".", "\\.") + "." + domain.rstrip(".") + "."
    return hostmaster.rstrip(".") + "."


def _absolute(text: str) -> dns.name.Name:
    return dns.name.from_text(text.rstrip(".") + ".")


def build_zone(zone: Zone, records) -> ZoneData:
    """The ZoneData of `zone` with its SOA, apex NS and `records` (Record rows of the zone).

    A record whose data no longer parses or whose name is outside the zone is left out with a
    warning, so one bad row cannot take the zone down.
    """
    origin = _absolute(zone.origin)
    serial = zone.serial % 2**32  # RFC 1982: the SOA serial is a 32-bit sequence number.
    soa_rdata = dns.rdata.from_text(
        IN,
        dns.rdatatype.SOA,
        f"{_absolute(zone.primary_ns)} {_mailbox_name(zone.hostmaster)} {serial} "
        f"{zone.refresh} {zone.retry} {zone.expire} {zone.minimum}",
    )
    soa = dns.rrset.RRset(origin, IN, dns.rdatatype.SOA)
    soa.update_ttl(zone.default_ttl)
    soa.add(soa_rdata)
    # RFC 2308 section 3: the SOA in a negative answer carries min(SOA TTL, SOA MINIMUM).
    negative = dns.rrset.RRset(origin, IN, dns.rdatatype.SOA)
    negative.update_ttl(min(zone.default_ttl, zone.minimum))
    negative.add(soa_rdata)
    data = ZoneData(origin=origin, soa=soa, negative_soa=negative)
    data.nodes[origin] = {dns.rdatatype.SOA: soa}
    data.names.add(origin)
    nameservers = [line.strip() for line in zone.nameservers.splitlines() if line.strip()] or [
        zone.primary_ns
    ]
    for ns in nameservers:
        data.add(origin, zone.default_ttl, dns.rdata.from_text(IN, dns.rdatatype.NS, str(_absolute(ns))))
    for record in records:
        try:
            name = _absolute(record.name)
            if not name.is_subdomain(origin):
                raise RecordError(f"{record.name} is outside the zone")
            rdata = parse_rdata(record.rtype, record.data)
        except (RecordError, dns.exception.DNSException) as exc:
            log.warning("zone %s: record %s left out: %s", zone.origin, record.id, exc)
            continue
        data.add(name, record.ttl, rdata)
        if rdata.rdtype == dns.rdatatype.NS and name != origin:
            data.cuts.add(name)
    return data


def load_snapshot() -> Snapshot:
    """Read every hosted zone and record from the database into a new Snapshot."""
    version = data_version()
    by_zone: dict[int, list[Record]] = {}
    for record in Record.objects.order_by("id"):
        by_zone.setdefault(record.zone_id, []).append(record)
    zones = {}
    for zone in Zone.objects.all():
        try:
            data = build_zone(zone, by_zone.get(zone.id, []))
        except (dns.exception.DNSException, ValueError) as exc:
            log.warning("zone %s left out: %s", zone.origin, exc)
            continue
        zones[data.origin] = data
    return Snapshot(zones=zones, version=version)
