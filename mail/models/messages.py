from django.db import models

from mail.models.mailboxes import Folder


class MessageContent(models.Model):
    """The raw bytes of one message, stored once through the `messages` storage.

    The file is written and fsynced before the row commits; every Message filed from one
    SMTP transaction and every outbound queue row of it point here.
    """

    storage_name = models.CharField(max_length=255, unique=True)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # IMAP's ENVELOPE, BODYSTRUCTURE and BODY of the content (RFC 9051 §7.5.2), as sent:
    # computed at APPEND or at the first FETCH that asks, and kept, so listing a folder reads
    # no message file.
    imap_envelope = models.BinaryField(null=True, blank=True)
    imap_structure = models.BinaryField(null=True, blank=True)
    imap_body = models.BinaryField(null=True, blank=True)

    def __str__(self) -> str:
        return self.storage_name


class Message(models.Model):
    """A message filed into a folder, with the metadata a mail client lists."""

    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="messages")
    content = models.ForeignKey(MessageContent, on_delete=models.PROTECT, related_name="messages")
    # Header lines (CRLF-terminated) put before the stored content for this copy only, for
    # example a header a rule adds for one recipient.
    prepended_headers = models.BinaryField(blank=True, default=b"")
    envelope_from = models.CharField(max_length=320, blank=True)
    envelope_to = models.CharField(max_length=320)
    header_from = models.CharField(max_length=998, blank=True)
    header_to = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    date = models.DateTimeField(null=True, blank=True)
    message_id = models.CharField(max_length=998, blank=True)
    size = models.PositiveBigIntegerField()
    # The internal date (RFC 9051 section 2.3.3): when filed, or the date an APPEND gives.
    received_at = models.DateTimeField(auto_now_add=True)
    seen = models.BooleanField(default=False)
    flagged = models.BooleanField(default=False)
    answered = models.BooleanField(db_default=False)
    deleted = models.BooleanField(db_default=False)
    draft = models.BooleanField(db_default=False)
    # IMAP keywords ($Forwarded, $Junk, ...), space-separated.
    keywords = models.CharField(max_length=1000, blank=True, db_default="")
    # The IMAP UID within the folder. Filing leaves it NULL (but for APPEND, which numbers
    # at once); the first reader of the folder numbers new messages in the order they became
    # visible (mail.imap.store.number_new).
    uid = models.PositiveBigIntegerField(null=True, blank=True)
    # The folder's highest_modseq when this message last changed.
    modseq = models.PositiveBigIntegerField(db_default=0)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["folder", "-received_at"]),
            models.Index(fields=["folder", "uid"]),
            models.Index(fields=["folder", "modseq"]),
        ]

    def __str__(self) -> str:
        return f"{self.subject or '(no subject)'} -> {self.envelope_to}"

    @property
    def flags(self) -> list[str]:
        """The IMAP flags and keywords of this copy, as a mail client sees them."""
        names = [
            name
            for name, on in (
                ("\\Seen", self.seen),
                ("\\Answered", self.answered),
                ("\\Flagged", self.flagged),
                ("\\Deleted", self.deleted),
                ("\\Draft", self.draft),
            )
            if on
        ]
        return names + self.keywords.split()
