"""Certificates obtained by ACME, the ACME account, and the http-01 answers being served.

Certificates live in the database, not in files: every listener process, on this machine or
another one sharing the database, reads the same rows, and a new row is how a renewal
reaches them (tls.store polls the newest id). The private keys are as safe as the database
(which already holds the DKIM keys and password hashes) and its backups.
"""

from __future__ import annotations

from django.db import models


class Certificate(models.Model):
    """One issued certificate: its chain, its key and what the store needs to pick it."""

    # The names it covers (subjectAltName dNSName entries, lower-case A-labels), first the
    # name it was requested for.
    names = models.JSONField()
    chain_pem = models.TextField(help_text="the certificate, then its issuers (PEM)")
    key_pem = models.TextField()
    issuer = models.CharField(max_length=255)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField(db_index=True)
    # Two thirds into its lifetime (not_before + 2/3 of the validity): when renewal starts.
    renew_after = models.DateTimeField()
    directory = models.CharField(max_length=500, help_text="the ACME directory that issued it")
    # Ordered by an administrator (/tls request): renewed for as long as it is not deleted.
    # Otherwise it was ordered for names Everlock serves, and is renewed while it serves one.
    requested = models.BooleanField(default=False)
    # How each name was proved: {"mail.example.com": "dns-01", ...}.
    challenges = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return ", ".join(self.names)


class AcmeAccount(models.Model):
    """The ACME account of one directory: its key and its URL at the CA (RFC 8555 section 7.3)."""

    directory = models.CharField(max_length=500, unique=True)
    email = models.CharField(max_length=254)
    key_pem = models.TextField()
    uri = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.email} at {self.directory}"


class HTTPChallenge(models.Model):
    """An http-01 answer: GET /.well-known/acme-challenge/TOKEN returns `key_authorization`
    (RFC 8555 section 8.3) while the order that published it runs."""

    token = models.CharField(max_length=255, unique=True)
    key_authorization = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.token
