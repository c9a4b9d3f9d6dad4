from django.db import models


class Zone(models.Model):
    """A DNS zone served authoritatively by Everlock.

    `origin` is in normal form: lowercase ASCII (IDNA), no trailing dot. The SOA and apex NS
    records are answered from these fields; `serial` goes up on every change of the zone.
    """

    origin = models.CharField(max_length=253, unique=True)
    primary_ns = models.CharField(max_length=253, help_text="SOA MNAME, e.g. ns1.example.com")
    hostmaster = models.CharField(max_length=253, help_text="SOA RNAME, e.g. hostmaster.example.com")
    nameservers = models.TextField(
        help_text="Apex NS host names, one per line (the primary name server when empty)",
        blank=True,
    )
    serial = models.PositiveBigIntegerField(default=1)
    refresh = models.PositiveIntegerField(default=3600)
    retry = models.PositiveIntegerField(default=600)
    expire = models.PositiveIntegerField(default=1209600)
    minimum = models.PositiveIntegerField(default=300, help_text="Negative-answer TTL (RFC 2308)")
    default_ttl = models.PositiveIntegerField(default=3600)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["origin"]

    def __str__(self) -> str:
        return self.origin


class Record(models.Model):
    """One resource record. `name` is absolute, in normal form, without the trailing dot.

    Records with a `source` are derived (for example the DKIM TXT of a mail domain): they are
    read-only to administrators and change only through the service that derives them; an
    administrator's record of the same kind at the same name takes a derived record's place.
    """

    zone = models.ForeignKey(Zone, on_delete=models.CASCADE, related_name="records")
    name = models.CharField(max_length=253)
    rtype = models.CharField("type", max_length=10)
    ttl = models.PositiveIntegerField(default=3600)
    data = models.TextField(help_text="Presentation format, as in a zone file")
    source = models.CharField(
        max_length=300, blank=True, default="", help_text="What derived this record; empty for admin records"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["zone", "name", "rtype", "id"]
        indexes = [models.Index(fields=["name", "rtype"]), models.Index(fields=["source"])]

    def __str__(self) -> str:
        return f"{self.name} {self.ttl} IN {self.rtype} {self.data}"

    @property
    def derived(self) -> bool:
        return bool(self.source)
