from django.apps import AppConfig


class SshAdminConfig(AppConfig):
    name = "sshadmin"
    verbose_name = "Admin SSH console"
