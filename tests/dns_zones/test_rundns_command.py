"""`manage.py rundns` and `manage.py serve --frontend-dns-listen` as real processes, queried by dig."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.log_lines import log_lines
from tests.ports import free_port

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
        # Port 0 is one port picked for every listener process.
        assert f"backend-dns-dns: binding DNS listener on 127.0.0.1:{port}" in log
        assert _dig(port, "www.example.com", "A", "+short") == "192.0.2.1\n"
        assert "status: REFUSED" in _dig(port, "example.org", "A")
    finally:
        code = _stop(proc)
    assert code == 0


def test_rundns_in_two_processes_sharing_the_port(env, tmp_path):
    port = free_port(udp=True)
    proc, bound, _ = _start(env, tmp_path, "rundns", "--listen", f"127.0.0.1:{port}", "--processes", "2")
    try:
        assert bound == port
        log_path = tmp_path / "server.log"
        _wait_for_line(log_path, "[INFO everlock] serving: listener-1 (pid ")
        assert "listener-2 (pid " in log_path.read_text()
        # The second copy starts quietly: its lines would repeat the first one's.
        assert log_path.read_text().count(f"DNS listener on 127.0.0.1:{port} (udp, tcp)") == 1
        assert _dig(port, "www.example.com", "A", "+short") == "192.0.2.1\n"
        # A change made by another process reaches both listener processes: every query, from
        # a new source port each (the kernel spreads them over the processes), sees it.
        manage = [sys.executable, str(ROOT / "manage.py")]
        add = (
            "from dns_zones.services import record_add; "
            "record_add(origin='example.com', name='new', rtype='A', data='192.0.2.9')"
        )
        subprocess.run([*manage, "shell", "-v0", "-c", add], env=env, cwd=ROOT, check=True, timeout=120)
        time.sleep(1)
        for _ in range(20):
            assert _dig(port, "new.example.com", "A", "+short") == "192.0.2.9\n"
            assert _dig(port, "new.example.com", "A", "+short", "+tcp") == "192.0.2.9\n"
    finally:
        code = _stop(proc)
    assert code == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()
    # Both children are gone with the parent: the port is free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_rundns_processes_share_one_port_picked_for_port_0(env, tmp_path):
    proc, port, log = _start(env, tmp_path, "rundns", "--listen", "127.0.0.1:0", "--processes", "2")
    try:
        assert port != 0
        assert f"backend-dns-dns: binding DNS listener on 127.0.0.1:{port}" in log
        _wait_for_line(tmp_path / "server.log", "serving: listener-1 (pid ")
        for _ in range(10):
            assert _dig(port, "www.example.com", "A", "+short") == "192.0.2.1\n"
    finally:
        code = _stop(proc)
    assert code == 0


def test_rundns_processes_report_a_port_in_use(env, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "rundns", "--listen", f"127.0.0.1:{port}",
             "--processes", "2"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port} is in use: choose another with --listen" in result.stderr


def test_a_listener_process_that_dies_is_started_again(env, tmp_path):
    port = free_port(udp=True)
    proc, _, _ = _start(env, tmp_path, "rundns", "--listen", f"127.0.0.1:{port}", "--processes", "2")
    log_path = tmp_path / "server.log"
    try:
        _wait_for_line(log_path, "serving: listener-1 (pid ")
        children = [
            int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        _wait_for_line(log_path, f"(pid {children[0]}) was killed by SIGKILL after ")
        deadline = time.monotonic() + 30
        while "serving again" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        for _ in range(10):
            assert _dig(port, "www.example.com", "A", "+short") == "192.0.2.1\n"
    finally:
        code = _stop(proc)
    assert code == 0


def _wait_for_line(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.1)
