"""DKIM signing throughput: Everlock's dual signing (Ed25519 + RSA-2048) against stock dkimpy's
RSA-2048 signing alone, on the same message, in one run.

    .venv/bin/python bench/dkim_sign.py [--seconds 3]

Prints messages/s for each and the ratio; Everlock's dual signing must be at least 3 times
faster than dkimpy's RSA (exit status 1 otherwise). Pure computation: no Django database.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import dkim

from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem
from mail.dkim.signing import sign_for_domain

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Tue, 24 Nov 2026 18:00:00 +0000\r\n"
    b"Message-ID: <bench.1@mail.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + b"The figures for the quarter are attached below, line by line.  \r\n" * 60
)
REQUIRED_RATIO = 3.0


def rate(fn, seconds: float) -> float:
    """Calls of `fn` per second over about `seconds` of wall-clock time."""
    fn()  # warm up: key parsing, caches
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent on each signer")
    args = parser.parse_args()

    ed_pem, rsa_pem = generate_ed25519_pem(), generate_rsa_pem()
    domain = SimpleNamespace(
        name="example.com",
        dkim_enabled=True,
        dkim_selector="default",
        dkim_private_key_pem=ed_pem,
        dkim_rsa_selector="default-rsa",
        dkim_rsa_private_key_pem=rsa_pem,
    )
    rsa_bytes = rsa_pem.encode()

    def everlock() -> bytes:
        return sign_for_domain(domain, MESSAGE)

    def dkimpy_rsa() -> bytes:
        return dkim.sign(
            MESSAGE, b"default-rsa", b"example.com", rsa_bytes, canonicalize=(b"relaxed", b"relaxed")
        )

    assert everlock().count(b"DKIM-Signature:") == 2
    ours = rate(everlock, args.seconds)
    theirs = rate(dkimpy_rsa, args.seconds)
    ratio = ours / theirs
    print(f"message size: {len(MESSAGE)} bytes")
    print(f"everlock dual (ed25519 + rsa-2048): {ours:10.1f} messages/s")
    print(f"dkimpy rsa-2048 alone:              {theirs:10.1f} messages/s")
    print(f"ratio: {ratio:.1f}x (required: >= {REQUIRED_RATIO:.0f}x)")
    return 0 if ratio >= REQUIRED_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
