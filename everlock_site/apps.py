from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class EverlockSiteConfig(AppConfig):
    default = True  # of the two configs here, the one for "everlock_site"
    name = "everlock_site"
    verbose_name = "Everlock"


class EverlockAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with Everlock's site (the dashboard front page)."""

    default = False
    default_site = "everlock_site.admin_site.EverlockAdminSite"
