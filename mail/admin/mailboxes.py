"""Mailboxes and folders in the Django admin: browsable down to the messages they hold.

Mailboxes are added and deleted through mail.services.mailboxes like the console's
/mail mailboxes commands; folders are made by delivery and rules, so they are read-only here.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from mail.addresses import AddressError, parse_address
from mail.models import Folder, Mailbox, MailDomain
from mail.services.mailboxes import mailbox_create, mailbox_delete, mailbox_set, mailbox_usage


def _messages_link(count: int, **filters) -> str:
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    return format_html('<a href="{}?{}">{}</a>', reverse("admin:mail_message_changelist"), query, count)


class MailboxAddForm(forms.ModelForm):
    address = forms.CharField(max_length=320, help_text="local@domain, in a local mail domain")

    class Meta:
        model = Mailbox
        fields = []

    def clean_address(self) -> str:
        try:
            parsed = parse_address(self.cleaned_data["address"].strip())
        except AddressError as exc:
            raise forms.ValidationError(str(exc)) from None
        domain = MailDomain.objects.filter(name=parsed.domain).first()
        if domain is None:
            raise forms.ValidationError(f"{parsed.domain} is not a local mail domain")
        address = f"{parsed.local.casefold()}@{domain.name}"
        if Mailbox.objects.filter(domain=domain, local_part=parsed.local.casefold()).exists():
            raise forms.ValidationError(f"mailbox {address} exists")
        return address


class FolderInline(admin.TabularInline):
    model = Folder
    fields = ("name", "messages")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_messages=Count("messages"))

    @admin.display(description="messages")
    def messages(self, obj: Folder) -> str:
        return _messages_link(obj.n_messages, folder__id__exact=obj.pk)


@admin.register(Mailbox)
class MailboxAdmin(admin.ModelAdmin):
    list_display = ("address", "domain", "messages", "created_at")
    list_filter = ("domain",)
    search_fields = ("local_part", "domain__name")
    list_select_related = ("domain",)
    inlines = [FolderInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_messages=Count("folders__messages"))

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = MailboxAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return (
            ["address"]
            if obj is None
            else ["address", "domain", "local_part", "quota", "usage", "created_at"]
        )

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["address", "domain", "local_part", "usage", "created_at"]

    @admin.display(description="size")
    def usage(self, obj: Mailbox) -> str:
        return f"{mailbox_usage(obj.pk)} bytes"

    @admin.display(description="address", ordering="local_part")
    def address(self, obj: Mailbox) -> str:
        return obj.address

    @admin.display(description="messages", ordering="n_messages")
    def messages(self, obj: Mailbox) -> str:
        return _messages_link(obj.n_messages, folder__mailbox__id__exact=obj.pk)

    def save_model(self, request, obj: Mailbox, form, change):
        if not change:
            mailbox, _ = mailbox_create(address=form.cleaned_data["address"])
            obj.pk, obj.domain, obj.local_part = mailbox.pk, mailbox.domain, mailbox.local_part
            obj._state.adding = False
        else:
            mailbox_set(address=obj.address, quota=obj.quota)

    def delete_model(self, request, obj: Mailbox):
        mailbox_delete(address=obj.address)

    def delete_queryset(self, request, queryset):
        for mailbox in queryset.select_related("domain"):
            mailbox_delete(address=mailbox.address)


@admin.register(Folder)
class FolderAdmin(admin.ModelAdmin):
    """Reached from a mailbox's page; not a top-level entry."""

    list_display = ("name", "mailbox", "messages")
    list_filter = ("name", "mailbox__domain")
    search_fields = ("name", "mailbox__local_part", "mailbox__domain__name")
    list_select_related = ("mailbox__domain",)
    fields = ("mailbox", "name", "messages")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_messages=Count("messages"))

    @admin.display(description="messages", ordering="n_messages")
    def messages(self, obj: Folder) -> str:
        return _messages_link(obj.n_messages, folder__id__exact=obj.pk)

    def has_module_permission(self, request) -> bool:
        return False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
