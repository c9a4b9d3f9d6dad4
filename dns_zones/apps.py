from django.apps import AppConfig


class DnsZonesConfig(AppConfig):
    name = "dns_zones"
    verbose_name = "Hosted DNS"
