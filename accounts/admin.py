"""The Django admin of users (their grants inline) and of access grants."""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm

from accounts.grants import GrantError, parse_resource, role_rank
from accounts.models import AccessGrant, User
from accounts.services import AccountError, normalize_login


def _clean_login(form: forms.ModelForm) -> str:
    """The login in stored form (casefolded, IDNA domain), unique among users."""
    try:
        name = normalize_login(form.cleaned_data["username"])
    except AccountError as exc:
        raise forms.ValidationError(str(exc)) from None
    others = User.objects.filter(username=name)
    if form.instance.pk:
        others = others.exclude(pk=form.instance.pk)
    if others.exists():
        raise forms.ValidationError(f"user {name} already exists")
    return name


class EverlockUserCreationForm(AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("username",)

    def clean_username(self):
        return _clean_login(self)


class EverlockUserChangeForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User

    def clean_username(self):
        return _clean_login(self)


class AccessGrantForm(forms.ModelForm):
    """Stores resources in normal form and refuses malformed ones, as the console does."""

    class Meta:
        model = AccessGrant
        fields = ["user", "resource", "role"]

    def clean_resource(self):
        try:
            return str(parse_resource(self.cleaned_data["resource"].strip()))
        except GrantError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_role(self):
        try:
            role_rank(self.cleaned_data["role"])
        except GrantError as exc:
            raise forms.ValidationError(str(exc)) from None
        return self.cleaned_data["role"]


class AccessGrantInline(admin.TabularInline):
    model = AccessGrant
    form = AccessGrantForm
    extra = 0
    fields = ["resource", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = EverlockUserChangeForm
    add_form = EverlockUserCreationForm
    inlines = [AccessGrantInline]
    list_display = ["username", "is_active", "is_staff", "is_superuser", "last_login"]
    fieldsets = (
        *DjangoUserAdmin.fieldsets,
        ("Admin console", {"fields": ["ssh_authorized_keys"]}),
    )


@admin.register(AccessGrant)
class AccessGrantAdmin(admin.ModelAdmin):
    form = AccessGrantForm
    list_display = ["user", "resource", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "resource"]
    autocomplete_fields = ["user"]
