"""Stored messages in the Django admin: listed with their metadata, shown read-only with the
results of the inbound checks, their headers and raw bytes (escaped: a message is untrusted
input)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from mail.models import Message, MessageContent
from mail.services.delivery import stored_results
from mail.services.storage import read_content


class FolderFilter(admin.AllValuesFieldListFilter):
    """The folder names in use, titled "folder" (Django would say "by name")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "folder"


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "received_at",
        "mailbox",
        "folder_name",
        "envelope_from",
        "subject",
        "size",
        "flags_shown",
    )
    list_filter = (("folder__name", FolderFilter), "seen", "flagged", "folder__mailbox__domain")
    search_fields = ("subject", "envelope_from", "envelope_to", "header_from", "message_id")
    list_select_related = ("folder__mailbox__domain",)
    date_hierarchy = "received_at"
    fields = (
        "folder",
        "envelope_from",
        "envelope_to",
        "header_from",
        "header_to",
        "subject",
        "date",
        "message_id",
        "size",
        "received_at",
        "flags_shown",
        "content",
        "authentication",
        "headers",
        "raw_message",
    )
    readonly_fields = fields

    @admin.display(description="mailbox", ordering="folder__mailbox__local_part")
    def mailbox(self, obj: Message) -> str:
        return obj.folder.mailbox.address

    @admin.display(description="flags")
    def flags_shown(self, obj: Message) -> str:
        """The IMAP flags and keywords, as a mail client left them."""
        return " ".join(obj.flags) or "-"

    @admin.display(description="folder", ordering="folder__name")
    def folder_name(self, obj: Message) -> str:
        return obj.folder.name

    def _raw(self, obj: Message) -> bytes | str:
        try:
            return bytes(obj.prepended_headers) + read_content(obj.content)
        except OSError as exc:
            return f"(cannot read the stored message: {exc})"

    @admin.display(description="authentication results")
    def authentication(self, obj: Message) -> str:
        """What the inbound checks found (SPF, DKIM, DMARC, ARC, iprev), from the message's
        Authentication-Results of ours."""
        raw = self._raw(obj)
        if isinstance(raw, str):
            return raw
        lines = stored_results(obj, raw)
        if not lines:
            return "not checked (submitted here, or received with the inbound checks off)"
        return format_html("<pre>{}</pre>", "\n".join(lines))

    @admin.display(description="headers")
    def headers(self, obj: Message) -> str:
        raw = self._raw(obj)
        if isinstance(raw, str):
            return raw
        # RFC 5322 section 2.1: the header section ends at the first empty line.
        head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        return format_html("<pre>{}</pre>", head.decode("utf-8", "replace"))

    @admin.display(description="raw message")
    def raw_message(self, obj: Message) -> str:
        raw = self._raw(obj)
        if isinstance(raw, str):
            return raw
        return format_html("<pre>{}</pre>", raw.decode("utf-8", "replace"))

    def lookup_allowed(self, lookup, value, request=None) -> bool:
        # The message counts of mailboxes and folders link here filtered by their id.
        return lookup in ("folder__id__exact", "folder__mailbox__id__exact") or super().lookup_allowed(
            lookup, value, request
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(MessageContent)
class MessageContentAdmin(admin.ModelAdmin):
    """The stored bytes behind messages and queue rows: reachable, but not a top-level entry."""

    list_display = ("storage_name", "size", "created_at")
    search_fields = ("storage_name",)
    readonly_fields = ("storage_name", "size", "created_at")

    def has_module_permission(self, request) -> bool:
        return False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The bytes go with the last message or queue row that refers to them.
        return False
