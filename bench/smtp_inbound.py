"""Inbound SMTP throughput (durable local delivery) against a bare aiosmtpd server that discards.

.venv/bin/python bench/smtp_inbound.py      (BENCH_MESSAGES=1000 by default)
"""

import sys
from pathlib import Path

# Import from the repository root, not from bench/ (whose modules could shadow packages).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH]

from bench.smtp_load import run  # noqa: E402

if __name__ == "__main__":
    run(submission=False, target=0.80)
