"""The admin's certificate pages: read-only (certificates change only by ACME orders)."""

from django.contrib import admin
from django.utils import timezone

from tls.models import Certificate


@admin.register(Certificate)
class CertificateAdmin(admin.ModelAdmin):
    list_display = (
        "names_text",
        "issuer",
        "not_after",
        "renew_after",
        "days_left",
        "requested",
        "created_at",
    )
    search_fields = ("names", "issuer")
    fields = (
        "names_text",
        "issuer",
        "not_before",
        "not_after",
        "renew_after",
        "directory",
        "created_at",
        "chain_pem",
    )
    readonly_fields = fields

    @admin.display(description="names")
    def names_text(self, obj: Certificate) -> str:
        return ", ".join(obj.names)

    @admin.display(description="days left")
    def days_left(self, obj: Certificate) -> int:
        return (obj.not_after - timezone.now()).days

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
