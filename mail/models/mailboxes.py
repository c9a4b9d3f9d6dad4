import time

from django.db import models

from mail.models.domains import MailDomain

INBOX = "inbox"
SENT = "sent"


def new_uid_validity() -> int:
    """A UIDVALIDITY for a new folder (RFC 9051 §2.3.1.1): the creation time in seconds, so a
    folder deleted and created again under the same name gets a different one."""
    return int(time.time()) & 0xFFFFFFFF or 1


class Mailbox(models.Model):
    """An address in a local domain that mail is delivered to. `local_part` is casefolded."""

    domain = models.ForeignKey(MailDomain, on_delete=models.CASCADE, related_name="mailboxes")
    local_part = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    # RFC 9208 STORAGE limit in bytes over all folders; None: no limit.
    quota = models.PositiveBigIntegerField(null=True, blank=True, help_text="Bytes; empty: no limit")
    # The greatest UIDVALIDITY given to a folder of this mailbox (see next_uid_validity).
    last_uid_validity = models.PositiveBigIntegerField(default=0, editable=False)
    # IMAP subscriptions to folder names that no folder has (any more): a subscribed folder
    # that is deleted stays subscribed (RFC 9051 §6.3.9), and comes back so when re-created.
    orphan_subscriptions = models.JSONField(default=list, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "mailboxes"
        ordering = ["domain__name", "local_part"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "local_part"], name="one_mailbox_per_address"),
        ]

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain.name}"

    def next_uid_validity(self) -> int:
        """A UIDVALIDITY for a folder (re)created or renamed now: greater than any this mailbox
        gave before, so a name used again never repeats one (RFC 9051 §2.3.1.1). Call with the
        row locked; saves it."""
        self.last_uid_validity = max(new_uid_validity(), self.last_uid_validity + 1)
        self.save(update_fields=["last_uid_validity"])
        return self.last_uid_validity

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain.name}"


class Folder(models.Model):
    """A folder of a mailbox: `inbox`, `sent`, or any a rule or a mail client creates.

    IMAP state lives here: `uid_validity`, `uid_next` (the UID the next message filed here
    gets) and `highest_modseq`, raised by every change an IMAP session must learn of.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=200)
    uid_validity = models.PositiveBigIntegerField(default=new_uid_validity)
    uid_next = models.PositiveBigIntegerField(default=1)
    highest_modseq = models.PositiveBigIntegerField(default=1)
    # Messages from this UID on are \Recent (RFC 3501 §2.3.2): the next read-write session to
    # look claims them.
    first_recent_uid = models.PositiveBigIntegerField(default=1)
    subscribed = models.BooleanField(default=True)

    class Meta:
        ordering = ["mailbox", "name"]
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "name"], name="one_folder_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox}/{self.name}"
