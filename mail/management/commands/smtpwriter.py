"""`manage.py smtpwriter FD BATCH`: the SMTP listeners' writer process (mail.smtp.writer).

Started by the listeners themselves with one end of a socket pair as FD; not for hands.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection

from django.core.management.base import BaseCommand

from mail.smtp.writer import serve_writer


class Command(BaseCommand):
    help = "The SMTP listeners' writer process (started by them, on a socket they pass)."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("fd", type=int)
        parser.add_argument("max_batch", type=int)

    def handle(self, *args, **opts):
        # The writer ends when its listener closes the socket, after the commits in hand:
        # a Ctrl-C or a stop signal for the whole process group is for the listener.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve_writer(Connection(opts["fd"]), opts["max_batch"])
