"""The /users console group: users, their passwords and their access grants."""

from __future__ import annotations

from accounts import services
from accounts.grants import GrantError, parse_resource
from accounts.models import AccessGrant, User
from accounts.services import AccountError
from sshadmin.commands import CommandError, Context, command, table


def _errors(fn):
    """Turn a refused account change into a console error line."""

    def wrapper(ctx, *args):
        try:
            return fn(ctx, *args)
        except (AccountError, GrantError) as exc:
            raise CommandError(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


ALLOW_WEAK = "--allow-weak"


def _new_password(ctx: Context, name: str, rest: tuple[str, ...]) -> str:
    """The password of `/users add|passwd NAME [PASSWORD] [--allow-weak]`: the argument, or
    asked twice without echo on an interactive console (so it shows in no process list,
    shell history or log). Raises CommandError for a mismatch or a password Django's
    validators refuse, unless --allow-weak."""
    allow_weak = ALLOW_WEAK in rest
    given = [arg for arg in rest if arg != ALLOW_WEAK]
    if len(given) > 1:
        raise CommandError("too many arguments")
    if given:
        password = given[0]
    elif ctx.ask_secret is None:
        raise CommandError("no password: give it, or run this on an interactive console (ssh -t) to be asked")
    else:
        password = ctx.ask_secret("New password: ")
        if ctx.ask_secret("Repeat the password: ") != password:
            raise CommandError("the two passwords differ; nothing changed")
    if not password:
        raise CommandError("the password must not be empty")
    problems = services.password_problems(name=name, password=password)
    if problems and not allow_weak:
        raise CommandError(f"weak password: {' '.join(problems)} ({ALLOW_WEAK} sets it anyway)")
    return password


@command(
    "/users add",
    usage="/users add NAME [PASSWORD] [--allow-weak]",
    summary="add a user (asks for the password when not given)",
)
@_errors
def users_add(ctx: Context, name: str, *rest: str) -> str:
    services.normalize_new_login(name)  # a bad name is refused before the password is asked
    user, created = services.user_add(name=name, password=_new_password(ctx, name, rest))
    if not created:
        return f"user {user.username} already exists (unchanged)"
    return f"user {user.username} added"


@command("/users list", usage="/users list", summary="list the users")
@_errors
def users_list(ctx: Context) -> str:
    rows = [("USER", "ADMIN", "GRANTS")]
    for user in User.objects.order_by("username").prefetch_related("grants"):
        admin = "superuser" if user.is_superuser else "no"
        rows.append((user.username, admin, str(len(user.grants.all()))))
    if len(rows) == 1:
        return "no users"
    return table(rows)


@command(
    "/users passwd",
    usage="/users passwd NAME [PASSWORD] [--allow-weak]",
    summary="set a user's password (asks for it when not given)",
)
@_errors
def users_passwd(ctx: Context, name: str, *rest: str) -> str:
    services.get_user(name)  # an unknown user is refused before the password is asked
    user = services.user_set_password(name=name, password=_new_password(ctx, name, rest))
    return f"password of {user.username} changed"


@command("/users del", usage="/users del NAME", summary="delete a user and their grants")
@_errors
def users_del(ctx: Context, name: str) -> str:
    user = services.get_user(name)
    if ctx.user is not None and user.pk == getattr(ctx.user, "pk", None):
        raise CommandError("you cannot delete the user you are logged in as")
    services.user_delete(name=user.username)
    return f"user {user.username} deleted"


@command(
    "/users grant",
    usage="/users grant NAME RESOURCE ROLE",
    summary="give a user a role (reader, writer, admin) on a resource (smtp/mail/DOMAIN[:LOCAL], admin)",
)
@_errors
def users_grant(ctx: Context, name: str, resource: str, role: str) -> str:
    grant = services.grant_add(name=name, resource=resource, role=role)
    return f"granted {grant.user.username} {grant.role} on {grant.resource}"


@command("/users revoke", usage="/users revoke NAME RESOURCE", summary="remove a user's grant on a resource")
@_errors
def users_revoke(ctx: Context, name: str, resource: str) -> str:
    user = services.get_user(name)
    path = str(parse_resource(resource))
    if not services.grant_revoke(name=user.username, resource=path):
        raise CommandError(f"{user.username} has no grant on {path}")
    return f"revoked {user.username} on {path}"


@command("/users grants", usage="/users grants [NAME]", summary="list the grants, of everyone or of one user")
@_errors
def users_grants(ctx: Context, name: str | None = None) -> str:
    grants = AccessGrant.objects.select_related("user").order_by("user__username", "resource")
    if name is not None:
        grants = grants.filter(user=services.get_user(name))
    rows = [("USER", "RESOURCE", "ROLE")]
    rows.extend((g.user.username, g.resource, g.role) for g in grants)
    if len(rows) == 1:
        return "no grants" if name is None else f"no grants for {services.get_user(name).username}"
    return table(rows)


@command(
    "/users keys list", usage="/users keys list NAME", summary="list the SSH keys a user may log in with"
)
@_errors
def users_keys_list(ctx: Context, name: str) -> str:
    user = services.get_user(name)
    keys = services.ssh_keys(name=user.username)
    if not keys:
        return f"no SSH keys for {user.username}"
    rows = [("#", "TYPE", "FINGERPRINT", "COMMENT")]
    rows.extend((str(n), k.key_type, k.fingerprint, k.comment) for n, k in enumerate(keys, start=1))
    return table(rows)


@command(
    "/users keys add",
    usage="/users keys add NAME TYPE BASE64 [COMMENT...]",
    summary="let a user log into the console with an SSH public key (a line of id_ed25519.pub)",
)
@_errors
def users_keys_add(ctx: Context, name: str, key_type: str, body: str, *comment: str) -> str:
    key, added = services.ssh_key_add(name=name, key=" ".join((key_type, body, *comment)))
    user = services.get_user(name).username
    return f"key {key.fingerprint} {'added for' if added else 'already allowed for'} {user}"


@command(
    "/users keys del",
    usage="/users keys del NAME NUMBER|FINGERPRINT",
    summary="remove one of a user's SSH keys",
)
@_errors
def users_keys_del(ctx: Context, name: str, key: str) -> str:
    gone = services.ssh_key_remove(name=name, key=key)
    return f"key {gone.fingerprint} removed from {services.get_user(name).username}"
