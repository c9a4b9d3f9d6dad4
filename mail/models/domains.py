from django.db import models


class MailDomain(models.Model):
    """A local mail domain: what everlock-mail/domains/<name>.toml holds.

    `name` is in normal form (domain_names.normalize_host). The Ed25519 key signs under
    `dkim_selector`, the RSA key under `dkim_rsa_selector`; both sign when both are present.
    """

    class SubmissionAuth(models.TextChoices):
        AUTHENTICATED = "authenticated"
        NONE = "none"

    name = models.CharField(max_length=253, unique=True)
    enabled = models.BooleanField(default=True)
    submission_enabled = models.BooleanField(default=False)
    submission_auth = models.CharField(
        max_length=20, choices=SubmissionAuth.choices, default=SubmissionAuth.AUTHENTICATED
    )
    outbound_hostname = models.CharField(
        max_length=253,
        blank=True,
        default="",
        help_text="EHLO name and Message-Id domain; when empty, mail. followed by the domain name",
    )
    postmaster = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Local part of the mailbox that takes postmaster@ this domain when it has no "
        "postmaster mailbox (RFC 5321 section 4.5.1); when empty, the first admin's mailbox",
    )

    class DmarcPolicy(models.TextChoices):
        NONE = "none"
        QUARANTINE = "quarantine"
        REJECT = "reject"

    class MtaStsMode(models.TextChoices):
        ENFORCE = "enforce"
        TESTING = "testing"
        NONE = "none"

    dmarc_policy = models.CharField(
        max_length=10,
        choices=DmarcPolicy.choices,
        default=DmarcPolicy.QUARANTINE,
        help_text="The p= of the derived DMARC record (RFC 7489 section 6.3)",
    )
    report_address = models.CharField(
        max_length=254,
        blank=True,
        default="",
        help_text="Where DMARC aggregate (rua) and TLS-RPT reports go; when empty, postmaster@ this domain",
    )
    mta_sts_mode = models.CharField(
        max_length=10,
        choices=MtaStsMode.choices,
        default=MtaStsMode.TESTING,
        help_text="The mode of the MTA-STS policy served for this domain (RFC 8461 section 3.2)",
    )
    dkim_enabled = models.BooleanField(default=False)
    dkim_selector = models.CharField(max_length=63, default="default")
    dkim_private_key_pem = models.TextField(blank=True, default="")
    dkim_rsa_selector = models.CharField(max_length=63, default="default-rsa")
    dkim_rsa_private_key_pem = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_hostname(self) -> str:
        return self.outbound_hostname or f"mail.{self.name}"

    @property
    def effective_report_address(self) -> str:
        return self.report_address or f"postmaster@{self.name}"


class DkimRotation(models.Model):
    """A DKIM key rotation of a mail domain in progress (mail.services.dkim_rotation).

    PUBLISHING: the new keys below are published beside the signing ones; signing moves to
    them once their records have been seen through the resolver for `ttl` seconds.
    RETIRING: the domain signs with the new keys; the keys below are the old ones, whose
    records stay published until the grace period after `switched_at` ends.
    """

    class State(models.TextChoices):
        PUBLISHING = "publishing"
        RETIRING = "retiring"

    domain = models.OneToOneField(MailDomain, on_delete=models.CASCADE, related_name="dkim_rotation")
    state = models.CharField(max_length=20, choices=State.choices, default=State.PUBLISHING)
    selector = models.CharField(max_length=63)
    private_key_pem = models.TextField()
    rsa_selector = models.CharField(max_length=63)
    rsa_private_key_pem = models.TextField()
    ttl = models.PositiveIntegerField(help_text="TTL of the published key records, in seconds")
    started_at = models.DateTimeField()
    visible_since = models.DateTimeField(null=True, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.domain.name}: {self.state}"
