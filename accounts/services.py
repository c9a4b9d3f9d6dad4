"""State changes of users and grants: keyword-only, idempotent, one transaction each."""

from __future__ import annotations

import logging
import re

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.grants import GrantError, parse_resource, role_rank
from accounts.models import AccessGrant, User
from accounts.ssh_keys import AuthorizedKey, SSHKeyError, parse_authorized_keys, parse_key_line
from domain_names import DomainNameError, normalize_host

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
        return f"{local.casefold()}@{normalize_host(domain)}"
    except DomainNameError as exc:
        raise AccountError(f"invalid login name {login!r}: {exc}") from None


# The names a new user may get: a bare name or a mailbox-style name@domain whose part before
# "@" is 1 to 64 ASCII letters, digits, ".", "_", "+" or "-", starting with a letter or digit
# (stored in lower case; the domain in IDNA form). Nothing a shell, a log line or an address
# would read differently.
NEW_LOGIN_TEXT = (
    'a name of ASCII letters, digits, ".", "_", "+" and "-", starting with a letter or digit, '
    "at most 64 characters, optionally followed by @domain"
)
_NEW_LOGIN_LOCAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def normalize_new_login(name: str) -> str:
    """normalize_login for a user about to be created: also checks the name's characters.

    Raises AccountError saying which names are allowed."""
    username = normalize_login(name)
    local = name.rpartition("@")[0] if "@" in name else name
    if not _NEW_LOGIN_LOCAL.fullmatch(local):
        raise AccountError(f"invalid user name {name!r}: use {NEW_LOGIN_TEXT}")
    return username


def password_problems(*, name: str, password: str) -> list[str]:
    """Why Django's password validators (settings.AUTH_PASSWORD_VALIDATORS) refuse `password`
    for user `name`: their messages, [] when they accept it."""
    try:
        validate_password(password, user=User(username=name))
    except ValidationError as exc:
        return list(exc.messages)
    return []


def get_user(name: str) -> User:
    """The user stored under `name` (in any case or IDNA form). Raises AccountError."""
    try:
        return User.objects.get(username=normalize_login(name))
    except User.DoesNotExist:
        raise AccountError(f"no such user: {name}") from None


def user_add(*, name: str, password: str, is_admin: bool = False) -> tuple[User, bool]:
    """Create user `name`; return (user, created). An existing user is left as it is.

    Raises AccountError for a name outside NEW_LOGIN_TEXT or an empty password. The password's
    strength is the caller's to check (password_problems), as Django's create_user leaves it
    to forms: the console and the commands refuse a weak one unless told otherwise."""
    username = normalize_new_login(name)
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
    "normalize_new_login",
    "password_problems",
    "user_add",
    "user_delete",
    "user_set_password",
]


def ssh_keys(*, name: str) -> list[AuthorizedKey]:
    """The SSH public keys user `name` may log into the console with, in stored order."""
    user = get_user(name)
    try:
        return parse_authorized_keys(user.ssh_authorized_keys)
    except SSHKeyError as exc:
        raise AccountError(f"{user.username}'s stored keys: {exc}") from None


def ssh_key_add(*, name: str, key: str) -> tuple[AuthorizedKey, bool]:
    """Let user `name` log in with the OpenSSH public key line `key`; return (key, added).

    A key already there (same type and body) is left as it is. Raises AccountError for an
    unknown user or a line that is not a public key.
    """
    try:
        new = parse_key_line(key)
    except SSHKeyError as exc:
        raise AccountError(str(exc)) from None
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=get_user(name).pk)
        if any((k.key_type, k.body) == (new.key_type, new.body) for k in ssh_keys(name=user.username)):
            return new, False
        text = user.ssh_authorized_keys
        user.ssh_authorized_keys = (
            (text if not text or text.endswith("\n") else text + "\n") + new.line + "\n"
        )
        user.save(update_fields=["ssh_authorized_keys"])
    log.info("ssh key %s added for %s", new.fingerprint, user.username)
    return new, True


def ssh_key_remove(*, name: str, key: str) -> AuthorizedKey:
    """Remove one of user `name`'s keys, named by its number in ssh_keys() (from 1) or its
    SHA256 fingerprint; return it. Raises AccountError when there is no such key."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=get_user(name).pk)
        keys = ssh_keys(name=user.username)
        if key.isdigit() and 1 <= int(key) <= len(keys):
            gone = keys[int(key) - 1]
        else:
            gone = next((k for k in keys if k.fingerprint == key), None)
            if gone is None:
                raise AccountError(f"{user.username} has no key {key} (see /users keys list {user.username})")
        kept = [line for line in user.ssh_authorized_keys.splitlines() if not _is_key_line(line, gone)]
        user.ssh_authorized_keys = "".join(f"{line}\n" for line in kept)
        user.save(update_fields=["ssh_authorized_keys"])
    log.info("ssh key %s removed from %s", gone.fingerprint, user.username)
    return gone


def _is_key_line(line: str, key: AuthorizedKey) -> bool:
    parts = line.split()
    return len(parts) >= 2 and (parts[0], parts[1]) == (key.key_type, key.body)
