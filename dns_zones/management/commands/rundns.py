"""`manage.py rundns --listen 0.0.0.0:53`: the authoritative DNS server alone."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from dns_zones.server.listener import start_dns
from everlock_site.listen import parse_listen, serve_until_stopped


class Command(BaseCommand):
    help = "Serve the hosted zones over UDP and TCP until interrupted."

    def add_arguments(self, parser):
        parser.add_argument(
            "--listen", default="0.0.0.0:53", metavar="ADDR", help="HOST:PORT (default 0.0.0.0:53)"
        )

    def handle(self, *args, **opts):
        listen = parse_listen(opts["listen"], option="--listen")
        asyncio.run(serve_until_stopped(start_dns, listens={"dns": listen}))
