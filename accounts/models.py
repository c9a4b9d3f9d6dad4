from django.contrib.auth.models import AbstractUser
from django.db import models

from accounts.grants import ROLES


class User(AbstractUser):
    """An Everlock user: console administrator, mail sender, or both.

    `username` is the stored login: a bare name (`alice`) or a mailbox-style one
    (`alice@example.com`); accounts.authentication resolves client logins against it.
    """

    ssh_authorized_keys = models.TextField(
        "SSH authorized keys",
        blank=True,
        help_text="Public keys that may log into the admin console as this user: one OpenSSH "
        "public key per line (ssh-ed25519 AAAA... comment); # starts a comment line.",
    )

    class Meta:
        ordering = ["username"]


class AccessGrant(models.Model):
    """`user` may act as `role` on `resource` and, for a domain, on everything under it."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="grants")
    resource = models.CharField(
        max_length=300, help_text="A resource path: smtp/mail/example.com or smtp/mail/example.com:alice"
    )
    role = models.CharField(max_length=10, choices=[(r, r) for r in ROLES])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user__username", "resource"]
        constraints = [
            models.UniqueConstraint(fields=["user", "resource"], name="one_grant_per_resource"),
        ]

    def __str__(self) -> str:
        return f"{self.user.username} {self.resource} {self.role}"
