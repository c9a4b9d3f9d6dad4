"""Django admin for hosted zones and records.

Record forms are validated by the same service validation as the console
(dns_zones.services.validate_record), and saved through the services so the zone serial
moves. Derived records (with a source) are shown but cannot be changed or deleted here.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count

from dns_zones.models import Record, Zone
from dns_zones.services import (
    ZoneError,
    record_add,
    record_delete,
    record_update,
    validate_record,
    zone_create,
    zone_delete,
    zone_touch,
)
from domain_names import DomainNameError, normalize_host, normalize_owner


class ZoneForm(forms.ModelForm):
    class Meta:
        model = Zone
        fields = [
            "origin", "primary_ns", "hostmaster", "nameservers", "refresh", "retry", "expire", "minimum",
            "default_ttl",
        ]  # fmt: skip

    def clean_origin(self):
        try:
            return normalize_host(self.cleaned_data["origin"])
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None

    def _clean_host(self, field):
        try:
            return normalize_owner(self.cleaned_data[field])
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_primary_ns(self):
        return self._clean_host("primary_ns")

    def clean_hostmaster(self):
        # The SOA RNAME: a mailbox written as a name ("hostmaster.example.com") or, for
        # convenience, as an address ("hostmaster@example.com"), RFC 1035 section 8.
        value = self.cleaned_data["hostmaster"].strip()
        local, at, domain = value.rpartition("@")
        if at and (not local or "\\" in local):
            raise forms.ValidationError(f"invalid mailbox {value!r}")
        try:
            return f"{local}@{normalize_owner(domain)}" if at else normalize_owner(value)
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_nameservers(self):
        lines = [line.strip() for line in self.cleaned_data["nameservers"].splitlines() if line.strip()]
        try:
            return "\n".join(normalize_owner(line) for line in lines)
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None


class RecordInline(admin.TabularInline):
    model = Record
    fields = ["name", "rtype", "ttl", "data", "source"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Zone)
class ZoneAdmin(admin.ModelAdmin):
    form = ZoneForm
    list_display = ["origin", "serial", "primary_ns", "hostmaster", "record_count", "updated_at"]
    search_fields = ["origin", "primary_ns"]
    readonly_fields = ["serial", "created_at", "updated_at"]
    inlines = [RecordInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_records=Count("records"))

    @admin.display(description="records", ordering="n_records")
    def record_count(self, obj: Zone) -> int:
        return obj.n_records

    def save_model(self, request, obj, form, change):
        if not change:
            # Hosted like /dns zones create, then given the form's SOA and NS values.
            zone, _ = zone_create(origin=obj.origin)
            obj.pk, obj.serial, obj.created_at = zone.pk, zone.serial, zone.created_at
            obj._state.adding = False
        super().save_model(request, obj, form, change)
        if change:
            zone_touch(zone_id=obj.id)

    def delete_model(self, request, obj):
        zone_delete(origin=obj.origin)

    def delete_queryset(self, request, queryset):
        for origin in queryset.values_list("origin", flat=True):
            zone_delete(origin=origin)


class RecordKindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("admin", "administrator's"), ("derived", "derived (read-only)")]

    def queryset(self, request, queryset):
        if self.value() == "admin":
            return queryset.filter(source="")
        if self.value() == "derived":
            return queryset.exclude(source="")
        return queryset


class RecordForm(forms.ModelForm):
    class Meta:
        model = Record
        fields = ["zone", "name", "rtype", "ttl", "data"]

    def clean(self):
        cleaned = super().clean()
        zone = cleaned.get("zone")
        if zone is None or self.errors:
            return cleaned
        try:
            spec = validate_record(
                origin=zone.origin,
                name=cleaned["name"],
                rtype=cleaned["rtype"],
                ttl=cleaned["ttl"],
                data=cleaned["data"],
            )
        except ZoneError as exc:
            raise forms.ValidationError(str(exc)) from None
        # RFC 1034 section 3.6.2: a CNAME is alone at its name (checked here too, so the save
        # below cannot fail on it).
        others = Record.objects.filter(zone=zone, name=spec.name).exclude(pk=self.instance.pk)
        if spec.rtype == "CNAME" and others.exists():
            raise forms.ValidationError(f"{spec.name} already has records; a CNAME must be alone")
        if spec.rtype != "CNAME" and others.filter(rtype="CNAME").exists():
            raise forms.ValidationError(f"{spec.name} is a CNAME; it cannot have other records")
        # Names in the form may be relative (`www`, `@`) or absolute with a trailing dot.
        cleaned.update(name=spec.name, rtype=spec.rtype, ttl=spec.ttl, data=spec.data)
        return cleaned


@admin.register(Record)
class RecordAdmin(admin.ModelAdmin):
    form = RecordForm
    list_display = ["name", "rtype", "ttl", "data", "zone", "source"]
    list_filter = ["zone", "rtype", RecordKindFilter]
    search_fields = ["name", "data", "source"]
    list_select_related = ["zone"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.derived:
            return ["zone", "name", "rtype", "ttl", "data", "source"]
        return ["source"]

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.derived:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.derived:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        if change:
            record_update(record_id=obj.id, name=obj.name + ".", rtype=obj.rtype, ttl=obj.ttl, data=obj.data)
        else:
            record, _ = record_add(
                origin=obj.zone.origin, name=obj.name + ".", rtype=obj.rtype, ttl=obj.ttl, data=obj.data
            )
            obj.pk = record.pk

    def delete_model(self, request, obj):
        record_delete(origin=obj.zone.origin, record_id=obj.id)

    def delete_queryset(self, request, queryset):
        derived = queryset.exclude(source="").count()
        if derived:
            messages.warning(request, f"{derived} derived record(s) left in place: they are read-only here")
        for record in queryset.filter(source="").select_related("zone"):
            record_delete(origin=record.zone.origin, record_id=record.id)
