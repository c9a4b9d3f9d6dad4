"""The /dns commands through the real SSH console of `everlock serve`, answered by its DNS server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _dig(port: int, *args: str) -> str:
    return subprocess.run(
        ["dig", "-p", str(port), "@127.0.0.1", "+time=3", "+tries=1", *args],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


async def _console(port: int, lines: list[str]) -> list[tuple[int, str, str]]:
    async with asyncssh.connect(
        "127.0.0.1", port, username="admin", password="console-pw", known_hosts=None, client_keys=None
    ) as conn:
        results = []
        for line in lines:
            r = await conn.run(line, check=False)
            results.append((r.exit_status, r.stdout, r.stderr))
        return results


def _dig_until(port: int, expected: str, *args: str, timeout: float = 2.0) -> str:
    """dig until its output contains `expected` (or `timeout` seconds passed); the last output."""
    deadline = time.monotonic() + timeout
    while True:
        out = _dig(port, *args)
        if expected in out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_console_changes_are_served_by_the_running_dns_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EVERLOCK_DATA_DIR=str(tmp_path), EVERLOCK_LOG="info")
    log_path = tmp_path / "serve.log"
    args = [
        sys.executable, str(ROOT / "manage.py"), "serve",
        "--frontend-ssh", "--backend-admin-ssh", "--frontend-ssh-listen", "127.0.0.1:0",
        "--frontend-dns-listen", "127.0.0.1:0", "--admin-user", "admin", "--admin-password", "console-pw",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            text = log_path.read_text()
            dns_port = re.search(r"DNS listener on 127\.0\.0\.1:(\d+) \(udp, tcp\)", text)
            ssh_port = re.search(r"SSH admin console listener on 127\.0\.0\.1:(\d+)", text)
            if dns_port and ssh_port:
                break
            assert proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.1)
        dns_port, ssh_port = int(dns_port.group(1)), int(ssh_port.group(1))
        assert "status: REFUSED" in _dig(dns_port, "www.example.com", "A")
        results = asyncio.run(_console(ssh_port, ["/dns zones create example.com"]))
        # The DNS servers run in the listener processes, the console in a process of its
        # own: they serve its change within their poll interval (dns_zones.server.listener).
        assert "status: NXDOMAIN" in _dig_until(dns_port, "status: NXDOMAIN", "www.example.com", "A")
        results += asyncio.run(
            _console(
                ssh_port,
                [
                    "/dns records add example.com www A 192.0.2.1",
                    "/dns records add example.com www A 192.0.2",
                ],
            )
        )
        assert results[0] == (
            0,
            "zone example.com created: SOA ns1.example.com. hostmaster.example.com. serial 1, "
            "NS ns1.example.com.\n",
            "",
        )
        status, out, err = results[1]
        assert status == 0 and re.fullmatch(
            r"record \d+ added: www\.example\.com\. 3600 IN A 192\.0\.2\.1\n", out
        )
        status, out, err = results[2]
        assert status == 1 and out == ""
        assert err.startswith("error: invalid A data '192.0.2'")
        assert err.endswith("usage: /dns records add ZONE NAME TYPE [TTL] DATA...\n")
        assert _dig_until(dns_port, "192.0.2.1\n", "www.example.com", "A", "+short") == "192.0.2.1\n"
        out = _dig(dns_port, "www.example.com", "A", "+norec")
        assert "status: NOERROR" in out and "flags: qr aa;" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
