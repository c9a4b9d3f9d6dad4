from django.apps import AppConfig


class TLSConfig(AppConfig):
    name = "tls"
    verbose_name = "Certificates"
