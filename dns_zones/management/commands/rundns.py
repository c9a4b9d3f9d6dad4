"""`manage.py rundns --listen 0.0.0.0:53 [--processes N]`: the authoritative DNS server alone."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from dns_zones.server.listener import start_dns
from everlock_site.listen import parse_listen, serve_until_stopped
from everlock_site.supervisor import LISTENER, ChildSpec, Supervisor, claim_ports


class Command(BaseCommand):
    help = "Serve the hosted zones over UDP and TCP until interrupted."

    def add_arguments(self, parser):
        parser.add_argument(
            "--listen", default="0.0.0.0:53", metavar="ADDR", help="HOST:PORT (default 0.0.0.0:53)"
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            metavar="N",
            help="serve from N supervised processes sharing the port (one per core: $(nproc)); default 1",
        )

    def handle(self, *args, **opts):
        listen = parse_listen(opts["listen"], option="--listen")
        if opts["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        if opts["processes"] == 1:
            asyncio.run(serve_until_stopped(start_dns, listens={"dns": listen}))
        else:
            # The same supervisor as `everlock serve`'s: copies sharing the port, restarted
            # when one dies, drained on SIGTERM; port 0 is one port picked for them all.
            listens = claim_ports({"dns": listen}, shared={"dns"})
            spec = ChildSpec(LISTENER, (("backend-dns-dns", start_dns),), copies=opts["processes"])
            Supervisor([spec], listens).run()
