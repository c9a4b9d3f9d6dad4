from django.db import models

from mail.models.domains import MailDomain

INBOX = "inbox"
SENT = "sent"


class Mailbox(models.Model):
    """An address in a local domain that mail is delivered to. `local_part` is casefolded."""

    domain = models.ForeignKey(MailDomain, on_delete=models.CASCADE, related_name="mailboxes")
    local_part = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "mailboxes"
        ordering = ["domain__name", "local_part"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "local_part"], name="one_mailbox_per_address"),
        ]

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain.name}"

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain.name}"


class Folder(models.Model):
    """A folder of a mailbox: `inbox`, `sent`, or any a rule files into."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["mailbox", "name"]
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "name"], name="one_folder_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox}/{self.name}"
