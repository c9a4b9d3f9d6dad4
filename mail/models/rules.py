from django.db import models


class RuleSet(models.Model):
    """The installation's mail rules: the rules.toml text, validated, as one row.

    `version` grows by one with every change; each process keeps the compiled rules keyed by
    it (mail.rules.engine), so a change is picked up by the next delivery without a restart.
    The text is kept as written (comments too) and is what everlock-mail/rules.toml holds.
    """

    text = models.TextField(blank=True, default="", help_text="rules.toml (see mail.rules.language)")
    version = models.PositiveBigIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "mail rules"
        verbose_name_plural = "mail rules"

    def __str__(self) -> str:
        return f"mail rules, version {self.version}"


class VacationReply(models.Model):
    """When `recipient`'s vacation rule last answered `sender` (RFC 3834: at most once per days)."""

    recipient = models.CharField(max_length=320)
    sender = models.CharField(max_length=320)
    last_sent_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "vacation replies"
        ordering = ["recipient", "sender"]
        constraints = [
            models.UniqueConstraint(fields=["recipient", "sender"], name="one_vacation_reply_per_pair"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient} -> {self.sender} at {self.last_sent_at}"


class RedirectRecord(models.Model):
    """Redirects a rule made for mail from `sender`: the memory that stops redirect storms."""

    sender = models.CharField(max_length=320)
    count = models.PositiveIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["sender", "created_at"])]

    def __str__(self) -> str:
        return f"{self.count} redirect(s) for {self.sender or '<>'} at {self.created_at}"
