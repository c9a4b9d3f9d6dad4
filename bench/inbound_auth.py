"""Inbound throughput with every check on (SPF, DKIM with an Ed25519 and an RSA signature,
DMARC, ARC, iprev) against the same load with the checks off, in the same run. The sender's
domain is a zone hosted by Everlock's own DNS server, which answers every lookup.

.venv/bin/python bench/inbound_auth.py      (BENCH_MESSAGES=1000, BENCH_ROUNDS=5 by default)

Two Everlock servers (checks on, checks off) over one data dir, each in its own process, take
turns; the DNS server runs in a third process. Target: checks on >= 0.7x checks off. The CPU
time each server's processes used while measuring, per message, is printed too: on a machine
shared with other work it says more than the rates.
"""

import asyncio
import email.utils
import sys
import tempfile
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.imap import tree_cpu
from bench.smtp_load import (
    CLIENTS,
    MESSAGES,
    ROUNDS,
    _everlock_server,
    _rounds,
    measure,
    prepare,
    setup_django,
    start,
)

TARGET = 0.70
SENDER_DOMAIN = "sender.test"


def hosted_sender(data_dir: str) -> tuple[str, str]:
    """sender.test with SPF (127.0.0.1), DKIM keys and DMARC p=reject, and a PTR name for
    127.0.0.1 that resolves back; returns the (Ed25519, RSA) private keys."""
    setup_django(data_dir)
    from dns_zones.services import record_add, zone_create
    from mail.dkim.keys import generate_ed25519_pem, generate_rsa_pem, txt_presentation, txt_value

    ed, rsa = generate_ed25519_pem(), generate_rsa_pem()
    zone_create(origin=SENDER_DOMAIN)
    zone_create(origin="0.0.127.in-addr.arpa")
    for name, value in (
        ("@", "v=spf1 ip4:127.0.0.1 -all"),
        ("_dmarc", "v=DMARC1; p=reject"),
        ("ed._domainkey", txt_value(ed)),
        ("rsa._domainkey", txt_value(rsa)),
    ):
        record_add(origin=SENDER_DOMAIN, name=name, rtype="TXT", data=txt_presentation(value))
    record_add(origin=SENDER_DOMAIN, name="mx", rtype="A", data="127.0.0.1")
    record_add(origin="0.0.127.in-addr.arpa", name="1", rtype="PTR", data=f"mx.{SENDER_DOMAIN}.")
    return ed, rsa


def signed_message(ed: str, rsa: str, size: int = 2048) -> bytes:
    from mail.dkim.signing import sign

    head = (
        f"From: Carol <carol@{SENDER_DOMAIN}>\r\nTo: bob@example.com\r\nSubject: bench\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <bench@{SENDER_DOMAIN}>\r\n\r\n"
    ).encode()
    line = b"x" * 70 + b"\r\n"
    raw = head + line * ((size - len(head)) // len(line))
    return (
        sign(raw, domain=SENDER_DOMAIN, selector="ed", private_key_pem=ed)
        + sign(raw, domain=SENDER_DOMAIN, selector="rsa", private_key_pem=rsa)
        + raw
    )


def _dns_server(ready, data_dir: str) -> None:
    setup_django(data_dir)
    from dns_zones.server.listener import start_dns
    from everlock_site.listen import ListenAddress

    async def main() -> None:
        server = await start_dns(listens={"dns": ListenAddress("127.0.0.1", 0)})
        ready.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    prepare(data_dir, dkim=False)
    ed, rsa = hosted_sender(data_dir)
    data = signed_message(ed, rsa)
    dns, dns_port = start(_dns_server, data_dir)
    checked, checked_ports = start(
        _everlock_server,
        data_dir,
        {
            "EVERLOCK_DNS": "true",
            "EVERLOCK_INBOUND_CHECKS": "true",
            "EVERLOCK_RESOLVER": f"127.0.0.1:{dns_port}",
        },
        daemon=False,  # it checks signatures in worker processes of its own
    )
    unchecked, unchecked_ports = start(_everlock_server, data_dir, {"EVERLOCK_INBOUND_CHECKS": "false"})
    try:
        cpu_before = [tree_cpu(p.pid) for p in (unchecked, checked, dns)]
        # The checked server goes second in each round: the last message filed is its.
        off_rounds, on_rounds = measure(
            [unchecked_ports[0], checked_ports[0]],
            sender=f"carol@{SENDER_DOMAIN}",
            rcpt="bob@example.com",
            auth=None,
            data=data,
        )
        off_cpu, on_cpu, dns_cpu = (
            (tree_cpu(p.pid) - before) / (CLIENTS + ROUNDS * MESSAGES)
            for p, before in zip((unchecked, checked, dns), cpu_before, strict=True)
        )
    finally:
        for process in (checked, unchecked, dns):
            process.terminate()
    from mail.models import Message
    from mail.services.storage import read_content

    sample = read_content(Message.objects.order_by("-id").first().content)
    results = sample.split(b"\r\n\r\n")[0].split(b"Authentication-Results: ", 1)[1].split(b"\r\nReceived:")[0]
    on_rate, off_rate = max(on_rounds), max(off_rounds)
    print(f"inbound, {MESSAGES} messages of 2 KB signed Ed25519 + RSA, {CLIENTS} concurrent clients,")
    print("one connection each; the sender's zone answered by Everlock's DNS server")
    print(f"best of {ROUNDS} rounds each, the servers taking turns, after a warm-up of {CLIENTS} messages")
    print(f"checks off:  {off_rate:8.1f} msgs/s  (rounds: {_rounds(off_rounds)})")
    print(f"checks on:   {on_rate:8.1f} msgs/s  (rounds: {_rounds(on_rounds)})")
    print(f"ratio:       {on_rate / off_rate:8.1%} (target {TARGET:.0%})")
    print(f"CPU per message (all of a server's processes): checks off {off_cpu * 1000:.2f} ms,")
    print(f"  checks on {on_cpu * 1000:.2f} ms (ratio {off_cpu / on_cpu:.1%}),", end=" ")
    print(f"the DNS server {dns_cpu * 1000:.3f} ms")
    print(f"messages filed: {Message.objects.count()}; the results of the last one checked:")
    print("  " + results.decode().replace("\r\n\t", "\n  "))


if __name__ == "__main__":
    main()
