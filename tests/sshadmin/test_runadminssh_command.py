"""`manage.py runadminssh` as its own process: startup lines, the bootstrap admin, a login."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.log_lines import log_lines, without_time
from tests.sshadmin.openssh import ssh_exec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(EVERLOCK_DATA_DIR=str(data_dir), EVERLOCK_LOG="info", PYTHONUNBUFFERED="1")
    return env


def test_runadminssh_serves_the_console(tmp_path):
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    # migrate is the one setup step (it creates the cache table the login throttle uses too).
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=300
    )
    # The password from a file: it shows in no process list.
    secret = tmp_path / "admin-password"
    secret.write_text("root's long password\n")
    proc = subprocess.Popen(
        [
            sys.executable, "manage.py", "runadminssh", "--listen", "127.0.0.1:0",
            "--admin-user", "root", "--admin-password-file", str(secret),
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout), daemon=True
    )
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("SSH admin console listener on" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.05)
        bound = without_time(next(line for line in lines if "SSH admin console listener on" in line))
        match = re.fullmatch(r"\[INFO sshadmin\] SSH admin console listener on 127\.0\.0\.1:(\d+)", bound)
        assert match, bound
        port = int(match.group(1))
        assert "[INFO sshadmin] admin user root created" in log_lines("\n".join(lines))
        assert "[INFO sshadmin] frontend-ssh: binding admin console listener on 127.0.0.1:0" in log_lines(
            "\n".join(lines)
        )
        result = ssh_exec(port, "/users list", tmp=tmp_path, password="root's long password", user="root")
        assert (result.returncode, result.stdout) == (0, "USER  ADMIN      GRANTS\nroot  superuser  0\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(10)
    assert without_time(lines[-1]) == "[INFO sshadmin] stopped"


def test_runadminssh_refuses_a_bad_listen_address(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "runadminssh", "--listen", "localhost"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "CommandError: --listen: expected HOST:PORT, got 'localhost'"
    )


def run_command(tmp_path, *args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**_env(tmp_path), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "manage.py", "runadminssh", "--listen", "127.0.0.1:0", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "env_extra", "error"),
    [
        (
            ["--admin-user", "root", "--admin-password", "pw"],
            None,
            "CommandError: weak admin password: This password is too short. It must contain at least "
            "8 characters. (--allow-weak-admin-password takes it anyway)",
        ),
        (
            ["--admin-user", "root"],
            {"EVERLOCK_ADMIN_PASSWORD": "12345678"},
            "CommandError: weak admin password: This password is too common. This password is entirely "
            "numeric. (--allow-weak-admin-password takes it anyway)",
        ),
        (
            ["--admin-user", "root"],
            None,
            "CommandError: --admin-user needs a password: --admin-password-file, EVERLOCK_ADMIN_PASSWORD "
            "or --admin-password",
        ),
        (
            ["--admin-user", "root", "--admin-password-file", "/nonexistent/secret"],
            None,
            "CommandError: --admin-password-file /nonexistent/secret: [Errno 2] No such file or directory: "
            "'/nonexistent/secret'",
        ),
        (
            ["--admin-password", "a long password"],
            None,
            "CommandError: --admin-password and --admin-password-file need --admin-user",
        ),
        (
            ["--admin-user", "$(id)", "--admin-password", "a long password"],
            None,
            'CommandError: invalid user name \'$(id)\': use a name of ASCII letters, digits, ".", "_", '
            '"+" and "-", starting with a letter or digit, at most 64 characters, '
            "optionally followed by @domain",
        ),
    ],
)
def test_bad_admin_options_are_refused_before_anything_starts(tmp_path, args, env_extra, error):
    result = run_command(tmp_path, *args, env_extra=env_extra)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == error
