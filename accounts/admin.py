"""The Django admin of users (their grants inline) and of access grants.

Users are added and deleted, and grants given and revoked, through accounts.services, so the
admin follows the console's rules: a grant on a mailbox of a local domain creates the mailbox.
"""

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group

from accounts.authentication import Throttled
from accounts.grants import MAIL_PREFIX, GrantError, parse_resource, role_rank
from accounts.models import AccessGrant, User
from accounts.services import (
    AccountError,
    grant_add,
    grant_revoke,
    normalize_login,
    normalize_new_login,
    user_add,
    user_delete,
)
from accounts.ssh_keys import SSHKeyError, parse_authorized_keys
from mail.models import MailDomain

# Who may do what is said by access grants (and the superuser flag), not by Django's groups.
admin.site.unregister(Group)


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin login form; a client address or login that failed too often is told so."""

    def clean(self):
        try:
            return super().clean()
        except Throttled as exc:
            raise forms.ValidationError(
                "Too many failed logins; try again in %(seconds)d seconds.",
                code="throttled",
                params={"seconds": max(1, round(exc.retry_after))},
            ) from None


admin.site.login_form = ThrottledLoginForm


def _clean_login(form: forms.ModelForm) -> str:
    """The login in stored form (casefolded, IDNA domain), unique among users."""
    try:
        if form.instance.pk and form.cleaned_data["username"] == form.instance.username:
            name = normalize_login(form.cleaned_data["username"])  # kept as it is
        else:
            name = normalize_new_login(form.cleaned_data["username"])
    except AccountError as exc:
        raise forms.ValidationError(str(exc)) from None
    others = User.objects.filter(username=name)
    if form.instance.pk:
        others = others.exclude(pk=form.instance.pk)
    if others.exists():
        raise forms.ValidationError(f"user {name} already exists")
    return name


class EverlockUserCreationForm(AdminUserCreationForm):
    # Every Everlock user logs in (SMTP AUTH, the console): a password is required.
    usable_password = None

    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("username",)

    def clean_username(self):
        return _clean_login(self)


class EverlockUserChangeForm(UserChangeForm):
    admin = forms.BooleanField(
        label="Administrator",
        required=False,
        help_text="May log into the admin console and this web UI, and change everything there.",
    )

    class Meta(UserChangeForm.Meta):
        model = User

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["admin"].initial = self.instance.is_superuser

    def clean_username(self):
        return _clean_login(self)

    def clean_ssh_authorized_keys(self):
        text = self.cleaned_data["ssh_authorized_keys"]
        try:
            parse_authorized_keys(text)
        except SSHKeyError as exc:
            raise forms.ValidationError(str(exc)) from None
        return text

    def save(self, commit=True):
        # An administrator is staff (the web UI lets them in) and superuser (every permission),
        # as `everlock serve --admin-user` makes them.
        self.instance.is_staff = self.instance.is_superuser = self.cleaned_data["admin"]
        return super().save(commit)


ROLE_HELP = (
    "reader: read the mail of the mailboxes. writer: reader, and send as their addresses "
    "(submission). admin: writer, and on the installation the console and this web UI. "
    "See docs/grants.md."
)
INSTALLATION = "admin"
ALL_MAIL = "smtp"


def _scope_choices(current: str = "") -> list[tuple[str, str]]:
    choices = [
        ("", "---------"),
        (INSTALLATION, "the installation (console, web UI)"),
        (ALL_MAIL, "all mail"),
    ]
    domains = list(MailDomain.objects.order_by("name").values_list("name", flat=True))
    if current and current not in (INSTALLATION, ALL_MAIL, *domains):
        domains.append(current)  # a grant given on the console before its domain was created
    return [*choices, ("Mail domains", [(d, d) for d in domains])]


class AccessGrantForm(forms.ModelForm):
    """The resource is picked (the installation, all mail, a mail domain) and optionally
    narrowed to one mailbox of the domain; stored in normal form, as the console stores it.
    A domain must be a mail domain of this installation."""

    scope = forms.CharField(label="Resource", help_text="The installation, all mail, or a mail domain.")
    mailbox = forms.CharField(
        required=False,
        max_length=64,
        help_text="Only this mailbox of the domain (its local part, alice for alice@example.com); "
        "empty for the whole domain.",
    )

    class Meta:
        model = AccessGrant
        fields = ["user", "scope", "mailbox", "role"]
        help_texts = {"role": ROLE_HELP}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        current = ""
        if self.instance.pk and self.instance.resource:
            resource = parse_resource(self.instance.resource)
            current = resource.segments[2] if len(resource.segments) == 3 else str(resource)
            self.initial.update(scope=current, mailbox=resource.local or "")
        self.fields["scope"].widget = forms.Select(choices=_scope_choices(current))

    def clean(self):
        cleaned = super().clean()
        scope, local = cleaned.get("scope", ""), cleaned.get("mailbox", "").strip()
        if not scope:
            return cleaned
        if scope in (INSTALLATION, ALL_MAIL):
            if local:
                self.add_error("mailbox", "a mailbox belongs to a mail domain: pick the domain")
                return cleaned
            path = scope
        else:
            is_new = not (self.instance.pk and self.initial.get("scope") == scope)
            if is_new and not MailDomain.objects.filter(name=scope).exists():
                self.add_error("scope", f"no mail domain {scope} (create it under Mail domains first)")
                return cleaned
            path = f"{MAIL_PREFIX}/{scope}" + (f":{local}" if local else "")
        try:
            self.instance.resource = str(parse_resource(path))
        except GrantError as exc:
            self.add_error("mailbox" if local else "scope", str(exc))
        return cleaned

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
    fields = ["scope", "mailbox", "role", "created_at"]
    readonly_fields = ["created_at"]


def _save_grant(grant: AccessGrant) -> AccessGrant:
    """Give `grant` through the service; a changed user or resource revokes the old grant."""
    if grant.pk is not None:
        old = AccessGrant.objects.select_related("user").filter(pk=grant.pk).first()
        if old is not None and (old.user_id, old.resource) != (grant.user_id, grant.resource):
            grant_revoke(name=old.user.username, resource=old.resource)
    return grant_add(name=grant.user.username, resource=grant.resource, role=grant.role)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = EverlockUserChangeForm
    add_form = EverlockUserCreationForm
    inlines = [AccessGrantInline]
    list_display = ["username", "grant_list", "is_active", "administrator", "last_login"]
    list_filter = ["is_active", "is_superuser"]
    search_fields = ["username"]
    # What Everlock uses: no Django groups, permissions, staff flag or names.
    fieldsets = (
        (None, {"fields": ["username", "password"]}),
        (
            "Access",
            {
                "fields": ["is_active", "admin"],
                "description": "Active users log in (SMTP AUTH, the console). The access grants "
                "below give roles on resources: " + ROLE_HELP,
            },
        ),
        ("Admin console", {"fields": ["ssh_authorized_keys"]}),
        ("History", {"fields": ["last_login", "date_joined"]}),
    )
    readonly_fields = ["last_login", "date_joined"]
    add_fieldsets = ((None, {"classes": ["wide"], "fields": ["username", "password1", "password2"]}),)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("grants")

    @admin.display(description="administrator", boolean=True, ordering="is_superuser")
    def administrator(self, obj: User) -> bool:
        return obj.is_superuser

    @admin.display(description="grants")
    def grant_list(self, obj: User) -> str:
        return ", ".join(f"{g.resource} {g.role}" for g in obj.grants.all()) or "-"

    def save_model(self, request, obj: User, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        user, _ = user_add(name=obj.username, password=form.cleaned_data["password1"])
        obj.pk, obj.password, obj.date_joined = user.pk, user.password, user.date_joined
        obj._state.adding = False

    def save_formset(self, request, form, formset, change):
        if formset.model is not AccessGrant:
            super().save_formset(request, form, formset, change)
            return
        grants = formset.save(commit=False)
        for grant in formset.deleted_objects:
            grant_revoke(name=form.instance.username, resource=grant.resource)
        for grant in grants:
            grant.user = form.instance
            _save_grant(grant)

    def delete_model(self, request, obj: User):
        user_delete(name=obj.username)

    def delete_queryset(self, request, queryset):
        for username in queryset.values_list("username", flat=True):
            user_delete(name=username)


@admin.register(AccessGrant)
class AccessGrantAdmin(admin.ModelAdmin):
    form = AccessGrantForm
    list_display = ["user", "resource", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "resource"]
    autocomplete_fields = ["user"]
    list_select_related = ["user"]

    def save_model(self, request, obj: AccessGrant, form, change):
        obj.pk = _save_grant(obj).pk

    def delete_model(self, request, obj: AccessGrant):
        grant_revoke(name=obj.user.username, resource=obj.resource)

    def delete_queryset(self, request, queryset):
        for grant in queryset.select_related("user"):
            grant_revoke(name=grant.user.username, resource=grant.resource)
