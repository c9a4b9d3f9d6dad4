"""The admin web UI's listener: `manage.py runhttp` and `everlock serve --frontend-http` serve
the Django admin and its static files under waitress, and log their startup lines."""

import contextlib
import http.client
import os
import subprocess
import sys
from pathlib import Path

from tests.log_lines import without_time
from tests.ports import free_port
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[2]


def get(port: int, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def base_env(tmp_path, **extra) -> dict:
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), **extra}
    env.pop("DATABASE_URL", None)
    return env


@contextlib.contextmanager
def running(args, env):
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        terminate(process)
        process.stderr.close()


def test_runhttp_logs_and_serves_the_admin(tmp_path):
    env = base_env(tmp_path, EVERLOCK_LOG="warning,everlock_site.http=info")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    with running(["runhttp", "--listen", f"127.0.0.1:{port}"], env) as process:
        lines = [without_time(process.stderr.readline()) for _ in range(2)]
        assert lines == [
            f"[INFO everlock_site.http] frontend-http: binding HTTP admin listener on 127.0.0.1:{port}",
            f"[INFO everlock_site.http] HTTP admin listener on 127.0.0.1:{port}",
        ]
        index = get(port, "/")
        assert (index.status, index.getheader("Location")) == (302, "/login/?next=/")
        login = get(port, "/login/")
        assert login.status == 200
        assert b"<title>Log in | Everlock</title>" in login.body
        assert "Secure" not in login.getheader("Set-Cookie")
        css = get(port, "/static/admin/css/base.css")
        assert (css.status, css.getheader("Content-Type")) == (200, 'text/css; charset="utf-8"')
        # Host names outside EVERLOCK_ALLOWED_HOSTS are refused (DNS rebinding).
        assert get(port, "/login/", {"Host": "attacker.test"}).status == 400
    assert process.returncode == 0


def test_admin_https_marks_cookies_secure_behind_a_proxy(tmp_path):
    env = base_env(
        tmp_path,
        EVERLOCK_LOG="warning,everlock_site.http=info",
        EVERLOCK_ADMIN_HTTPS="on",
        EVERLOCK_ALLOWED_HOSTS="admin.example.com",
        EVERLOCK_CSRF_TRUSTED_ORIGINS="https://admin.example.com",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    with running(["runhttp", "--listen", f"127.0.0.1:{port}"], env) as process:
        for _ in range(2):
            assert "HTTP admin listener on" in process.stderr.readline()
        proxied = {"Host": "admin.example.com", "X-Forwarded-Proto": "https"}
        login = get(port, "/login/", proxied)
        assert login.status == 200
        cookie = login.getheader("Set-Cookie")
        assert cookie.startswith("csrftoken=")
        assert "Secure" in cookie
        assert b'action="/login/"' in login.body


def test_serve_starts_the_http_frontend(tmp_path):
    env = base_env(tmp_path, EVERLOCK_LOG="warning,everlock=info,everlock_site.http=info")
    port = free_port()
    args = ["serve", "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{port}"]
    with running(args, env) as process:
        lines = [without_time(process.stderr.readline()) for _ in range(3)]
        assert lines == [
            "[INFO everlock] starting frontend-http",
            f"[INFO everlock_site.http] frontend-http: binding HTTP admin listener on 127.0.0.1:{port}",
            f"[INFO everlock_site.http] HTTP admin listener on 127.0.0.1:{port}",
        ]
        assert get(port, "/login/").status == 200
    assert process.returncode == 0
