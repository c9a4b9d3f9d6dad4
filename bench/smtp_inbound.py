"""Inbound SMTP throughput, end to end: Everlock (`everlock serve`, its listener processes on
every core, each message filed durably before 250) against a bare aiosmtpd server that
discards, and Postfix 3.7 delivering into a Maildir (a private instance, tests/postfix.py),
counted until the last message is in the Maildir.

.venv/bin/python bench/smtp_inbound.py      BENCH_MESSAGES=1000, BENCH_ROUNDS=5,
                                            BENCH_SIZE=2048 (bytes a message; 102400 for
                                            the 100 KB row), BENCH_PROCESSES (serve's
                                            --processes; default one per core)

Prints the best round of each server, the ratios, and the CPU time each server's processes
spent per message (bench.smtp_load.cpu_seconds: a figure the other load on a shared machine
moves far less than the rates); the Postfix row needs root and Debian's postfix (without
them it is left out). Postfix runs without its per-command debug log.
"""

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_load import (
    CLIENTS,
    MESSAGES,
    ROUNDS,
    _bare_server,
    _cpu_summary,
    _everlock_server,
    _rounds,
    cpu_seconds,
    drive,
    prepare,
    start,
)

SIZE = int(os.environ.get("BENCH_SIZE", "2048"))
TARGET_BARE = 0.8
TARGET_POSTFIX = 2.0 if SIZE <= 4096 else 1.0


def _in_maildir(postfix) -> int:
    new = postfix.maildir / "new"
    return sum(1 for _ in new.iterdir()) if new.exists() else 0


def _postfix_round(postfix, messages: int) -> float:
    """Messages per second from the first connection to the last message in the Maildir."""
    before = _in_maildir(postfix)
    started = time.perf_counter()
    asyncio.run(drive(postfix.port, sender="carol@example.net", rcpt="bob@example.com", auth=None,
                      messages=messages, size=SIZE))  # fmt: skip
    deadline = time.monotonic() + 300
    while _in_maildir(postfix) < before + messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Postfix delivered {_in_maildir(postfix) - before} of {messages}")
        time.sleep(0.01)
    return messages / (time.perf_counter() - started)


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    prepare(data_dir, dkim=False)
    from django.conf import settings

    from tests.postfix import available, running_postfix
    from tls.store import self_signed_pair

    bare, bare_port = start(_bare_server, False)
    ours, ports = start(_everlock_server, data_dir)
    with contextlib.ExitStack() as stack:
        postfix = None
        if available():
            cert, key = self_signed_pair(directory=Path(settings.DATA_DIR) / "tls", hostname="localhost")
            # No per-command debug log or TLS log lines while measuring (tests/postfix.py turns
            # them on for the transcripts the interoperability tests read).
            quiet = {"debug_peer_list": "", "smtpd_tls_loglevel": "0"}
            postfix = stack.enter_context(
                running_postfix(cert=cert, key=key, virtual_domain="example.com", settings=quiet)
            )
        else:
            print("postfix missing (or not root): no Postfix row")

        def everlock_or_bare(port: int, messages: int) -> float:
            return asyncio.run(drive(port, sender="carol@example.net", rcpt="bob@example.com", auth=None,
                                     messages=messages, size=SIZE))  # fmt: skip

        rows = [
            ("bare aiosmtpd (discard)", lambda n: everlock_or_bare(bare_port, n), bare.pid),
            ("everlock (durable, filed)", lambda n: everlock_or_bare(ports[0], n), ours.pid),
        ]
        if postfix is not None:
            postfix_row = (
                "postfix 3.7 into a Maildir",
                lambda n: _postfix_round(postfix, n),
                postfix.master_pid,
            )
            rows.append(postfix_row)
        for _, run, _ in rows:
            run(CLIENTS)  # warm-up
        rates: list[list[float]] = [[] for _ in rows]
        cpu: list[list[float]] = [[] for _ in rows]
        for _ in range(ROUNDS):
            for (_, run, pid), mine, spent in zip(rows, rates, cpu, strict=True):
                before = cpu_seconds(pid)
                mine.append(run(MESSAGES))
                spent.append(1000 * (cpu_seconds(pid) - before) / MESSAGES)
    bare.terminate()
    ours.terminate()
    from mail.models import Message

    processes = os.environ.get("BENCH_PROCESSES") or "one per core"
    print(f"inbound, end to end: {MESSAGES} messages of {SIZE} bytes, {CLIENTS} clients, one connection each")
    print(f"everlock serve --processes {processes}; best of {ROUNDS} rounds each, the servers taking turns")
    print("CPU: the server's processes (all of Postfix's, until the Maildir has them), the median round")
    best = [max(r) for r in rates]
    for (name, _, _), rate, rounds, spent in zip(rows, best, rates, cpu, strict=True):
        print(f"  {name:28s} {rate:8.1f} msgs/s  {_cpu_summary(spent)}  (rounds: {_rounds(rounds)})")
    print(f"  everlock / bare aiosmtpd:    {best[1] / best[0]:8.2f}x (goal {TARGET_BARE:.1f}x)")
    if postfix is not None:
        print(f"  everlock / postfix:          {best[1] / best[2]:8.2f}x (goal {TARGET_POSTFIX:.1f}x)")
    print(f"messages filed by everlock: {Message.objects.count()}")


if __name__ == "__main__":
    os.environ.setdefault("EVERLOCK_LOG", "warning")
    # All the load comes from one address: the per-client limit (20) must not bite.
    os.environ.setdefault("EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT", "100")
    main()
