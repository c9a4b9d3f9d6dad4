"""Changes to hosted zones and records, and the derived records other apps publish.

Every change of a zone's data bumps the zone's SOA serial in the same transaction, which is
also how DNS servers in other processes notice the change (they poll the serials); the DNS
servers of this process are told on commit (dns_zones.changes) and serve the change before
the service returns. Names are kept in normal form (domain_names: zone origins are host
names, record names owner names); record data is validated by dnspython and stored in
presentation format with absolute names.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, F, Q

from dns_zones.changes import zone_data_changed
from dns_zones.models import Record, Zone
from dns_zones.records import (
    RecordError,
    canonical_data,
    check_servable,
    check_ttl,
    check_type,
    txt_kind,
)
from domain_names import DomainNameError, normalize_host, normalize_owner


class ZoneError(ValueError):
    """A zone or record change that is not valid; the message says why."""


@dataclass(frozen=True)
class RecordSpec:
    """A record to publish: absolute `name` in normal form, type, TTL, presentation data."""

    name: str
    rtype: str
    ttl: int
    data: str


@dataclass(frozen=True)
class ZoneSummary:
    origin: str
    serial: int
    records: int
    derived: int


def hosted_zone_for(name: str) -> Zone | None:
    """The most specific hosted zone containing `name` (normal form), or None."""
    labels = name.split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels))]
    zones = {z.origin: z for z in Zone.objects.filter(origin__in=candidates)}
    for candidate in candidates:
        if candidate in zones:
            return zones[candidate]
    return None


def _bump_serial(zone_ids) -> None:
    Zone.objects.filter(id__in=set(zone_ids)).update(serial=F("serial") + 1)
    transaction.on_commit(zone_data_changed)


def normalize_zone_name(name: str) -> str:
    """Return the zone origin `name` in normal form; raise ZoneError when it is not a host name."""
    try:
        return normalize_host(name)
    except DomainNameError as exc:
        raise ZoneError(str(exc)) from None


def _get_zone(origin: str) -> Zone:
    origin = normalize_zone_name(origin)
    try:
        return Zone.objects.get(origin=origin)
    except Zone.DoesNotExist:
        raise ZoneError(f"zone {origin} is not hosted here") from None


def zone_create(*, origin: str) -> tuple[Zone, bool]:
    """Host the zone `origin`; return (zone, created).

    The SOA names the primary server ns1.<zone> and the mailbox hostmaster.<zone>; the apex NS
    is the primary server. Idempotent: an existing zone is returned unchanged. Raises ZoneError
    for an invalid name.
    """
    origin = normalize_zone_name(origin)
    with transaction.atomic():
        zone, created = Zone.objects.get_or_create(
            origin=origin,
            defaults={"primary_ns": f"ns1.{origin}", "hostmaster": f"hostmaster.{origin}"},
        )
        if created:
            transaction.on_commit(zone_data_changed)
    return zone, created


def zone_delete(*, origin: str) -> bool:
    """Stop hosting `origin` and drop its records (derived ones too); return whether it existed.

    Raises ZoneError for an invalid name.
    """
    origin = normalize_zone_name(origin)
    with transaction.atomic():
        deleted, _ = Zone.objects.filter(origin=origin).delete()
        if deleted:
            transaction.on_commit(zone_data_changed)
    return bool(deleted)


def zone_list() -> list[ZoneSummary]:
    """Every hosted zone in name order, with its serial and record counts."""
    zones = Zone.objects.annotate(
        n_records=Count("records"), n_derived=Count("records", filter=~Q(records__source=""))
    ).order_by("origin")
    return [ZoneSummary(z.origin, z.serial, z.n_records, z.n_derived) for z in zones]


def record_list(*, origin: str) -> list[Record]:
    """The records of zone `origin` in name, type, id order; raise ZoneError if not hosted."""
    zone = _get_zone(origin)
    return list(zone.records.order_by("name", "rtype", "id"))


def validate_record(*, origin: str, name: str, rtype: str, ttl: int, data: str) -> RecordSpec:
    """Check an administrator's record for zone `origin` (normal form) and return it normalised.

    `name` is relative to the zone, `@` for the apex, or absolute with a trailing dot, and must
    lie inside the zone. Raises ZoneError naming what is wrong: the name, the type (SOA and
    unsupported types are refused), the TTL range, data that dnspython cannot parse for the
    type, or a CNAME beside other data (RFC 1034 section 3.6.2).
    """
    try:
        abs_name = normalize_owner(name, origin=origin)
        rtype = check_type(rtype)
        ttl = check_ttl(ttl)
        text = canonical_data(rtype, data, origin=origin)
    except (DomainNameError, RecordError) as exc:
        raise ZoneError(str(exc)) from None
    if abs_name != origin and not abs_name.endswith("." + origin):
        raise ZoneError(f"{abs_name} is not inside zone {origin}")
    if rtype == "CNAME" and abs_name == origin:
        raise ZoneError("a CNAME cannot be at the zone apex (RFC 1912 section 2.4)")
    if rtype == "NS" and abs_name == origin:
        raise ZoneError("the apex NS records are the zone's name servers; set them on the zone")
    return RecordSpec(abs_name, rtype, ttl, text)


def _check_servable(spec: RecordSpec, others) -> None:
    """Raise ZoneError when `spec` with the `others` data of its RRset could not be served."""
    try:
        check_servable(spec.name, spec.rtype, [*others, spec.data])
    except RecordError as exc:
        raise ZoneError(str(exc)) from None


def record_add(
    *, origin: str, name: str, rtype: str, data: str, ttl: int | None = None
) -> tuple[Record, bool]:
    """Add an administrator's record to zone `origin`; return (record, created).

    `ttl` defaults to the zone's default TTL. Idempotent: the same name, type and data returns
    the existing record. Bumps the zone serial when a record is created. Raises ZoneError for a
    zone not hosted here, an invalid record (see validate_record), or a conflict between a
    CNAME and other data at the same name.
    """
    with transaction.atomic():
        zone = _get_zone(origin)
        spec = validate_record(
            origin=zone.origin,
            name=name,
            rtype=rtype,
            ttl=zone.default_ttl if ttl is None else ttl,
            data=data,
        )
        existing = Record.objects.filter(
            zone=zone, name=spec.name, rtype=spec.rtype, data=spec.data, source=""
        ).first()
        if existing is not None:
            return existing, False
        _withdraw_conflicting(zone, spec)
        others = Record.objects.filter(zone=zone, name=spec.name)
        if spec.rtype == "CNAME" and others.exists():
            raise ZoneError(
                f"{spec.name} already has records; a CNAME must be alone (RFC 1034 section 3.6.2)"
            )
        if spec.rtype != "CNAME" and others.filter(rtype="CNAME").exists():
            raise ZoneError(f"{spec.name} is a CNAME; it cannot have other records (RFC 1034 section 3.6.2)")
        _check_servable(spec, others.filter(rtype=spec.rtype).values_list("data", flat=True))
        record = Record.objects.create(
            zone=zone, name=spec.name, rtype=spec.rtype, ttl=spec.ttl, data=spec.data, source=""
        )
        _bump_serial([zone.id])
    return record, True


def record_delete(*, origin: str, record_id: int) -> bool:
    """Delete the administrator's record `record_id` of zone `origin`; return whether it existed.

    Raises ZoneError for a zone not hosted here or a derived record (those change only
    through the service that derives them). Bumps the zone serial when a record is deleted.
    """
    with transaction.atomic():
        zone = _get_zone(origin)
        record = Record.objects.filter(zone=zone, id=record_id).first()
        if record is None:
            return False
        if record.derived:
            raise ZoneError(f"record {record_id} is derived from {record.source} and cannot be deleted here")
        record.delete()
        _bump_serial([zone.id])
    return True


def record_update(*, record_id: int, name: str, rtype: str, ttl: int, data: str) -> Record:
    """Change an administrator's record (the Django admin's edit form); return it.

    Same validation as record_add; raises ZoneError for a derived record or invalid data.
    Bumps the zone serial.
    """
    with transaction.atomic():
        record = Record.objects.select_related("zone").select_for_update().get(id=record_id)
        if record.derived:
            raise ZoneError(f"record {record_id} is derived from {record.source} and cannot be changed here")
        spec = validate_record(origin=record.zone.origin, name=name, rtype=rtype, ttl=ttl, data=data)
        _withdraw_conflicting(record.zone, spec)
        rrset = Record.objects.filter(zone=record.zone, name=spec.name, rtype=spec.rtype).exclude(
            id=record.id
        )
        _check_servable(spec, rrset.values_list("data", flat=True))
        record.name, record.rtype, record.ttl, record.data = spec.name, spec.rtype, spec.ttl, spec.data
        record.save(update_fields=["name", "rtype", "ttl", "data"])
        _bump_serial([record.zone_id])
    return record


def zone_touch(*, zone_id: int) -> None:
    """Bump the serial of zone `zone_id` after its SOA or NS fields changed (the admin form)."""
    with transaction.atomic():
        _bump_serial([zone_id])


def replace_derived_records(*, source: str, records: list[RecordSpec]) -> int:
    """Make the records derived from `source` exactly `records`; return how many are published.

    Each record goes into the hosted zone that contains its name; a record whose name is in no
    hosted zone is not published, nor one the administrator's own records at its name stand in
    for (a TXT of the same version tag, an address, MX or SRV record of that type, anything
    beside a CNAME): what the administrator set by hand is never overwritten, and an
    administrator's record added later withdraws the derived one it replaces (record_add).
    Names are normalised and data is validated like an administrator's record. Idempotent:
    when the records are already exactly these, nothing
    changes (and no serial moves). Raises ZoneError for an empty source or an invalid record.
    """
    if not source:
        raise ZoneError("a derived record needs a source")
    with transaction.atomic():
        wanted = []
        for spec in records:
            try:
                name = normalize_owner(spec.name)
                rtype = check_type(spec.rtype)
                ttl = check_ttl(spec.ttl)
                canonical_data(rtype, spec.data)
            except (DomainNameError, RecordError) as exc:
                raise ZoneError(str(exc)) from None
            zone = hosted_zone_for(name)
            if zone is not None:
                # The data is stored as given (validated above): a DKIM key stays one readable
                # string and is split into 255-octet strings only on the wire.
                wanted.append((zone.id, name, rtype, ttl, spec.data))
        admin = _admin_records({(w[0], w[1]) for w in wanted})
        wanted = [
            w for w in wanted if not any(stands_in_for(w[2], w[4], r) for r in admin.get((w[0], w[1]), []))
        ]
        old = list(Record.objects.filter(source=source))
        if sorted((r.zone_id, r.name, r.rtype, r.ttl, r.data) for r in old) == sorted(wanted):
            return len(wanted)
        Record.objects.filter(source=source).delete()
        Record.objects.bulk_create(
            [Record(zone_id=z, name=n, rtype=t, ttl=ttl, data=d, source=source) for z, n, t, ttl, d in wanted]
        )
        _bump_serial({r.zone_id for r in old} | {w[0] for w in wanted})
    return len(wanted)


def stands_in_for(rtype: str, data: str, admin: tuple[str, str]) -> bool:
    """Whether an administrator's record (type, data) at a name stands in for a derived
    record of `rtype` and `data` there: the administrator's records are never overwritten, so
    the derived one is not published. Any record rules out a derived CNAME and a CNAME any
    other derived record (RFC 1034 section 3.6.2); a TXT yields to a TXT of the same kind
    (version tag); other types yield to the administrator's records of their type."""
    admin_type, admin_data = admin
    if rtype == "CNAME" or admin_type == "CNAME":
        return True
    if rtype in ("A", "AAAA") and admin_type in ("A", "AAAA"):
        return True
    if rtype != admin_type:
        return False
    if rtype == "TXT":
        kind = txt_kind(data)
        return bool(kind) and kind == txt_kind(admin_data)
    return True


def _admin_records(names: set[tuple[int, str]]) -> dict[tuple[int, str], list[tuple[str, str]]]:
    """The administrator's (type, data) records at each (zone id, name) of `names`."""
    out: dict[tuple[int, str], list[tuple[str, str]]] = {}
    if not names:
        return out
    query = Record.objects.filter(
        source="", name__in={n for _, n in names}, zone_id__in={z for z, _ in names}
    )
    for zone_id, name, rtype, data in query.values_list("zone_id", "name", "rtype", "data"):
        out.setdefault((zone_id, name), []).append((rtype, data))
    return out


def _withdraw_conflicting(zone: Zone, spec: RecordSpec) -> None:
    """Before an administrator's record `spec` is stored: remove the derived records it stands
    in for (see stands_in_for), so the zone never serves both (two SPF records are an error,
    RFC 7208 section 4.5)."""
    for record in Record.objects.filter(zone=zone, name=spec.name).exclude(source=""):
        if stands_in_for(record.rtype, record.data, (spec.rtype, spec.data)):
            record.delete()


def withdraw_derived_records(*, source: str) -> int:
    """Remove every record derived from `source`; return how many there were."""
    if not source:
        raise ZoneError("a derived record needs a source")
    with transaction.atomic():
        old = list(Record.objects.filter(source=source).values_list("zone_id", flat=True))
        Record.objects.filter(source=source).delete()
        _bump_serial(old)
    return len(old)
