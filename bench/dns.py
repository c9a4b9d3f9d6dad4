"""Queries per second of Everlock's authoritative DNS server against NSD, measured by dnsperf.

Sets up a throw-away installation (its own data dir and SQLite database) hosting example.com,
starts `manage.py rundns --processes N` on 127.0.0.1 (one process per core by default), and
NSD (Debian's `nsd`, a private config in a temp dir, rate limiting off, its default of one
server process unless --nsd-processes says otherwise) serving the same zone, exported from
Everlock's zone data. dnsperf (Debian's `dnsperf`) then loads each
server in turn, alternating, for two query sets:

- repeated: a mix of five questions (A, MX with glue, a NXDOMAIN, a CNAME, the 2048-bit RSA
  DKIM TXT split into several strings), over and over;
- unique: a new random name under example.com in every query (NXDOMAIN), so nothing a server
  could have remembered from an earlier query helps.

    .venv/bin/python bench/dns.py [--seconds 10] [--rounds 3] [--processes $(nproc)] [--nsd-processes 1]
        [--port 37053] [--nsd-port 37054] [--clients 16] [--threads 1] [--outstanding 300]

Before loading, every question of the mix is asked of both servers and the answers compared.
Prints each run's queries/s, lost queries, the server's CPU time per answered query (all
its processes and threads, from /proc) and how it split over the server's processes (the
kernel hashes each client address and port to one of them: dnsperf -c sets how many ports),
then the medians per server and the ratio. Where the load generator and the servers share
the cores, queries/s follow CPU time per query.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(ROOT)
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

# The zone as Everlock serves it, as a zone file: the SOA first, then every RRset.
EXPORT = """
from dns_zones.server.snapshot import load_snapshot
for zone in load_snapshot().zones.values():
    print(zone.soa.to_text())
    for node in zone.nodes.values():
        for rrset in node.values():
            if rrset is not zone.soa:
                print(rrset.to_text())
"""

NSD_CONF = """server:
    ip-address: 127.0.0.1@{port}
    server-count: {processes}
    username: ""
    chroot: ""
    zonesdir: "{base}"
    database: ""
    zonelistfile: "{base}/zone.list"
    xfrdfile: "{base}/xfrd.state"
    xfrdir: "{base}"
    pidfile: "{base}/nsd.pid"
    logfile: "{base}/nsd.log"
    rrl-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: example.com
    zonefile: "{base}/example.com.zone"
"""

QUESTIONS = [
    ("www.example.com", "A"),
    ("example.com", "MX"),
    ("nx.example.com", "A"),
    ("alias.example.com", "A"),
    ("default-rsa._domainkey.example.com", "TXT"),
]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 60
    while True:
        try:
            dns.query.udp(dns.message.make_query("example.com", "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{what} did not start:\n" + (log.read_text() if log.exists() else ""))
        time.sleep(0.2)


def _answers(port: int) -> list[tuple]:
    import dns.message
    import dns.query
    import dns.rcode

    out = []
    for qname, qtype in QUESTIONS:
        query = dns.message.make_query(qname, qtype, use_edns=0)
        r = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
        answer = tuple(sorted(rrset.to_text() for rrset in r.answer))
        # A negative answer's authority (the SOA) is part of it; NSD also adds the apex NS to
        # positive answers, which Everlock leaves out (RFC 2181 section 6.1 leaves it optional).
        authority = tuple(sorted(rrset.to_text() for rrset in r.authority)) if not r.answer else ()
        out.append((qname, qtype, dns.rcode.to_text(r.rcode()), answer, authority))
    return out


def _cpu_ns(root: int) -> dict[int, int]:
    """CPU time (ns) used so far by process `root` (key `root`) and by each of its children
    with all their descendants (key: the child's pid), all threads counted."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))

    def tree(pid: int, *, descend: bool) -> int:
        total, todo = 0, [pid]
        while todo:
            pid = todo.pop()
            if descend:
                todo.extend(children.get(pid, []))
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except OSError:
                    continue
            descend = True
        return total

    usage = {root: tree(root, descend=False)}
    for child in children.get(root, []):
        usage[child] = tree(child, descend=True)
    return usage


def _dnsperf(port: int, datafile: Path, args, server: int) -> tuple[float, int, float, list[float]]:
    """One dnsperf run against 127.0.0.1:`port`, served by the process tree of `server`:
    (queries per second, queries lost, server CPU microseconds per answered query, the
    shares of that CPU time taken by the server's child processes, largest first)."""
    before = _cpu_ns(server)
    out = subprocess.run(
        [
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", str(args.seconds),
            "-c", str(args.clients), "-T", str(args.threads), "-q", str(args.outstanding), "-e",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = _cpu_ns(server)
    used = {pid: ns - before.get(pid, 0) for pid, ns in after.items()}
    cpu = sum(used.values())
    shares = sorted((ns / max(cpu, 1) for pid, ns in used.items() if pid != server), reverse=True)
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    return qps, lost, cpu / 1000 / max(completed, 1), shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and query set")
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="Everlock's processes")
    parser.add_argument(
        "--nsd-processes", type=int, default=1, help="NSD's server-count (default 1, NSD's own default)"
    )
    parser.add_argument("--port", type=int, default=37053, help="Everlock's port")
    parser.add_argument("--nsd-port", type=int, default=37054)
    parser.add_argument("--clients", type=int, default=16, help="dnsperf -c")
    parser.add_argument("--threads", type=int, default=1, help="dnsperf -T")
    parser.add_argument("--outstanding", type=int, default=300, help="dnsperf -q")
    args = parser.parse_args()
    for tool in ("dnsperf", "nsd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {tool}")

    base = Path(tempfile.mkdtemp(prefix="everlock-bench-dns-"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EVERLOCK_DATA_DIR=str(base), EVERLOCK_LOG="warning", EVERLOCK_DNS="on")
    manage = [PYTHON, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "shell", "-v0", "-c", SETUP], env=env, check=True, cwd=ROOT)
    zone = subprocess.run(
        [*manage, "shell", "-v0", "-c", EXPORT], env=env, check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    nsd_dir = base / "nsd"
    nsd_dir.mkdir()
    (nsd_dir / "example.com.zone").write_text(zone)
    conf = nsd_dir / "nsd.conf"
    conf.write_text(NSD_CONF.format(port=args.nsd_port, processes=args.nsd_processes, base=nsd_dir))

    repeated = base / "repeated.txt"
    repeated.write_text("".join(f"{q} {t}\n" for q, t in QUESTIONS) * 1000)
    # Enough unique names that no run comes back to the start of the file.
    unique = base / "unique.txt"
    rng = random.Random(1)
    with open(unique, "w") as f:
        for _ in range(args.seconds * 400_000):
            f.write(f"{rng.getrandbits(48):012x}.example.com A\n")

    everlock_log = base / "rundns.log"
    with open(everlock_log, "w") as log:
        everlock = subprocess.Popen(
            [*manage, "rundns", "--listen", f"127.0.0.1:{args.port}", "--processes", str(args.processes)],
            env=env, cwd=ROOT, stderr=log,
        )  # fmt: skip
    nsd = subprocess.Popen(["nsd", "-c", str(conf), "-d"], stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(args.port, everlock, everlock_log, "Everlock's DNS server")
        _wait_for_port(args.nsd_port, nsd, nsd_dir / "nsd.log", "NSD")
        for proc, what, port in ((everlock, "Everlock's DNS server", args.port), (nsd, "NSD", args.nsd_port)):
            # Another server holding the port would answer for one that could not bind it.
            if proc.poll() is not None:
                sys.exit(f"{what} stopped (is port {port} taken?)")
        ours, theirs = _answers(args.port), _answers(args.nsd_port)
        print("answers (rcode, answer section; authority of negative answers) compared with NSD's:")
        for mine, peer in zip(ours, theirs, strict=True):
            print(
                f"  {mine[0]} {mine[1]}: {mine[2]}, {'same as NSD' if mine == peer else 'DIFFERENT from NSD'}"
            )
            if mine != peer:
                print(f"    everlock: {mine[2:]}\n    nsd:      {peer[2:]}")
        results: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
        for name, datafile in (("repeated", repeated), ("unique", unique)):
            for n in range(args.rounds):
                for server, port, proc in (("everlock", args.port, everlock), ("nsd", args.nsd_port, nsd)):
                    qps, lost, cpu, shares = _dnsperf(port, datafile, args, proc.pid)
                    results.setdefault((name, server), []).append((qps, lost, cpu))
                    # How evenly SO_REUSEPORT spread the clients' ports over the processes.
                    split = "/".join(f"{share:.0%}" for share in shares) if len(shares) > 1 else "-"
                    print(
                        f"  {name} round {n + 1} {server:8} {qps:>10,.0f} queries/s, {lost} lost, "
                        f"{cpu:.2f} us CPU per query, CPU split over processes {split}",
                        flush=True,
                    )
    finally:
        everlock.terminate()
        nsd.terminate()
        everlock.wait(timeout=30)
        nsd.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)

    nsd_version = subprocess.run(["nsd", "-v"], capture_output=True, text=True).stderr.splitlines()[0]
    print(
        f"\nDNS over UDP on 127.0.0.1, example.com, Everlock {args.processes} process(es), NSD server-count "
        f"{args.nsd_processes}, {os.cpu_count()} cores, dnsperf -c {args.clients} -T {args.threads} "
        f"-q {args.outstanding} -e, {args.seconds} s runs, {args.rounds} rounds ({nsd_version})"
    )
    for name in ("repeated", "unique"):
        everlock_qps = statistics.median(r[0] for r in results[(name, "everlock")])
        nsd_qps = statistics.median(r[0] for r in results[(name, "nsd")])
        everlock_cpu = statistics.median(r[2] for r in results[(name, "everlock")])
        nsd_cpu = statistics.median(r[2] for r in results[(name, "nsd")])
        print(
            f"  {name:8}: Everlock {everlock_qps:>10,.0f} q/s, NSD {nsd_qps:>10,.0f} q/s (medians): "
            f"{everlock_qps / nsd_qps:.2f}x NSD; CPU per query {everlock_cpu:.2f} us against {nsd_cpu:.2f} us"
        )


if __name__ == "__main__":
    main()
