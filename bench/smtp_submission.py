"""Submission throughput (AUTH PLAIN on every connection, Ed25519 + RSA DKIM) against a bare
aiosmtpd server that accepts any login and discards.

    .venv/bin/python bench/smtp_submission.py      (BENCH_MESSAGES=1000, BENCH_ROUNDS=5 by default)
"""

import sys
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_load import run

if __name__ == "__main__":
    run(submission=True, target=0.60)
