"""`manage.py runhttps`: the HTTPS listener (MTA-STS, autoconfig, the admin) on its own.

Only wiring: the database must already be migrated (`everlock migrate`, or one start of
`everlock serve`).
"""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from everlock_site.https import start_https
from everlock_site.listen import parse_listen, serve_until_stopped


class Command(BaseCommand):
    help = "Run the HTTPS listener: MTA-STS policies, mail client autoconfiguration, the admin web UI."

    def add_arguments(self, parser):
        parser.add_argument("--listen", default="0.0.0.0:443", metavar="ADDR", help="HOST:PORT to listen on")

    def handle(self, *args, **opts):
        listens = {"https": parse_listen(opts["listen"], option="--listen")}
        asyncio.run(serve_until_stopped(start_https, listens=listens))
