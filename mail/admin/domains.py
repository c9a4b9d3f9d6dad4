"""Django admin for mail domains: settings editable, private keys never shown.

The DKIM private keys are excluded from every form and page; the matching public TXT records
are shown read-only. Changes made here go through the same services as the console for DKIM
(key generation, publishing the records) and rewrite the domain's TOML file.
"""

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from domain_names import DomainNameError, normalize_host
from mail.addresses import AddressError, parse_address
from mail.models import MailDomain
from mail.services import dkim_rotation
from mail.services import domains as services
from mail.services.dns_status import zone_lines

# What an administrator sets; the rest (selectors, keys, records) follows from it.
EDITABLE = (
    "name",
    "enabled",
    "submission_enabled",
    "submission_auth",
    "outbound_hostname",
    "dkim_enabled",
    "dmarc_policy",
    "report_address",
    "mta_sts_mode",
)


class KeptChoiceField(forms.ChoiceField):
    """A choice that may be left out of a post: then it keeps its value and is not changed."""

    def has_changed(self, initial, data) -> bool:
        return bool(data) and super().has_changed(initial, data)


class MailDomainForm(forms.ModelForm):
    """Names in normal form (IDNA, lower case), checked as the console checks them. The DNS
    policy fields may be left out of a post: they keep their current values."""

    dmarc_policy = KeptChoiceField(
        choices=MailDomain.DmarcPolicy.choices, required=False, label="DMARC policy"
    )
    mta_sts_mode = KeptChoiceField(
        choices=MailDomain.MtaStsMode.choices, required=False, label="MTA-STS mode"
    )

    class Meta:
        model = MailDomain
        fields = EDITABLE
        labels = {"dkim_enabled": "DKIM signing"}

    def clean_name(self) -> str:
        try:
            name = normalize_host(self.cleaned_data["name"].strip())
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None
        if MailDomain.objects.filter(name=name).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(f"mail domain {name} exists")
        return name

    def clean_dmarc_policy(self) -> str:
        return self.cleaned_data["dmarc_policy"] or self.instance.dmarc_policy

    def clean_mta_sts_mode(self) -> str:
        return self.cleaned_data["mta_sts_mode"] or self.instance.mta_sts_mode

    def clean_report_address(self) -> str:
        value = self.cleaned_data["report_address"].strip()
        if not value:
            return ""
        try:
            return str(parse_address(value))
        except AddressError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_outbound_hostname(self) -> str:
        value = self.cleaned_data["outbound_hostname"].strip()
        if not value:
            return ""
        try:
            return normalize_host(value)
        except DomainNameError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(MailDomain)
class MailDomainAdmin(admin.ModelAdmin):
    form = MailDomainForm
    list_display = ("name", "enabled", "submission_enabled", "submission_auth", "dkim_enabled", "hostname")
    list_filter = ("enabled", "submission_enabled", "dkim_enabled")
    search_fields = ("name",)
    fields = (
        *EDITABLE,
        "dkim_selectors",
        "dkim_key_rotation",
        "dkim_keys",
        "dkim_dns_records",
        "dns_records",
        "created_at",
        "updated_at",
    )
    readonly_fields = (
        "dkim_selectors",
        "dkim_key_rotation",
        "dkim_keys",
        "dkim_dns_records",
        "dns_records",
        "created_at",
        "updated_at",
    )

    def get_readonly_fields(self, request, obj=None):
        # The name is the key of the TOML file and of the derived DNS records.
        return (*self.readonly_fields, "name") if obj is not None else self.readonly_fields

    @admin.display(description="outbound hostname")
    def hostname(self, obj: MailDomain) -> str:
        return obj.effective_hostname

    @admin.display(description="DKIM selectors")
    def dkim_selectors(self, obj: MailDomain) -> str:
        return f"{obj.dkim_selector} (Ed25519), {obj.dkim_rsa_selector} (RSA)"

    @admin.display(description="DKIM key rotation")
    def dkim_key_rotation(self, obj: MailDomain) -> str:
        return (dkim_rotation.rotation_state(obj) if obj.pk else "") or "none in progress"

    @admin.display(description="DKIM keys")
    def dkim_keys(self, obj: MailDomain) -> str:
        have = [
            k
            for k, pem in (("Ed25519", obj.dkim_private_key_pem), ("RSA", obj.dkim_rsa_private_key_pem))
            if pem
        ]
        return ", ".join(have) + " (private keys are not shown)" if have else "none"

    @admin.display(description="DKIM TXT records")
    def dkim_dns_records(self, obj: MailDomain) -> str:
        records = services.dkim_records(obj) if obj.pk else []
        if not records:
            return "-"
        return format_html_join(
            "", '<p><code style="word-break: break-all">{}</code></p>', ((r.zone_line(),) for r in records)
        )

    @admin.display(description="DNS records to publish")
    def dns_records(self, obj: MailDomain) -> str:
        if not obj.pk:
            return "-"
        lines = format_html_join(
            "", '<p><code style="word-break: break-all">{}</code></p>', ((line,) for line in zone_lines(obj))
        )
        return lines + format_html(
            "<p>In a zone hosted here they are published and kept current; the dashboard shows which "
            "are served. <code>/mail domains check {}</code> on the console looks them up.</p>",
            obj.name,
        )

    def save_model(self, request, obj: MailDomain, form, change):
        notes = []
        if not change:
            creation = services.domain_create(name=obj.name)
            obj.pk, obj.name = creation.domain.pk, creation.domain.name
            notes.extend(creation.notes)
        data = form.cleaned_data
        dkim_now = services.get_domain(obj.name).dkim_enabled
        # On add, an unticked box does not undo the automatic DKIM set-up of a hosted zone.
        dkim = data["dkim_enabled"] if data["dkim_enabled"] != dkim_now and (change or not dkim_now) else None
        result = services.domain_set(
            name=obj.name,
            enabled=data["enabled"],
            submission_enabled=data["submission_enabled"],
            submission_auth=MailDomain.SubmissionAuth(data["submission_auth"]),
            outbound_hostname=data["outbound_hostname"] or None,
            dmarc_policy=MailDomain.DmarcPolicy(data["dmarc_policy"]),
            mta_sts_mode=MailDomain.MtaStsMode(data["mta_sts_mode"]),
            report_address=data["report_address"],
            dkim_enabled=dkim,
        )
        obj.__dict__.update(
            {f.attname: getattr(result.domain, f.attname) for f in MailDomain._meta.concrete_fields}
        )
        if change or result.changed:
            notes.extend(result.notes)
        for note in notes:
            self.message_user(request, note)

    def delete_model(self, request, obj: MailDomain):
        services.domain_delete(name=obj.name)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.domain_delete(name=obj.name)
