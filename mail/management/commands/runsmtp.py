"""`manage.py runsmtp`: the inbound and submission SMTP listeners (also over implicit TLS)."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from everlock_site.listen import parse_listen, serve_until_stopped
from mail.smtp.listeners import start_listeners


class Command(BaseCommand):
    help = "Run the inbound SMTP listener and/or the submission listener."

    def add_arguments(self, parser):
        parser.add_argument("--listen", default=None, metavar="ADDR", help="inbound SMTP, e.g. 0.0.0.0:25")
        parser.add_argument(
            "--submission-listen", default=None, metavar="ADDR", help="submission, e.g. 0.0.0.0:587"
        )
        parser.add_argument(
            "--submissions-listen",
            default=None,
            metavar="ADDR",
            help="submission over implicit TLS (RFC 8314), e.g. 0.0.0.0:465",
        )

    def handle(self, *args, **opts):
        listens = {
            "smtp": parse_listen(opts["listen"], option="--listen") if opts["listen"] else None,
            "submission": parse_listen(opts["submission_listen"], option="--submission-listen")
            if opts["submission_listen"]
            else None,
            "submissions": parse_listen(opts["submissions_listen"], option="--submissions-listen")
            if opts["submissions_listen"]
            else None,
        }
        if not any(listens.values()):
            raise CommandError("give --listen, --submission-listen and/or --submissions-listen")
        asyncio.run(serve_until_stopped(start_listeners, listens=listens))
