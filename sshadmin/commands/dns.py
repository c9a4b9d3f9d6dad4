"""Console commands of the /dns group: hosted zones and their records.

Each handler parses its arguments, calls one dns_zones service and formats the result;
ZoneError from the service becomes a CommandError (one error line).
"""

from __future__ import annotations

from dns_zones.services import (
    ZoneError,
    normalize_zone_name,
    record_add,
    record_delete,
    record_list,
    validate_record,
    zone_create,
    zone_delete,
    zone_list,
)
from sshadmin.commands import CommandError, Context, command

_STRING_TYPES = {"TXT", "SPF"}


@command("/dns zones create", usage="/dns zones create ZONE", summary="host a DNS zone here")
def zones_create(ctx: Context, zone: str) -> str:
    try:
        obj, created = zone_create(origin=zone)
    except ZoneError as exc:
        raise CommandError(str(exc)) from None
    if not created:
        return f"zone {obj.origin} already exists (serial {obj.serial})"
    return (
        f"zone {obj.origin} created: SOA {obj.primary_ns}. {obj.hostmaster}. serial {obj.serial}, "
        f"NS {obj.primary_ns}."
    )


@command("/dns zones list", usage="/dns zones list", summary="list the hosted zones")
def zones_list(ctx: Context) -> str:
    zones = zone_list()
    if not zones:
        return "no zones hosted"
    return "\n".join(
        f"{z.origin}  serial {z.serial}  records {z.records} ({z.derived} derived)" for z in zones
    )


@command(
    "/dns zones delete", usage="/dns zones delete ZONE", summary="stop hosting a zone and drop its records"
)
def zones_delete(ctx: Context, zone: str) -> str:
    try:
        deleted = zone_delete(origin=zone)
    except ZoneError as exc:
        raise CommandError(str(exc)) from None
    if not deleted:
        raise CommandError(f"zone {_origin(zone)} is not hosted here")
    return f"zone {_origin(zone)} deleted"


def _origin(zone: str) -> str:
    try:
        return normalize_zone_name(zone)
    except ZoneError as exc:
        raise CommandError(str(exc)) from None


def _quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _data(rtype: str, words: list[str]) -> str:
    # The console line was split like a shell line, which removed the quotes: for TXT each
    # word is one character-string ("v=spf1 mx -all" in quotes stays one string).
    if rtype.upper() in _STRING_TYPES:
        return " ".join(_quote(w) for w in words)
    return " ".join(words)


@command(
    "/dns records add",
    usage="/dns records add ZONE NAME TYPE [TTL] DATA...",
    summary="add a record (NAME relative to the zone, @, or absolute with a trailing dot)",
)
def records_add(ctx: Context, zone: str, name: str, rtype: str, *rest: str) -> str:
    words = list(rest)
    ttl = None
    # A number right after TYPE is the TTL when what follows is still valid data; MX "10 mail"
    # without a TTL is data only.
    if len(words) >= 2 and words[0].isdigit():
        try:
            validate_record(
                origin=_origin(zone),
                name=name,
                rtype=rtype,
                ttl=int(words[0]),
                data=_data(rtype, words[1:]),
            )
        except ZoneError:
            pass
        else:
            ttl = int(words.pop(0))
    if not words:
        raise CommandError("missing record data")
    try:
        record, created = record_add(origin=zone, name=name, rtype=rtype, ttl=ttl, data=_data(rtype, words))
    except ZoneError as exc:
        raise CommandError(str(exc)) from None
    state = "added" if created else "already exists"
    return f"record {record.id} {state}: {record.name}. {record.ttl} IN {record.rtype} {record.data}"


@command("/dns records list", usage="/dns records list ZONE", summary="list a zone's records with their ids")
def records_list(ctx: Context, zone: str) -> str:
    try:
        records = record_list(origin=zone)
    except ZoneError as exc:
        raise CommandError(str(exc)) from None
    if not records:
        return f"zone {_origin(zone)} has no records besides its SOA and NS"
    lines = []
    for r in records:
        mark = f"  (derived from {r.source}, read-only)" if r.derived else ""
        lines.append(f"{r.id:>6}  {r.name}. {r.ttl} IN {r.rtype} {r.data}{mark}")
    return "\n".join(lines)


@command("/dns records del", usage="/dns records del ZONE ID", summary="delete a record by its id")
def records_del(ctx: Context, zone: str, record_id: str) -> str:
    if not record_id.isdigit():
        raise CommandError(f"record id must be a number, got {record_id!r}")
    try:
        deleted = record_delete(origin=zone, record_id=int(record_id))
    except ZoneError as exc:
        raise CommandError(str(exc)) from None
    if not deleted:
        raise CommandError(f"zone {_origin(zone)} has no record {record_id}")
    return f"record {record_id} deleted"
