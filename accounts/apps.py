from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def _create_cache_table(sender, using, verbosity=1, **kwargs):
    # The login throttle keeps its counters in the database cache (settings.CACHES), so
    # `everlock migrate` alone prepares a database for every command, the console included.
    call_command("createcachetable", database=using, verbosity=max(verbosity - 1, 0))


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Users and access grants"

    def ready(self):
        post_migrate.connect(_create_cache_table, sender=self, dispatch_uid="accounts.createcachetable")
