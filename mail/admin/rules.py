"""Django admin for the mail rules: one TOML text, validated on save."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from mail.models import RedirectRecord, RuleSet, VacationReply
from mail.rules.language import RulesError, parse_rules
from mail.services.rules import set_rules


class RuleSetForm(forms.ModelForm):
    # Kept as typed (no stripping), with the line breaks a browser sends (CRLF) made LF.
    text = forms.CharField(
        strip=False,
        required=False,
        help_text="rules.toml: see mail.rules.language for the language",
        widget=forms.Textarea(attrs={"rows": 40, "cols": 100, "style": "font-family: monospace"}),
    )

    class Meta:
        model = RuleSet
        fields = ["text"]

    def clean_text(self) -> str:
        text = self.cleaned_data["text"].replace("\r\n", "\n")
        try:
            parse_rules(text)
        except RulesError as exc:
            raise forms.ValidationError(str(exc)) from None
        return text


@admin.register(RuleSet)
class RuleSetAdmin(admin.ModelAdmin):
    """Saving goes through mail.services.rules.set_rules: version bump and rules.toml rewrite."""

    form = RuleSetForm
    list_display = ["__str__", "updated_at"]
    readonly_fields = ["version", "updated_at"]

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
    """The redirects rules made per sender, which cap redirect storms; read-only."""

    list_display = ["sender", "count", "created_at"]
    search_fields = ["sender"]
    date_hierarchy = "created_at"
    readonly_fields = ["sender", "count", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
