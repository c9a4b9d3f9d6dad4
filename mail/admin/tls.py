"""Django admin for outbound TLS: the MTA-STS policies of remote domains as cached, and the
daily TLS results per recipient domain (what TLS-RPT reports are made of). Both read-only:
the delivery workers write them."""

from django.contrib import admin

from mail.models import MtaStsPolicy, TlsResult


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(MtaStsPolicy)
class MtaStsPolicyAdmin(ReadOnlyAdmin):
    list_display = ("domain", "mode", "policy_id", "mx", "fetched_at", "expires_at")
    list_filter = ("mode",)
    search_fields = ("domain",)


@admin.register(TlsResult)
class TlsResultAdmin(ReadOnlyAdmin):
    list_display = ("day", "domain", "policy_type", "mx_host", "result", "count")
    list_filter = ("result", "policy_type", "day")
    search_fields = ("domain", "mx_host")
    date_hierarchy = "day"
