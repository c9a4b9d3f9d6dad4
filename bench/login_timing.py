"""Login timing: does a wrong password take as long for an unknown login as for a known one?

Run: .venv/bin/python bench/login_timing.py [ROUNDS]

Starts `everlock serve` (SMTP submission, IMAP, the SSH console, the admin web UI) on loopback with
a throwaway data dir (SQLite) and the production password hasher, then makes ROUNDS failed
logins of each kind on each listener, taking turns: a known login with a wrong password, and
an unknown login. Prints the median time of each kind and their ratio (the goal: within 20 %).
The throttle's window is set to one second, so that no login is slowed or refused by the
failures of the measurement itself; the time is the listener's answer to the credentials
(SMTP: AUTH PLAIN to 535 on an open STARTTLS session; IMAP: LOGIN to NO on an implicit TLS
session; SSH: a whole connection with password authentication; web: the POST of the login
form).
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import imaplib
import os
import re
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "bench admin password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"everlock serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port}")


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the data dir's self-signed certificate
    return context


def smtp_failure(port: int, login: str) -> float:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=unverified())
        client.ehlo("bench.example.com")
        credentials = base64.b64encode(f"\0{login}\0wrong password".encode()).decode()
        start = time.perf_counter()
        code, _ = client.docmd("AUTH", f"PLAIN {credentials}")
        elapsed = time.perf_counter() - start
    assert code == 535, code
    return elapsed


def imap_failure(port: int, login: str) -> float:
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=unverified(), timeout=30) as client:
        start = time.perf_counter()
        try:
            client.login(login, "wrong password")
        except imaplib.IMAP4.error:
            return time.perf_counter() - start
    raise AssertionError("logged in with a wrong password")


def ssh_failure(port: int, login: str) -> float:
    async def attempt() -> float:
        start = time.perf_counter()
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                username=login,
                password="wrong password",
                known_hosts=None,
                client_keys=None,
                preferred_auth="password",
            ):
                raise AssertionError("logged in with a wrong password")
        except asyncssh.PermissionDenied:
            return time.perf_counter() - start

    return asyncio.run(attempt())


def web_failure(port: int, login: str) -> float:
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/login/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": login, "password": "wrong password", "next": "/"}
    ).encode()
    request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": f"{base}/login/"})
    start = time.perf_counter()
    with opener.open(request, timeout=30) as response:
        body = response.read().decode()
    elapsed = time.perf_counter() - start
    assert "Please enter the correct username and password" in body
    return elapsed


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-")
    ports = {name: free_port() for name in ("ssh", "smtp", "submission", "imap", "imaps", "http")}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        EVERLOCK_DATA_DIR=data_dir,
        EVERLOCK_LOG="error",
        EVERLOCK_ADMIN_PASSWORD=ADMIN_PASSWORD,
        EVERLOCK_AUTH_FAILURE_WINDOW="1",
        EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS="100000",
        EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN="100000",
    )
    log = open(Path(data_dir) / "serve.log", "w")  # noqa: SIM115 (open while serve runs)
    serve = subprocess.Popen(
        [
            sys.executable, "manage.py", "serve",
            "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}", "--backend-admin-ssh",
            "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
            "--frontend-smtp-submission",
            "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
            "--backend-mail-smtp",
            "--frontend-imap-listen", f"127.0.0.1:{ports['imap']}",
            "--frontend-imaps-listen", f"127.0.0.1:{ports['imaps']}",
            "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{ports['http']}",
            "--admin-user", "admin",
        ],
        cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        for name in ports:
            wait_for_port(ports[name], serve)
        listeners = (
            ("SMTP AUTH", lambda login: smtp_failure(ports["submission"], login)),
            ("IMAP LOGIN", lambda login: imap_failure(ports["imaps"], login)),
            ("SSH console", lambda login: ssh_failure(ports["ssh"], login)),
            ("admin web", lambda login: web_failure(ports["http"], login)),
        )
        times: dict[tuple[str, str], list[float]] = {}
        for _name, fail in listeners:  # warm-up: connections, caches, the first hasher run
            fail("admin")
            fail("nobody")
        for n in range(rounds):
            for name, fail in listeners:
                times.setdefault((name, "known"), []).append(fail("admin"))
                times.setdefault((name, "unknown"), []).append(fail(f"nobody{n}"))
        print(f"failed logins, median of {rounds} each (production hasher, everlock serve on loopback)")
        print(f"{'listener':<12} {'known login':>12} {'unknown login':>14} {'unknown/known':>14}")
        for name, _ in listeners:
            known = statistics.median(times[(name, "known")])
            unknown = statistics.median(times[(name, "unknown")])
            print(f"{name:<12} {known * 1000:>9.1f} ms {unknown * 1000:>11.1f} ms {unknown / known:>13.0%}")
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
        log.close()


if __name__ == "__main__":
    main()
