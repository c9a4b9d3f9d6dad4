#!/usr/bin/env python3
"""Django's command-line utility for administrative tasks: the same program as `everlock`."""

import sys

from everlock_site.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
