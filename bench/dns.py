"""Queries per second of Everlock's authoritative DNS server over UDP, concurrent clients.

Starts `manage.py rundns` on 127.0.0.1 with its own data dir and SQLite database holding a
hosted zone (example.com), then runs client processes (separate from the server's process)
that each keep many queries in flight on several UDP sockets, for a mix of names: A, MX
with glue, a NXDOMAIN, a CNAME, the 2048-bit RSA DKIM TXT (split into several strings).

    .venv/bin/python bench/dns.py [--seconds 5] [--clients 1] [--sockets 16] [--window 8] [--unique]

Prints the queries/s answered, with the number of lost queries and wrong answers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])
PYTHON = sys.executable

SETUP = """
import base64
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_zones.services import RecordSpec, record_add, replace_derived_records, zone_create
zone_create(origin="example.com")
record_add(origin="example.com", name="www", rtype="A", data="192.0.2.1")
record_add(origin="example.com", name="mail", rtype="A", data="192.0.2.25")
record_add(origin="example.com", name="@", rtype="MX", data="10 mail")
record_add(origin="example.com", name="alias", rtype="CNAME", data="www")
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
der = key.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
value = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
replace_derived_records(source="bench", records=[
    RecordSpec("default-rsa._domainkey.example.com", "TXT", 3600, '"' + value + '"')])
"""

QUESTIONS = [
    ("www.example.com", "A"),
    ("example.com", "MX"),
    ("nx.example.com", "A"),
    ("alias.example.com", "A"),
    ("default-rsa._domainkey.example.com", "TXT"),
]


def _queries() -> list[bytes]:
    import dns.message

    return [dns.message.make_query(q, t, use_edns=0, payload=1232).to_wire() for q, t in QUESTIONS]


def client(port: int, seconds: float, sockets: int, window: int, unique: bool, queue) -> None:
    """Keep `window` queries in flight on each of `sockets` sockets; report counts on `queue`.

    With `unique`, every query asks for a new random name (NXDOMAIN), so no answer comes from
    the server's response cache: the worst case.
    """
    import dns.message

    wires = _queries()
    template = bytearray(dns.message.make_query("xxxxxxxx.example.com", "A", use_edns=0).to_wire())
    unique_tail = bytes(template[21 : 12 + template[12:].index(b"\x00") + 5])
    # The question section of each query: a response must echo it (checked on every answer).
    questions = [w[12 : 12 + w[12:].index(b"\x00") + 5] for w in wires]
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
        sel.register(sock, selectors.EVENT_READ)
    rng = random.Random()
    pending: dict[socket.socket, dict[int, float]] = {s: {} for s in socks}
    answered = lost = wrong = 0

    def send(sock):
        msg_id = rng.getrandbits(16)
        while msg_id in pending[sock]:
            msg_id = rng.getrandbits(16)
        pending[sock][msg_id] = time.monotonic()
        if unique:
            template[0:2] = struct.pack("!H", msg_id)
            template[13:21] = b"%08x" % rng.getrandbits(32)
            sock.send(template)
            return
        wire = wires[msg_id % len(wires)]
        sock.send(struct.pack("!H", msg_id) + wire[2:])

    for sock in socks:
        for _ in range(window):
            send(sock)
    start = time.monotonic()
    end = start + seconds
    last_sweep = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                (msg_id,) = struct.unpack_from("!H", data)
                if unique:  # the random label differs; the rest of the question must match
                    echoed, question = data[21 : 21 + len(unique_tail)], unique_tail
                else:
                    question = questions[msg_id % len(questions)]
                    echoed = data[12 : 12 + len(question)]
                if pending[sock].pop(msg_id, None) is None or not data[2] & 0x80 or echoed != question:
                    wrong += 1
                    continue
                answered += 1
                send(sock)
        if now - last_sweep > 0.5:
            last_sweep = now
            for sock in socks:
                for msg_id, sent in list(pending[sock].items()):
                    if now - sent > 1.0:
                        del pending[sock][msg_id]
                        lost += 1
                        send(sock)
    queue.put((answered, lost, wrong, time.monotonic() - start))


def _show_answers(port: int) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    for qname, qtype in QUESTIONS:
        r = dns.query.udp(dns.message.make_query(qname, qtype, use_edns=0), "127.0.0.1", port=port, timeout=5)
        print(f"  {qname} {qtype}: {dns.rcode.to_text(r.rcode())}, {sum(len(x) for x in r.answer)} answer(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--sockets", type=int, default=16, help="UDP sockets per client process")
    parser.add_argument("--window", type=int, default=8, help="queries in flight per socket")
    parser.add_argument(
        "--unique", action="store_true", help="a new random name in every query (no cache hits)"
    )
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="everlock-bench-dns-")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EVERLOCK_DATA_DIR=data_dir, EVERLOCK_LOG="info", EVERLOCK_DNS="on")
    manage = [PYTHON, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "shell", "-v0", "-c", SETUP], env=env, check=True, cwd=ROOT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = Path(data_dir) / "rundns.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [*manage, "rundns", "--listen", f"127.0.0.1:{port}"], env=env, cwd=ROOT, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while "DNS listener on" not in log_path.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the DNS server did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        queue = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(
                target=client, args=(port, args.seconds, args.sockets, args.window, args.unique, queue)
            )
            for _ in range(args.clients)
        ]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        print("answers served during the run:")
        _show_answers(port)
    finally:
        server.terminate()
        server.wait(timeout=10)
    answered = sum(r[0] for r in results)
    lost = sum(r[1] for r in results)
    wrong = sum(r[2] for r in results)
    elapsed = max(r[3] for r in results)
    in_flight = args.clients * args.sockets * args.window
    mix = "a new random name per query (no cache hits)" if args.unique else f"{len(QUESTIONS)} questions"
    print(f"DNS over UDP, hosted zone, {mix}, {args.clients} client process(es), {in_flight} in flight")
    print(f"  answered {answered} in {elapsed:.1f} s: {answered / elapsed:,.0f} queries/s")
    print(f"  lost (no answer within 1 s) {lost}, wrong id or not a response {wrong}")


if __name__ == "__main__":
    main()
