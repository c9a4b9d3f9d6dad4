"""Stored messages in the Django admin: listed with their metadata, shown with their bytes."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from mail.models import Message, MessageContent
from mail.services.storage import read_content


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "received_at",
        "mailbox",
        "folder_name",
        "envelope_from",
        "subject",
        "size",
        "seen",
        "flagged",
    )
    list_filter = ("folder__name", "seen", "flagged", "folder__mailbox__domain")
    search_fields = ("subject", "envelope_from", "envelope_to", "header_from", "message_id")
    list_select_related = ("folder__mailbox__domain",)
    date_hierarchy = "received_at"
    readonly_fields = (
        "folder",
        "content",
        "envelope_from",
        "envelope_to",
        "header_from",
        "header_to",
        "subject",
        "date",
        "message_id",
        "size",
        "received_at",
        "raw_message",
    )
    exclude = ("prepended_headers",)

    @admin.display(description="mailbox", ordering="folder__mailbox__local_part")
    def mailbox(self, obj: Message) -> str:
        return obj.folder.mailbox.address

    @admin.display(description="folder", ordering="folder__name")
    def folder_name(self, obj: Message) -> str:
        return obj.folder.name

    @admin.display(description="message")
    def raw_message(self, obj: Message) -> str:
        try:
            raw = bytes(obj.prepended_headers) + read_content(obj.content)
        except OSError as exc:
            return f"(cannot read the stored message: {exc})"
        return format_html("<pre>{}</pre>", raw.decode("utf-8", "replace"))

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(MessageContent)
class MessageContentAdmin(admin.ModelAdmin):
    list_display = ("storage_name", "size", "created_at")
    readonly_fields = ("storage_name", "size", "created_at")

    def has_add_permission(self, request) -> bool:
        return False
