"""Driving the OpenSSH client (/usr/bin/ssh) in tests: password by SSH_ASKPASS, or a key."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-o", "NumberOfPasswordPrompts=1",
]  # fmt: skip


def askpass_env(tmp: Path, password: str) -> dict[str, str]:
    """An environment in which ssh reads `password` from a small askpass script."""
    script = tmp / f"askpass-{abs(hash(password))}.sh"
    (tmp / "password").write_text(password)
    script.write_text(f"#!/bin/sh\ncat {tmp / 'password'}\n")
    script.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    return env


def password_args(port: int, user: str) -> list[str]:
    return ["ssh", "-p", str(port), *SSH_OPTIONS, "-o", "PubkeyAuthentication=no", f"{user}@127.0.0.1"]


def key_args(port: int, user: str, key: Path) -> list[str]:
    return [
        "ssh", "-p", str(port), *SSH_OPTIONS,
        "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
        f"{user}@127.0.0.1",
    ]  # fmt: skip


def ssh_exec(port: int, command: str, *, tmp: Path, password: str, user: str = "admin"):
    """Run one console command with ssh in exec mode; return the CompletedProcess."""
    return subprocess.run(
        [*password_args(port, user), command],
        env=askpass_env(tmp, password),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


class PtySession:
    """ssh attached to a pseudo-terminal, as a person at a terminal uses it."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [*args[:1], "-tt", *args[1:]],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.buffer = b""

    def read_until(self, marker: str, timeout: float = 30) -> str:
        """Everything up to and including the next `marker`."""
        deadline = time.monotonic() + timeout
        wanted = marker.encode()
        while wanted not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} in {self.buffer!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"ssh ended before {marker!r}: {self.buffer!r}")
                self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(wanted)
        return (head + wanted).decode()

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 30) -> int:
        status = self.proc.wait(timeout)
        os.close(self.master)
        return status
