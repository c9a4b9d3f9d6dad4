from django.db import models

from mail.models.messages import MessageContent


class OutboundDelivery(models.Model):
    """The outbound queue: one row per (message, destination domain).

    The row is the truth; a Celery message is only a kick. A worker claims a due row by
    recording the attempt and the next attempt time before it dials (see
    mail.delivery.attempts), so a worker that dies mid-delivery leaves a row that is due
    again at `next_attempt_at`.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        HELD = "held"
        DELIVERED = "delivered"
        FAILED = "failed"

    content = models.ForeignKey(MessageContent, on_delete=models.PROTECT, related_name="deliveries")
    envelope_from = models.CharField(max_length=320, blank=True)
    domain = models.CharField(max_length=253)
    helo_hostname = models.CharField(max_length=253)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_reply = models.TextField(blank=True)
    expires_at = models.DateTimeField()
    delay_notified = models.BooleanField(default=False)
    # The sender's requests (RFC 3461 section 4.3 RET, 4.4 ENVID; RFC 8689 REQUIRETLS;
    # RFC 3030 BODY=BINARYMIME), passed on to the next hop and honoured in our DSNs.
    dsn_ret = models.CharField(max_length=4, blank=True)
    dsn_envid = models.CharField(max_length=100, blank=True)
    requiretls = models.BooleanField(default=False)
    binarymime = models.BooleanField(default=False)
    # False for a message a rule redirected: its envelope sender came from outside and may be
    # forged, so a bounce goes only to a local mailbox, never out (no backscatter).
    bounce_outside = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["next_attempt_at", "id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        verbose_name_plural = "outbound deliveries"

    def __str__(self) -> str:
        return f"#{self.pk} {self.envelope_from or '<>'} -> {self.domain} ({self.status})"


class OutboundRecipient(models.Model):
    """One recipient of a queue row, with its own outcome."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    delivery = models.ForeignKey(OutboundDelivery, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=320)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reply = models.TextField(blank=True)
    # RFC 3461 section 4.1 NOTIFY ("NEVER" or some of "SUCCESS,FAILURE,DELAY"; blank when
    # the sender gave none) and section 4.2 ORCPT ("rfc822;address").
    notify = models.CharField(max_length=32, blank=True)
    orcpt = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "id"]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"
