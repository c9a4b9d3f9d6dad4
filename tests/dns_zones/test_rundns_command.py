"""`manage.py rundns` and `manage.py serve --frontend-dns-listen` as real processes, queried by dig."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.log_lines import log_lines

ROOT = Path(__file__).resolve().parents[2]
SETUP = (
    "from dns_zones.services import record_add, zone_create; "
    "zone_create(origin='example.com'); "
    "record_add(origin='example.com', name='www', rtype='A', data='192.0.2.1')"
)


@pytest.fixture
def env(tmp_path):
    """A data dir of its own with a migrated SQLite database holding example.com."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EVERLOCK_DATA_DIR=str(tmp_path), EVERLOCK_LOG="info")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run([*manage, "shell", "-v0", "-c", SETUP], env=env, cwd=ROOT, check=True, timeout=120)
    return env


def _start(env, tmp_path, *args) -> tuple[subprocess.Popen, int, str]:
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, stderr=log
        )
    deadline = time.monotonic() + 60
    while True:
        text = log_path.read_text()
        match = re.search(r"DNS listener on 127\.0\.0\.1:(\d+) \(udp, tcp\)", text)
        if match:
            return proc, int(match.group(1)), text
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{text}")
        time.sleep(0.1)


def _dig(port: int, *args: str) -> str:
    return subprocess.run(
        ["dig", "-p", str(port), "@127.0.0.1", "+time=3", "+tries=1", *args],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_rundns_serves_the_zone_and_stops_cleanly(env, tmp_path):
    proc, port, log = _start(env, tmp_path, "rundns", "--listen", "127.0.0.1:0")
    try:
        lines = [line for line in log_lines(log) if "dns_zones" in line]
        assert lines[:2] == [
            "[INFO dns_zones] backend-dns-dns: binding DNS listener on 127.0.0.1:0",
            f"[INFO dns_zones] DNS listener on 127.0.0.1:{port} (udp, tcp)",
        ]
        out = _dig(port, "www.example.com", "A", "+norec")
        assert "status: NOERROR" in out and "flags: qr aa;" in out
        assert re.search(r"^www\.example\.com\.\s+3600\s+IN\s+A\s+192\.0\.2\.1$", out, re.M)
        out = _dig(port, "www.example.com", "A", "+tcp", "+short")
        assert out == "192.0.2.1\n"
    finally:
        code = _stop(proc)
    assert code == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_serve_with_the_dns_backend(env, tmp_path):
    proc, port, log = _start(env, tmp_path, "serve", "--frontend-dns-listen", "127.0.0.1:0")
    try:
        assert "backend-dns-dns: binding DNS listener on 127.0.0.1:0" in log
        assert _dig(port, "www.example.com", "A", "+short") == "192.0.2.1\n"
        assert "status: REFUSED" in _dig(port, "example.org", "A")
    finally:
        code = _stop(proc)
    assert code == 0
