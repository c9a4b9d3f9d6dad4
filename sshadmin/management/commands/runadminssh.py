"""`manage.py runadminssh`: the admin SSH console on its own.

Only wiring: the database must already be migrated (`everlock migrate`, or one start of
`everlock serve`).
"""

from __future__ import annotations

import asyncio
import logging

from django.core.management.base import BaseCommand

from accounts.bootstrap import add_admin_arguments, check_admin_options, ensure_admin
from everlock_site.listen import parse_listen

log = logging.getLogger("sshadmin")


class Command(BaseCommand):
    help = "Run the admin SSH console."

    def add_arguments(self, parser):
        parser.add_argument("--listen", default="0.0.0.0:2222", metavar="ADDR", help="HOST:PORT to listen on")
        add_admin_arguments(parser)

    def handle(self, *args, **opts):
        listen = parse_listen(opts["listen"], option="--listen")
        ensure_admin(opts, check_admin_options(opts), log=log)
        from sshadmin.server import serve_console

        asyncio.run(serve_console(listen))
