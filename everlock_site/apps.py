from django.apps import AppConfig


class EverlockSiteConfig(AppConfig):
    name = "everlock_site"
    verbose_name = "Everlock"
