"""The admin web UI's site: Django's AdminSite with Everlock's front page.

The front page is a dashboard a sysadmin opens first: the outbound queue (size, oldest
entry), the deliveries and bounces of the last 24 hours, and each mail domain's DNS (the
records it needs and whether the zone hosted here serves them), each with links to the pages
behind it. There is no public site, so there is no "View site" link, and no navigation
sidebar: at 1280 px its quarter of the width is what the wider lists need.
"""

from __future__ import annotations

from django.contrib import admin


class EverlockAdminSite(admin.AdminSite):
    site_header = "Everlock administration"
    site_title = "Everlock"
    index_title = "Dashboard"
    index_template = "everlock/index.html"
    site_url = None
    # The index is one click away (the header); every page gets the whole width for its table.
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        from mail.delivery.queue import queue_summary
        from mail.services.dns_status import domains_dns

        context = {"queue": queue_summary(), "domains_dns": domains_dns(), **(extra_context or {})}
        return super().index(request, context)
