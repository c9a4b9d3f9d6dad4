"""The `everlock` console script: manage.py under another name."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["everlock", *sys.argv[1:]])
