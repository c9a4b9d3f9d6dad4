"""State changes of users and grants: keyword-only, idempotent, one transaction each."""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.grants import GrantError, parse_resource, role_rank
from accounts.models import AccessGrant, User
from mail.addresses import AddressError, normalize_domain

log = logging.getLogger("accounts")


class AccountError(ValueError):
    """A request that cannot be carried out (unknown user, bad login name); says why."""


def normalize_login(login: str) -> str:
    """The stored form of a login: casefolded, with a mailbox-style domain in IDNA form.

    Raises AccountError for an empty login, whitespace or control characters, or a domain
    part that is not a valid domain name.
    """
    if not login or any(c.isspace() or ord(c) < 32 for c in login) or len(login) > 150:
        raise AccountError(f"invalid login name {login!r}")
    local, sep, domain = login.rpartition("@")
    if not sep:
        return login.casefold()
    if not local:
        raise AccountError(f"invalid login name {login!r}")
    try:
        return f"{local.casefold()}@{normalize_domain(domain)}"
    except AddressError as exc:
        raise AccountError(f"invalid login name {login!r}: {exc}") from None


def get_user(name: str) -> User:
    """The user stored under `name` (in any case or IDNA form). Raises AccountError."""
    try:
        return User.objects.get(username=normalize_login(name))
    except User.DoesNotExist:
        raise AccountError(f"no such user: {name}") from None


def user_add(*, name: str, password: str, is_admin: bool = False) -> tuple[User, bool]:
    """Create user `name`; return (user, created). An existing user is left as it is."""
    username = normalize_login(name)
    if not password:
        raise AccountError("the password must not be empty")
    with transaction.atomic():
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": is_admin, "is_superuser": is_admin}
        )
        if created:
            user.set_password(password)
            user.save(update_fields=["password"])
    if created:
        log.info("user %s added", username)
    return user, created


def user_set_password(*, name: str, password: str) -> User:
    if not password:
        raise AccountError("the password must not be empty")
    with transaction.atomic():
        user = get_user(name)
        user.set_password(password)
        user.save(update_fields=["password"])
    log.info("password of %s changed", user.username)
    return user


def user_delete(*, name: str) -> None:
    with transaction.atomic():
        user = get_user(name)
        user.delete()
    log.info("user %s deleted", user.username)


def grant_add(*, name: str, resource: str, role: str) -> AccessGrant:
    """Give user `name` `role` on `resource`, replacing the role of an existing grant.

    Raises AccountError for an unknown user, GrantError for a malformed resource or role.
    On commit, a grant on a mailbox has that mailbox created (mail.services.mailboxes).
    """
    role_rank(role)
    path = str(parse_resource(resource))
    with transaction.atomic():
        user = get_user(name)
        grant, _ = AccessGrant.objects.update_or_create(user=user, resource=path, defaults={"role": role})
        from mail.services.mailboxes import ensure_mailbox_for_grant

        ensure_mailbox_for_grant(resource=path)
    log.info("grant %s %s %s", user.username, path, role)
    return grant


def grant_revoke(*, name: str, resource: str) -> bool:
    """Remove the grant of user `name` on `resource`; return whether there was one."""
    path = str(parse_resource(resource))
    with transaction.atomic():
        user = get_user(name)
        deleted, _ = AccessGrant.objects.filter(user=user, resource=path).delete()
    if deleted:
        log.info("grant %s %s revoked", user.username, path)
    return bool(deleted)


__all__ = [
    "AccountError",
    "GrantError",
    "get_user",
    "grant_add",
    "grant_revoke",
    "normalize_login",
    "user_add",
    "user_delete",
    "user_set_password",
]
