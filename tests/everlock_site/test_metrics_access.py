"""Who may read /metrics: loopback clients when no token is set; with EVERLOCK_METRICS_TOKEN,
only requests carrying it as a bearer token."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import RequestFactory

from everlock_site.scrape import allowed
from tests.everlock_site.test_http_listener import ROOT, base_env, get, running
from tests.ports import free_port


@pytest.mark.parametrize(
    ("address", "token", "authorization", "expected"),
    [
        ("127.0.0.1", "", None, True),
        ("127.0.0.53", "", None, True),
        ("::1", "", None, True),
        ("::ffff:127.0.0.1", "", None, True),
        ("192.0.2.7", "", None, False),
        ("2001:db8::7", "", None, False),
        ("192.0.2.7", "", "Bearer anything", False),
        ("192.0.2.7", "s3cret-token", "Bearer s3cret-token", True),
        ("192.0.2.7", "s3cret-token", "Bearer s3cret-tokeN", False),
        ("192.0.2.7", "s3cret-token", "s3cret-token", False),
        ("127.0.0.1", "s3cret-token", None, False),
        ("127.0.0.1", "s3cret-token", "Bearer s3cret-token", True),
    ],
)
def test_who_may_scrape(address, token, authorization, expected):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    request = RequestFactory().get("/metrics", REMOTE_ADDR=address, **headers)
    assert allowed(request, token=token) is expected


def test_runhttp_serves_metrics_with_the_token_only(tmp_path):
    env = base_env(
        tmp_path, EVERLOCK_LOG="warning,everlock_site.http=info", EVERLOCK_METRICS_TOKEN="s3cret-token"
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    with running(["runhttp", "--listen", f"127.0.0.1:{port}"], env) as process:
        for _ in range(2):
            assert "HTTP admin listener on" in process.stderr.readline()
        refused = get(port, "/metrics")
        assert (refused.status, refused.getheader("WWW-Authenticate"), refused.body) == (
            401,
            'Bearer realm="everlock metrics"',
            b"401 Unauthorized: a bearer token is required\n",
        )
        assert get(port, "/metrics", {"Authorization": "Bearer wrong"}).status == 401
        served = get(port, "/metrics", {"Authorization": "Bearer s3cret-token"})
        assert served.status == 200
        assert served.getheader("Content-Type").startswith("text/plain; version=")
        assert b'everlock_queue_size{status="queued"} 0.0\n' in served.body
        assert (
            b"# TYPE everlock_imap_sessions_total counter\neverlock_imap_sessions_total 0.0\n" in served.body
        )
