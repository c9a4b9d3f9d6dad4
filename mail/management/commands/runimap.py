"""`manage.py runimap`: the IMAP listeners (STARTTLS and implicit TLS), nothing else."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from everlock_site.listen import parse_listen, serve_until_stopped
from mail.imap.listener import start_listeners


class Command(BaseCommand):
    help = "Run the IMAP listeners: STARTTLS (e.g. 0.0.0.0:143) and/or implicit TLS (e.g. 0.0.0.0:993)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--listen", default=None, metavar="ADDR", help="IMAP with STARTTLS, e.g. 0.0.0.0:143"
        )
        parser.add_argument(
            "--tls-listen", default=None, metavar="ADDR", help="IMAP over implicit TLS, e.g. 0.0.0.0:993"
        )

    def handle(self, *args, **opts):
        listens = {
            "imap": parse_listen(opts["listen"], option="--listen") if opts["listen"] else None,
            "imaps": parse_listen(opts["tls_listen"], option="--tls-listen") if opts["tls_listen"] else None,
        }
        if not any(listens.values()):
            raise CommandError("give --listen and/or --tls-listen")
        asyncio.run(serve_until_stopped(start_listeners, listens=listens))
