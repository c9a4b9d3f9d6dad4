from django.db import models


class MtaStsPolicy(models.Model):
    """The MTA-STS policy (RFC 8461) of a remote domain, as last fetched; shared by every
    delivery worker. `mx` holds the policy's mx patterns, one per line. A policy is used until
    `expires_at` (fetched_at + max_age, RFC 8461 section 3.2), and fetched again sooner when
    the domain's `_mta-sts` TXT record names another id (section 5.1)."""

    class Mode(models.TextChoices):
        ENFORCE = "enforce"
        TESTING = "testing"
        NONE = "none"

    domain = models.CharField(max_length=253, unique=True)
    policy_id = models.CharField(max_length=32)
    mode = models.CharField(max_length=10, choices=Mode.choices)
    mx = models.TextField()
    max_age = models.PositiveIntegerField()
    fetched_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        verbose_name = "MTA-STS policy"
        verbose_name_plural = "MTA-STS policies"
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.domain} ({self.mode}, id {self.policy_id})"

    @property
    def mx_patterns(self) -> list[str]:
        return self.mx.split()


class TlsResult(models.Model):
    """How outbound TLS went with a recipient domain on one day (UTC): one counter per policy,
    MX host and result, what a TLS-RPT report (RFC 8460 section 4.4) is built from.

    `result` is "success" or an RFC 8460 section 4.3 result type ("starttls-not-supported",
    "certificate-host-mismatch", "validation-failure", "sts-policy-fetch-error", ...).
    """

    class PolicyType(models.TextChoices):
        STS = "sts"
        NO_POLICY = "no-policy-found"

    domain = models.CharField(max_length=253)
    day = models.DateField()
    policy_type = models.CharField(max_length=20, choices=PolicyType.choices)
    policy_id = models.CharField(max_length=32, blank=True, default="")
    mx_host = models.CharField(max_length=253, blank=True, default="")
    result = models.CharField(max_length=40)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "TLS result"
        ordering = ["-day", "domain", "mx_host", "result"]
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "day", "policy_type", "policy_id", "mx_host", "result"],
                name="tls_result_one_counter",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.domain} {self.mx_host} {self.result}: {self.count}"
