"""`manage.py runhttp`: the admin web UI on its own.

Only wiring: the database must already be migrated (`everlock migrate`, or one start of
`everlock serve`).
"""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from everlock_site.http import serve_http
from everlock_site.listen import parse_listen


class Command(BaseCommand):
    help = "Run the admin web UI (the Django admin) under a production WSGI server."

    def add_arguments(self, parser):
        parser.add_argument(
            "--listen", default="127.0.0.1:8080", metavar="ADDR", help="HOST:PORT to listen on"
        )

    def handle(self, *args, **opts):
        asyncio.run(serve_http(parse_listen(opts["listen"], option="--listen")))
