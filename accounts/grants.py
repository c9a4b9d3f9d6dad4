"""Access-grant resources and roles. Pure: no Django.

A resource is a path. `admin` is the installation itself (the console, the admin UI);
`smtp/mail/example.com` is a mail domain and `smtp/mail/example.com:alice` one mailbox in
it. A grant on a path covers every path below it, and a grant on a domain covers its
mailboxes. Domains are compared in normal form (lowercase, IDNA), local parts casefolded.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain_names import DomainNameError, normalize_host
from mail.addresses import is_valid_local_part

# In increasing order of power: a role includes every role before it.
ROLES = ("reader", "writer", "admin")

ADMIN_RESOURCE = "admin"
MAIL_PREFIX = "smtp/mail"


class GrantError(ValueError):
    """A malformed resource path or an unknown role; the message says which."""


def role_rank(role: str) -> int:
    try:
        return ROLES.index(role)
    except ValueError:
        raise GrantError(f"unknown role {role!r} (one of: {', '.join(ROLES)})") from None


@dataclass(frozen=True)
class Resource:
    """A parsed resource path: `segments` of the path, then an optional mailbox local part."""

    segments: tuple[str, ...]
    local: str | None = None

    def __str__(self) -> str:
        path = "/".join(self.segments)
        return f"{path}:{self.local}" if self.local is not None else path

    def covers(self, other: Resource) -> bool:
        """True when a grant on self applies to `other`."""
        if self.segments != other.segments[: len(self.segments)]:
            return False
        if self.local is None:
            return True
        return other.segments == self.segments and other.local == self.local


def parse_resource(text: str) -> Resource:
    """Parse and normalise a resource path.

    Raises GrantError for anything but `admin`, `smtp`, `smtp/mail`, `smtp/mail/DOMAIN` and
    `smtp/mail/DOMAIN:LOCAL` with a valid domain and local part.
    """
    if not isinstance(text, str) or not text or text != text.strip():
        raise GrantError(f"malformed resource {text!r}")
    path, sep, local = text.partition(":")
    segments = tuple(path.split("/"))
    if segments == (ADMIN_RESOURCE,) and not sep:
        return Resource(segments)
    if segments[:2] not in (("smtp",), ("smtp", "mail")) or len(segments) > 3:
        raise GrantError(
            f"malformed resource {text!r} (expected admin, smtp/mail/DOMAIN or smtp/mail/DOMAIN:LOCAL)"
        )
    if len(segments) < 3:
        if sep:
            raise GrantError(f"malformed resource {text!r}: a mailbox needs a domain")
        return Resource(segments)
    try:
        domain = normalize_host(segments[2])
    except DomainNameError as exc:
        raise GrantError(f"malformed resource {text!r}: {exc}") from None
    if not sep:
        return Resource(("smtp", "mail", domain))
    if not is_valid_local_part(local):
        raise GrantError(f"malformed resource {text!r}: invalid local part {local!r}")
    return Resource(("smtp", "mail", domain), local.casefold())


def mailbox_resource(local: str, domain: str) -> Resource:
    """The resource of the mailbox local@domain."""
    return parse_resource(f"{MAIL_PREFIX}/{domain}:{local}")


def allows(grants: list[tuple[str, str]], role: str, resource: Resource) -> bool:
    """True when one of `grants` ((resource path, role) pairs) gives `role` on `resource`.

    Stored grants are normal-form paths; one that no longer parses grants nothing.
    """
    wanted = role_rank(role)
    for path, granted_role in grants:
        try:
            granted = parse_resource(path)
            rank = role_rank(granted_role)
        except GrantError:
            continue
        if rank >= wanted and granted.covers(resource):
            return True
    return False
