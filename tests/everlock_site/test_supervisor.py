"""`everlock serve` as a supervisor: listener processes sharing each port, a dead child
started again and logged, SIGTERM drains every child."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from everlock_site.listen import ListenAddress
from everlock_site.supervisor import (
    LISTENER,
    ChildSpec,
    Component,
    child_specs,
    claim_ports,
)
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
EVERLOCK = Path(sys.executable).parent / "everlock"


def _env(tmp_path) -> dict:
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), "EVERLOCK_LOG": "info", "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "RUST_LOG"):
        env.pop(name, None)
    return env


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listening_pids(port: int) -> set[int]:
    """The processes holding a socket listening on 127.0.0.1:`port` (read from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            pids.add(int(entry.name))
    return pids


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.fixture
def serve(tmp_path):
    """`everlock serve --processes 2` with inbound SMTP and the delivery worker; yields
    (process, smtp port, log path)."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(EVERLOCK), "serve", "--processes", "2", "--backend-mail-smtp", "--frontend-smtp",
             "--frontend-smtp-listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait(lambda: "[INFO everlock] serving: " in log_path.read_text(), 120, "serve to start")
        yield process, port, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_listener_processes_share_the_port_and_a_dead_one_is_started_again(serve):
    process, port, log_path = serve
    serving = re.search(r"serving: (.*)", log_path.read_text())[1]
    pids = dict(re.findall(r"(\S+) \(pid (\d+)\)", serving))
    assert sorted(pids) == ["delivery", "listener-1", "listener-2"]
    listeners = {int(pids["listener-1"]), int(pids["listener-2"])}
    # Both listener processes listen on the one port; the parent binds nothing.
    assert _listening_pids(port) >= listeners
    assert process.pid not in _listening_pids(port)
    assert _children(process.pid) == {int(p) for p in pids.values()}

    os.kill(int(pids["listener-1"]), signal.SIGKILL)
    line = _wait(
        lambda: re.search(r"\[ERROR everlock\] listener-1 \(pid \d+\) was killed by SIGKILL after \d+ s; "
                          r"starting it again in 1 s", log_path.read_text()),
        30, "the death to be logged",
    )  # fmt: skip
    assert line[0].endswith("in 1 s")
    again = _wait(
        lambda: re.search(r"listener-1 \(pid (\d+)\) serving again", log_path.read_text()), 60, "restart"
    )
    new_pid = int(again[1])
    assert new_pid not in listeners
    assert new_pid in _listening_pids(port)
    # The listener still answers while, and after, one of its processes was replaced.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.ehlo()[0] == 250


def test_sigterm_drains_every_child(serve):
    process, _port, log_path = serve
    children = _children(process.pid)
    assert len(children) == 3
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    text = log_path.read_text()
    assert "backend-mail-smtp: delivery worker stopped" in text
    assert text.rstrip().endswith("[INFO everlock] stopped")
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_busy_port_stops_the_start_before_any_child(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [str(EVERLOCK), "serve", "--processes", "2", "--backend-mail-smtp", "--frontend-smtp",
             "--frontend-smtp-listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"CommandError: port {port} is in use: choose another with --frontend-smtp-listen"
    )
    assert "serving:" not in result.stderr


def test_port_zero_is_one_port_for_every_copy():
    listens = claim_ports(
        {"smtp": ListenAddress("127.0.0.1", 0, "--frontend-smtp-listen"), "ssh": None}, shared={"smtp"}
    )
    assert listens["ssh"] is None
    assert listens["smtp"].port != 0 and listens["smtp"].reuse_port
    assert listens["smtp"].option == "--frontend-smtp-listen"
    alone = claim_ports({"ssh": ListenAddress("127.0.0.1", 0)}, shared=set())
    assert not alone["ssh"].reuse_port


def test_listener_components_run_in_copies_the_others_once():
    def start():
        pass

    specs = child_specs(
        [
            (Component("backend-dns-dns", "x:y"), start),
            (Component("backend-admin-ssh", "x:y", process="console"), start),
            (Component("frontend-ssh", "x:y", process="console"), start),
            (Component("frontend-smtp", "x:y"), start),
        ],
        processes=3,
    )
    # The listener processes start last: their clients find the console and workers up.
    assert specs == [
        ChildSpec("console", (("backend-admin-ssh", start), ("frontend-ssh", start)), copies=1),
        ChildSpec(LISTENER, (("backend-dns-dns", start), ("frontend-smtp", start)), copies=3),
    ]
    assert [specs[1].title(i) for i in range(3)] == ["listener-1", "listener-2", "listener-3"]
    assert specs[0].title(0) == "console"
