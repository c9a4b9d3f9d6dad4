"""Django admin for the mail rules: one TOML text, validated on save, a page that tests the
rules in force on a message (what `/mail rules test` does on the console), and the language's
documentation (docs/rules.md)."""

from __future__ import annotations

from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from mail.models import RedirectRecord, RuleSet, VacationReply
from mail.rules.language import RulesError, parse_rules
from mail.services.rules import dry_run, set_rules

RULES_DOC = Path(settings.BASE_DIR) / "docs" / "rules.md"


class RuleSetForm(forms.ModelForm):
    # Kept as typed (no stripping), with the line breaks a browser sends (CRLF) made LF.
    text = forms.CharField(
        strip=False,
        required=False,
        widget=forms.Textarea(attrs={"rows": 40, "cols": 100, "style": "font-family: monospace"}),
    )

    class Meta:
        model = RuleSet
        fields = ["text"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["text"].help_text = format_html(
            "rules.toml, checked when saved. The language, with an example per match and action: "
            '<a href="{}">docs/rules.md</a>. <a href="{}">Test the rules</a> on a message.',
            reverse("admin:mail_ruleset_doc"),
            reverse("admin:mail_ruleset_test"),
        )

    def clean_text(self) -> str:
        text = self.cleaned_data["text"].replace("\r\n", "\n")
        try:
            parse_rules(text)
        except RulesError as exc:
            raise forms.ValidationError(str(exc)) from None
        return text


class RulesTestForm(forms.Form):
    recipient = forms.CharField(max_length=320, help_text="A local address, as in RCPT TO.")
    message = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 100, "style": "font-family: monospace"}),
        help_text="A message (header lines, an empty line, the body), or the id of a stored message.",
    )


@admin.register(RuleSet)
class RuleSetAdmin(admin.ModelAdmin):
    """Saving goes through mail.services.rules.set_rules: version bump and rules.toml rewrite."""

    form = RuleSetForm
    list_display = ["__str__", "updated_at"]
    readonly_fields = ["version", "updated_at"]
    change_form_template = "everlock/ruleset_change_form.html"
    change_list_template = "everlock/ruleset_change_list.html"

    def get_urls(self):
        return [
            path("test/", self.admin_site.admin_view(self.test_view), name="mail_ruleset_test"),
            path("language/", self.admin_site.admin_view(self.doc_view), name="mail_ruleset_doc"),
            *super().get_urls(),
        ]

    def test_view(self, request):
        """Run the rules in force on a message for a recipient; changes nothing."""
        if not self.has_view_permission(request):
            raise Http404
        form = RulesTestForm(request.POST or None)
        trace = None
        if request.method == "POST" and form.is_valid():
            text = form.cleaned_data["message"]
            if text.strip().isdigit():
                source = {"message_id": int(text.strip())}
            else:
                # A browser sends CRLF line breaks already; a message is CRLF throughout.
                text = text.replace("\r\n", "\n").strip("\n").replace("\n", "\r\n") + "\r\n"
                source = {"raw": text.encode("utf-8")}
            try:
                trace = dry_run(recipient=form.cleaned_data["recipient"], **source).trace
            except RulesError as exc:
                form.add_error(None, str(exc))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Test the mail rules",
            "form": form,
            "trace": trace,
        }
        return TemplateResponse(request, "everlock/ruleset_test.html", context)

    def doc_view(self, request):
        """docs/rules.md, the rules language, as text."""
        if not self.has_view_permission(request) or not RULES_DOC.exists():
            raise Http404
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "The mail rules language",
            "doc": RULES_DOC.read_text(),
        }
        return TemplateResponse(request, "everlock/ruleset_doc.html", context)

    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and not RuleSet.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting would leave rules.toml behind; an empty text is how rules are removed.
        return False

    def save_model(self, request, obj, form, change) -> None:
        result = set_rules(text=form.cleaned_data["text"])
        obj.pk = RuleSet.objects.order_by("id").values_list("id", flat=True).first()
        obj.version = result.version
        if not result.changed:
            messages.info(request, "The rules are unchanged.")


@admin.register(VacationReply)
class VacationReplyAdmin(admin.ModelAdmin):
    """When a vacation rule last answered a sender; deleting a row lets it answer again."""

    list_display = ["recipient", "sender", "last_sent_at"]
    search_fields = ["recipient", "sender"]
    date_hierarchy = "last_sent_at"
    readonly_fields = ["recipient", "sender", "last_sent_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RedirectRecord)
class RedirectRecordAdmin(admin.ModelAdmin):
    """The redirects rules made per sender, which cap redirect storms; read-only, and not a
    top-level entry."""

    list_display = ["sender", "count", "created_at"]
    search_fields = ["sender"]
    date_hierarchy = "created_at"
    readonly_fields = ["sender", "count", "created_at"]

    def has_module_permission(self, request) -> bool:
        return False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
