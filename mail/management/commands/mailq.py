"""`manage.py mailq`: the outbound queue, like postqueue -p."""

from django.core.management.base import BaseCommand

from mail.delivery.queue import format_list, queue_list


class Command(BaseCommand):
    help = "List the outbound queue: id, sender, recipients, attempts, next attempt, last reply."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="also list delivered and failed entries")

    def handle(self, *args, **opts):
        self.stdout.write(format_list(queue_list(include_done=opts["all"])))
