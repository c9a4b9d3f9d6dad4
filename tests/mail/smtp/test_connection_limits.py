"""Connection limits: per listener in total, per client address, slots freed when a
connection ends (TLS or not), and the open file limit of a listening process."""

import logging
import os
import re
import resource
import smtplib
import socket
import subprocess
import sys
import textwrap
import time

from tests.log_lines import without_time
from tests.mail.management.test_runsmtp_command import ROOT
from tests.mail.smtp.conftest import tls_context
from tests.mail.smtp.test_inbound_replies import read_all
from tests.ports import free_port
from tests.processes import terminate

BUSY = b"421 4.7.0 Too many connections, try again later\r\n"


def greeted(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    assert sock.recv(100).endswith(b" ESMTP Everlock\r\n")
    return sock


def leave(sock: socket.socket) -> None:
    """QUIT and wait for the server to close: its slot is free by then."""
    sock.sendall(b"QUIT\r\n")
    assert read_all(sock, 5) == b"221 2.0.0 Bye\r\n"
    sock.close()


def test_total_limit_per_listener(start_smtp, example_com):
    smtp = start_smtp(max_connections=3, max_connections_per_client=20, evict_silent_after=60)
    # From three addresses, so that only the listener's total is in play.
    held = [greeted(smtp.inbound_port, f"127.0.0.{n}") for n in (2, 3, 4)]
    try:
        with socket.create_connection(
            ("127.0.0.1", smtp.inbound_port), source_address=("127.0.0.5", 0)
        ) as over:
            assert read_all(over, 5) == BUSY
        # The other listener has places of its own.
        with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=5) as client:
            assert client.noop() == (250, b"2.0.0 OK")
        leave(held.pop())
        with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=5) as client:
            assert client.ehlo("mx.example.net")[0] == 250
            assert client.mail("carol@example.net") == (250, b"2.1.0 Sender OK")
            assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
    finally:
        for sock in held:
            sock.close()


def test_full_listener_closes_the_longest_silent_connection(start_smtp, example_com):
    smtp = start_smtp(max_connections=2, evict_silent_after=0.5)
    silent = greeted(smtp.inbound_port)
    talking = greeted(smtp.inbound_port)
    try:
        time.sleep(0.6)
        talking.sendall(b"NOOP\r\n")
        assert talking.recv(100) == b"250 2.0.0 OK\r\n"
        # The listener is full: the new client takes the place of the one silent for 0.6 s.
        with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=5) as client:
            assert client.ehlo("mx.example.net")[0] == 250
            assert read_all(silent, 5) == b"421 4.4.2 Idle timeout, closing\r\n"
            # The talking one was heard 0 s ago: another newcomer is refused.
            with socket.create_connection(("127.0.0.1", smtp.inbound_port)) as over:
                assert read_all(over, 5) == BUSY
        talking.sendall(b"NOOP\r\n")
        assert talking.recv(100) == b"250 2.0.0 OK\r\n"
    finally:
        silent.close()
        talking.close()


def test_tls_sessions_free_their_slot_when_they_end(start_smtp, example_com):
    """Clients that QUIT over TLS and leave the socket open (no close_notify of theirs) hold
    no slot: the server ends its side without waiting for them."""
    smtp = start_smtp(max_connections_per_client=3)
    ended = []
    try:
        for _ in range(6):
            client = smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=5)
            client.starttls(context=tls_context())
            assert client.docmd("QUIT") == (221, b"2.0.0 Bye")
            ended.append(client)  # the socket stays open
        with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=5) as client:
            assert client.ehlo("mx.example.net")[0] == 250
    finally:
        for client in ended:
            client.close()


def test_failed_tls_handshake_is_one_info_line(start_smtp, example_com, caplog):
    smtp = start_smtp()
    caplog.set_level(logging.INFO, logger="mail.smtp")
    with greeted(smtp.inbound_port) as sock:
        sock.sendall(b"EHLO mx.example.net\r\nSTARTTLS\r\n")
        received = b""
        while b"220 2.0.0" not in received and b"220 Ready" not in received:
            received += sock.recv(4096)
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # not a ClientHello
        read_all(sock, 5)
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=5) as client:
        assert client.noop() == (250, b"2.0.0 OK")
    records = [r for r in caplog.records if r.name == "mail.smtp" and "TLS handshake" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in records] == [("INFO", None)]
    assert records[0].getMessage().startswith("SMTP: TLS handshake with 127.0.0.1 failed: SSLError(")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _lower_open_files(soft: int, hard: int):
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return lower


def _runsmtp(tmp_path, port: int, *, soft: int, hard: int, max_connections: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "EVERLOCK_DATA_DIR": str(tmp_path),
        "EVERLOCK_LOG": "warning,mail.smtp=info",
        "EVERLOCK_SMTP_MAX_CONNECTIONS": str(max_connections),
        "EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT": "1000",
    }
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "runsmtp", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_lower_open_files(soft, hard),
    )


def _open_files_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open file limit in /proc")


def test_listener_raises_open_file_limit(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    port = free_port()
    process = _runsmtp(tmp_path, port, soft=min(hard, 512), hard=hard, max_connections=100)
    try:
        assert process.stderr.readline().strip().endswith(f"binding inbound listener on 127.0.0.1:{port}")
        assert (
            without_time(process.stderr.readline())
            == f"[INFO mail.smtp] SMTP inbound listener on 127.0.0.1:{port}"
        )
        assert _open_files_limit(process.pid) == (hard, hard)
    finally:
        terminate(process)


def test_limit_fits_the_open_file_limit(tmp_path):
    """With room for 300 files, a configured 5,000 connections become 44 (300 less 256
    reserved): the 45th client gets 421 instead of the process running out of descriptors,
    and a client is served again once one leaves."""
    port = free_port()
    process = _runsmtp(tmp_path, port, soft=300, hard=300, max_connections=5000)
    held = []
    try:
        assert without_time(process.stderr.readline()) == (
            "[WARNING mail.smtp] SMTP: at most 44 connections per listener "
            "(EVERLOCK_SMTP_MAX_CONNECTIONS is 5000, the open file limit 300)"
        )
        assert process.stderr.readline().strip().endswith(f"binding inbound listener on 127.0.0.1:{port}")
        assert (
            without_time(process.stderr.readline())
            == f"[INFO mail.smtp] SMTP inbound listener on 127.0.0.1:{port}"
        )
        held = [greeted(port) for _ in range(44)]
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port)) as over:
                assert read_all(over, 5) == BUSY
        leave(held.pop())
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            assert client.noop() == (250, b"2.0.0 OK")
    finally:
        for sock in held:
            sock.close()
        terminate(process)
    # Twenty refusals in well under a second: one log line for them.
    refusals = [line for line in process.stderr.read().splitlines() if "connection(s) refused" in line]
    assert 1 <= len(refusals) <= 2


ACCEPT_FLOOD = textwrap.dedent(
    """
    import asyncio, resource, socket, sys
    from everlock_site.listen import AcceptErrorLog
    import logging
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")

    async def main():
        loop = asyncio.get_running_loop()
        AcceptErrorLog.install(loop)
        held = []
        servers = [await loop.create_server(asyncio.Protocol, "127.0.0.1", 0) for _ in range(2)]
        # Leave no descriptor free: every accept() fails with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        try:
            while True:
                held.append(socket.socket())
        except OSError:
            pass
        print(*(s.sockets[0].getsockname()[1] for s in servers), flush=True)
        await asyncio.sleep(3.5)

    asyncio.run(main())
    """
)


def test_accept_failures_logged_once_a_second():
    clients = []
    process = subprocess.Popen(
        [sys.executable, "-c", ACCEPT_FLOOD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ports = [int(p) for p in process.stdout.readline().split()]
        clients = [socket.create_connection(("127.0.0.1", port)) for port in ports for _ in range(10)]
        process.wait(20)
    finally:
        for sock in clients:
            sock.close()
        if process.poll() is None:
            terminate(process)
    lines = process.stderr.read().splitlines()
    # asyncio retries accept() on each listening socket every second: about eight failures
    # in 3.5 s, logged once a second at most with the count since the last line.
    assert 1 <= len(lines) <= 5
    counts = []
    for line in lines:
        found = re.fullmatch(
            r"ERROR accept\(\) failed (\d+) time\(s\) since the last report: \[Errno 24\].*", line
        )
        assert found, line
        counts.append(int(found[1]))
    assert max(counts) >= 2
