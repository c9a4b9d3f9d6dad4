"""Submission throughput (AUTH PLAIN on every connection, 2 KB, 20 clients, one connection per
message), Everlock (Ed25519 + RSA DKIM, durable delivery into the local mailbox) side by side
with a bare aiosmtpd server that accepts any login and discards, and with Postfix 3.7 as a
private instance (tests/postfix.py) with SASL (Cyrus sasldb) delivering into a Maildir: once
with the OpenDKIM milter signing (one RSA-2048 key), once without a milter. The servers' rounds
take turns; then the same again with STARTTLS on every connection. Each row also shows the
CPU time the server's processes spent per message (all of Postfix's, and OpenDKIM's), which
the other load on a shared machine moves far less than the rates.

    .venv/bin/python bench/smtp_submission.py      (BENCH_MESSAGES=1000, BENCH_ROUNDS=5 by default)

The Postfix rows need root and Debian's postfix, sasl2-bin and opendkim; without them only
the first two rows are measured.
"""

import contextlib
import os
import shutil
import socket
import subprocess
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
    measure_cpu,
    prepare,
    start,
)
from tests.ports import free_port
from tests.postfix import available, running_postfix

# The goals: Everlock against Postfix with the OpenDKIM milter, and against Postfix without DKIM.
GOAL_DKIM = 3.0
GOAL_PLAIN = 1.0


OPENDKIM_CONF = """\
Syslog no
Mode s
Domain example.com
Selector bench
KeyFile {dir}/bench.private
Socket inet:{port}@127.0.0.1
UserID opendkim
PidFile {dir}/opendkim.pid
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
# The key lives under the system's temporary directory, which other users may write to.
RequireSafeKeys false
"""


def _sasl_database(base: Path) -> None:
    """alice@example.com (change-me) in a Cyrus sasldb where Postfix's smtpd looks: Debian's
    build reads its SASL configuration from the system's /etc/postfix/sasl only (which has
    none, so the default /etc/sasldb2), and the smtpd runs chrooted in the queue directory."""
    etc = base / "spool" / "etc"
    etc.mkdir(mode=0o755)
    subprocess.run(
        ["saslpasswd2", "-f", str(etc / "sasldb2"), "-c", "-p", "-u", "example.com", "alice"],
        input=b"change-me",
        check=True,
    )
    shutil.chown(etc / "sasldb2", user="postfix")


def _postfix_settings(milter_port: int | None) -> dict[str, str]:
    settings = {
        # Submission as a mail client meets it: AUTH required (loopback is not trusted).
        "mynetworks": "192.0.2.1/32",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_local_domain": "example.com",
        "smtpd_tls_auth_only": "no",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        # No per-command debug log or TLS log lines while measuring.
        "debug_peer_list": "",
        "smtpd_tls_loglevel": "0",
        "default_process_limit": "100",
        # Everlock does no reverse lookup of the client either.
        "smtpd_peername_lookup": "no",
    }
    if milter_port is not None:
        settings |= {
            "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
        }
    return settings


@contextlib.contextmanager
def running_opendkim():
    """OpenDKIM signing for example.com with one RSA-2048 key, on a loopback port: yields
    (port, the process id)."""
    from mail.dkim.keys import generate_rsa_pem

    directory = Path(tempfile.mkdtemp(prefix="everlock-bench-opendkim-"))
    directory.chmod(0o755)
    key = directory / "bench.private"
    key.write_text(generate_rsa_pem())
    shutil.chown(key, user="opendkim")
    key.chmod(0o600)
    port = free_port()
    conf = directory / "opendkim.conf"
    conf.write_text(OPENDKIM_CONF.format(dir=directory, port=port))
    process = subprocess.Popen(["opendkim", "-x", str(conf), "-f"])
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None:
                raise RuntimeError("opendkim did not start")
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _postfix_tools() -> bool:
    return available() and all(shutil.which(tool) for tool in ("saslpasswd2", "opendkim"))


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    prepare(data_dir, dkim=True)
    from django.conf import settings

    from tls.store import self_signed_pair

    cert, key = self_signed_pair(directory=Path(settings.DATA_DIR) / "tls", hostname="localhost")
    auth = ("alice", "change-me")
    bare, bare_port = start(_bare_server, True, str(cert), str(key))
    ours, ports = start(_everlock_server, data_dir)
    names = ["bare aiosmtpd (discard)", "everlock (Ed25519 + RSA DKIM)"]
    servers = [bare_port, ports[1]]
    processes = [(bare.pid,), (ours.pid,)]
    with contextlib.ExitStack() as stack:
        postfixes = []
        if _postfix_tools():
            milter, milter_pid = stack.enter_context(running_opendkim())
            for milter_port in (milter, None):
                postfixes.append(
                    stack.enter_context(
                        running_postfix(
                            cert=cert,
                            key=key,
                            virtual_domain="example.com",
                            settings=_postfix_settings(milter_port),
                            prepare=_sasl_database,
                            chroot=True,
                        )
                    )
                )
            names += ["postfix + SASL + OpenDKIM (RSA)", "postfix + SASL (no DKIM)"]
            servers += [p.port for p in postfixes]
            processes += [(postfixes[0].master_pid, milter_pid), (postfixes[1].master_pid,)]
        else:
            print("postfix, saslpasswd2 or opendkim missing (or not root): no Postfix rows")
        results = {}
        for starttls in (False, True):
            results[starttls] = measure_cpu(
                servers, processes, sender="alice@example.com", rcpt="bob@example.com", auth=auth,
                starttls=starttls,
            )  # fmt: skip
        signed = [sum(b"DKIM-Signature:" in m for m in p.delivered()) for p in postfixes]
        delivered = [len(p.delivered()) for p in postfixes]
    bare.terminate()
    ours.terminate()
    from mail.models import Message

    print(f"submission (AUTH PLAIN): {MESSAGES} messages of 2 KB, {CLIENTS} clients, one connection each")
    print(f"best of {ROUNDS} rounds each, the servers taking turns, after a warm-up of {CLIENTS} messages")
    print("CPU: the server's processes (all of Postfix's, and OpenDKIM), the median round")
    for starttls, (rates, cpu) in results.items():
        print(f"\n{'with STARTTLS' if starttls else 'without TLS'}:")
        best = [max(r) for r in rates]
        for name, rate, rounds, spent in zip(names, best, rates, cpu, strict=True):
            print(f"  {name:34s} {rate:8.1f} msgs/s  {_cpu_summary(spent)}  (rounds: {_rounds(rounds)})")
        if len(best) == 4:
            print(f"  everlock / postfix + OpenDKIM:     {best[1] / best[2]:8.2f}x (goal {GOAL_DKIM:.1f}x)")
            print(f"  everlock / postfix without DKIM:   {best[1] / best[3]:8.2f}x (goal {GOAL_PLAIN:.1f}x)")
    print(f"\nmessages filed by everlock: {Message.objects.count()}")
    for name, count, dkim in zip(names[2:], delivered, signed, strict=True):
        print(f"{name}: {count} delivered into the Maildir, {dkim} with a DKIM-Signature")


if __name__ == "__main__":
    os.environ.setdefault("EVERLOCK_LOG", "warning")
    # All the load comes from one address: a client's next connection may open before the
    # server has seen its last one close, so the per-client limit (20) must not bite.
    os.environ.setdefault("EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT", "100")
    main()
