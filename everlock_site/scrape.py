"""GET /metrics on the HTTP listener: Prometheus text format.

A scrape adds up the counters of every process (everlock_site.metrics, prometheus-client's
multiprocess files) and reads the rest where it is true now: the outbound queue from the
database, the certificates the TLS listeners present as tls.services sees them.

Who may scrape: with EVERLOCK_METRICS_TOKEN unset, clients on loopback only; with it set,
any client that sends `Authorization: Bearer TOKEN`, and no other (a reverse proxy on the
same host makes every client look local, so the address alone would not do).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

# Imported for its counters: those without labels show (as 0) from the first scrape on.
from everlock_site import metrics  # noqa: F401
from mail.models import OutboundDelivery
from tls.services import presented_certificates

log = logging.getLogger("everlock_site.http")


class StateCollector:
    """The gauges read at scrape time: queue size by status, the age of the oldest queued
    entry, and the expiry of each certificate the TLS listeners present."""

    def collect(self):
        now = datetime.now(UTC)
        size = GaugeMetricFamily(
            "everlock_queue_size",
            "Outbound queue entries (message, destination domain) by status.",
            labels=["status"],
        )
        counts = dict(
            OutboundDelivery.objects.filter(
                status__in=[OutboundDelivery.Status.QUEUED, OutboundDelivery.Status.HELD]
            )
            .values_list("status")
            .annotate(Count("id"))
        )
        for status in (OutboundDelivery.Status.QUEUED, OutboundDelivery.Status.HELD):
            size.add_metric([status.value], counts.get(status.value, 0))
        yield size
        oldest = OutboundDelivery.objects.filter(status=OutboundDelivery.Status.QUEUED).aggregate(
            oldest=Min("created_at")
        )["oldest"]
        yield GaugeMetricFamily(
            "everlock_queue_oldest_age_seconds",
            "Seconds since the oldest queued entry was queued (0 when the queue is empty).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        expiry = GaugeMetricFamily(
            "everlock_tls_certificate_expiry_timestamp_seconds",
            "When each certificate the TLS listeners present expires (Unix time), by its first name "
            "and source (acme, file, self-signed).",
            labels=["name", "source"],
        )
        try:
            presented = presented_certificates(
                cert_file=settings.EVERLOCK_TLS_CERT,
                key_file=settings.EVERLOCK_TLS_KEY,
                data_dir=Path(settings.DATA_DIR),
                hostname=settings.EVERLOCK_HOSTNAME,
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.warning("metrics: cannot read the certificates: %s", exc)
            presented = []
        for certificate in presented:
            name = certificate.names[0] if certificate.names else ""
            expiry.add_metric([name, certificate.source], certificate.not_after.timestamp())
        yield expiry


def allowed(request: HttpRequest, *, token: str) -> bool:
    """May this request read the metrics? (See the module's docstring.)"""
    if token:
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.EVERLOCK_METRICS_TOKEN
    if not allowed(request, token=token):
        if token:
            response = HttpResponse("401 Unauthorized: a bearer token is required\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="everlock metrics"'
        else:
            response = HttpResponse("403 Forbidden: metrics are served to loopback only\n", status=403)
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.EVERLOCK_METRICS_DIR))
    registry.register(StateCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
