"""The outbound queue in the Django admin: rows with their recipients; retry, hold, release
and delete go through mail.delivery.queue like the console's /mail queue commands."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html
from django.utils.text import Truncator

from mail.delivery.queue import QueueError, queue_delete, queue_hold, queue_release, queue_retry
from mail.models import OutboundDelivery, OutboundRecipient


class OutboundRecipientInline(admin.TabularInline):
    model = OutboundRecipient
    fields = ("address", "status", "reply")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _apply(modeladmin, request, queryset, fn, done: str) -> None:
    count = 0
    for row_id in queryset.values_list("id", flat=True):
        try:
            fn(id=row_id)
            count += 1
        except QueueError as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)
    entries = "queue entry" if count == 1 else "queue entries"
    modeladmin.message_user(request, f"{count} {entries} {done}", messages.SUCCESS)


@admin.register(OutboundDelivery)
class OutboundDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "status",
        "envelope_from",
        "domain",
        "recipient_list",
        "attempts",
        "next_attempt_at",
        "last_reply_summary",
    )
    list_filter = ("status", "domain")
    search_fields = ("envelope_from", "domain", "recipients__address", "last_reply")
    readonly_fields = (
        "content",
        "envelope_from",
        "domain",
        "helo_hostname",
        "status",
        "attempts",
        "next_attempt_at",
        "last_attempt_at",
        "last_reply",
        "expires_at",
        "delay_notified",
        "created_at",
        "updated_at",
    )
    inlines = [OutboundRecipientInline]
    actions = ["retry", "hold", "release", "delete_entries"]

    @admin.display(description="last reply", ordering="last_reply")
    def last_reply_summary(self, obj: OutboundDelivery) -> str:
        # The whole reply is on the row's page and in the tooltip.
        return format_html('<span title="{}">{}</span>', obj.last_reply, Truncator(obj.last_reply).chars(48))

    @admin.display(description="recipients")
    def recipient_list(self, obj: OutboundDelivery) -> str:
        return ", ".join(r.address for r in obj.recipients.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("recipients")

    def get_actions(self, request):
        actions = super().get_actions(request)
        # Deletion goes through the queue service (no bounce, one transaction per row).
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The list's actions change rows; a row's own page is read-only (no Save button).
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Retry now", permissions=["change"])
    def retry(self, request, queryset):
        _apply(self, request, queryset, queue_retry, "set to be attempted now")

    @admin.action(description="Hold", permissions=["change"])
    def hold(self, request, queryset):
        _apply(self, request, queryset, queue_hold, "held")

    @admin.action(description="Release", permissions=["change"])
    def release(self, request, queryset):
        _apply(self, request, queryset, queue_release, "released")

    @admin.action(description="Delete without a bounce", permissions=["change"])
    def delete_entries(self, request, queryset):
        _apply(self, request, queryset, queue_delete, "deleted")
