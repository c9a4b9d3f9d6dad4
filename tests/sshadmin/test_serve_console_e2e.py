"""`manage.py serve --frontend-ssh --backend-admin-ssh` as its own process, logged into with ssh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.log_lines import log_lines, without_time
from tests.ports import free_port
from tests.sshadmin.openssh import ssh_exec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


class ServeProcess:
    def __init__(self, data_dir: Path, port: int):
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
        # Its own data dir and its own SQLite database, whatever the test run uses.
        env.update(EVERLOCK_DATA_DIR=str(data_dir), EVERLOCK_LOG="info", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable, "manage.py", "serve",
                "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{port}",
                "--backend-admin-ssh", "--admin-user", "admin", "--admin-password", "change-me",
            ],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log: {self.lines}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(30)
        self.reader.join(10)
        return status


def test_serve_starts_the_console_and_keeps_its_host_key(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    server = ServeProcess(data_dir, port)
    try:
        server.wait_for("SSH admin console listener on")
        expected = [
            "[INFO everlock] admin user admin created",
            "[INFO everlock] starting backend-admin-ssh",
            "[INFO everlock] starting frontend-ssh",
            f"[INFO sshadmin] frontend-ssh: binding admin console listener on 127.0.0.1:{port}",
            f"[INFO sshadmin] SSH admin console listener on 127.0.0.1:{port}",
        ]
        assert [line for line in log_lines("\n".join(server.lines)) if line in expected] == expected
        result = ssh_exec(port, "/users list", tmp=tmp_path, password="change-me")
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            "USER   ADMIN      GRANTS\nadmin  superuser  0\n",
            "",
        )
        wrong = ssh_exec(port, "/users list", tmp=tmp_path, password="wrong")
        assert wrong.returncode == 255
    finally:
        assert server.stop() == 0
    assert without_time(server.lines[-1]) == "[INFO everlock] stopped"
    assert any(
        "[WARNING accounts.authentication] ssh: authentication failed for 'admin' from 127.0.0.1" in line
        for line in server.lines
    )
    key = (data_dir / "ssh_host_ed25519_key").read_bytes()

    # A second start: the admin exists already, the host key is the same file.
    again = ServeProcess(data_dir, port)
    try:
        again.wait_for("SSH admin console listener on")
        assert "[INFO everlock] admin user admin created" not in log_lines("\n".join(again.lines))
        assert ssh_exec(port, "/users list", tmp=tmp_path, password="change-me").returncode == 0
    finally:
        assert again.stop() == 0
    assert (data_dir / "ssh_host_ed25519_key").read_bytes() == key
