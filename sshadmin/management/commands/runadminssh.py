"""`manage.py runadminssh`: the admin SSH console on its own.

Only wiring: the database must already be migrated (`everlock migrate`, or one start of
`everlock serve`).
"""

from __future__ import annotations

import asyncio
import logging

from django.core.management.base import BaseCommand, CommandError

from everlock_site.listen import parse_listen

log = logging.getLogger("sshadmin")


class Command(BaseCommand):
    help = "Run the admin SSH console."

    def add_arguments(self, parser):
        parser.add_argument("--listen", default="0.0.0.0:2222", metavar="ADDR", help="HOST:PORT to listen on")
        parser.add_argument("--admin-user", default=None, help="create this admin user when missing")
        parser.add_argument("--admin-password", default=None)

    def handle(self, *args, **opts):
        listen = parse_listen(opts["listen"], option="--listen")
        if bool(opts["admin_user"]) != bool(opts["admin_password"]):
            raise CommandError("--admin-user and --admin-password go together")
        if opts["admin_user"]:
            from accounts.services import AccountError, user_add

            try:
                user, created = user_add(
                    name=opts["admin_user"], password=opts["admin_password"], is_admin=True
                )
            except AccountError as exc:
                raise CommandError(str(exc)) from None
            if created:
                log.info("admin user %s created", user.username)
        from sshadmin.server import serve_console

        asyncio.run(serve_console(listen))
