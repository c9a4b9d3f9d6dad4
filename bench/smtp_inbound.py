"""Inbound SMTP throughput (durable local delivery) against a bare aiosmtpd server that discards.

.venv/bin/python bench/smtp_inbound.py      (BENCH_MESSAGES=1000, BENCH_ROUNDS=5 by default)
"""

import sys
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_load import run

if __name__ == "__main__":
    run(submission=False, target=0.80)
