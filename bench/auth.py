"""Password checks: the hasher on the first login, the verified-credential cache afterwards.

Run: .venv/bin/python bench/auth.py [ROUNDS]
Uses a throwaway data dir (SQLite); prints the cost of one check of each kind.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])
os.environ["EVERLOCK_DATA_DIR"] = tempfile.mkdtemp(prefix="everlock-bench-")
os.environ.pop("DATABASE_URL", None)
os.environ.setdefault("EVERLOCK_LOG", "error")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")

import django

django.setup()

from django.core.management import call_command

from accounts.authentication import authenticate, verified_credentials
from accounts.services import user_add


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    user_add(name="alice@example.com", password="correct horse")

    cold = []
    for _ in range(5):
        verified_credentials.clear()
        start = time.perf_counter()
        assert authenticate("alice@example.com", "correct horse", client_address="192.0.2.1", service="bench")
        cold.append(time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(rounds):
        assert authenticate("alice@example.com", "correct horse", client_address="192.0.2.1", service="bench")
    warm = (time.perf_counter() - start) / rounds

    print(f"first login (password hasher):   {min(cold) * 1000:8.1f} ms (best of 5)")
    print(f"later logins (verified cache):   {warm * 1000:8.2f} ms (mean of {rounds})")
    print(f"speed-up:                         {min(cold) / warm:8.0f}x")


if __name__ == "__main__":
    main()
