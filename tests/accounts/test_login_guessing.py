"""Password guessing: what a guess costs and how many are allowed, on every listener.

Through real SMTP, SSH and HTTP listeners on 127.0.0.1: a wrong password costs the hasher the
same work whether the login names a user or not, and the admin web login is throttled like the
others. Then the throttle's per-account limit and known-good addresses.
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import re
import smtplib
import urllib.error
import urllib.parse
import urllib.request

import asyncssh
import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core.cache import cache

from accounts import authentication
from accounts.authentication import Throttled, authenticate, verified_credentials
from accounts.services import user_add
from accounts.throttle import login_delay
from everlock_site.http import bind_http
from everlock_site.listen import ListenAddress
from tests.mail.smtp.conftest import example_com, smtp, start_smtp, tls_context  # noqa: F401
from tests.sshadmin.conftest import ADMIN_PASSWORD, console_runner  # noqa: F401


class CountingHasher(MD5PasswordHasher):
    """A real (fast) hasher that counts its work: every hash computed, for a check or not."""

    hashed: list[str] = []

    def encode(self, password, salt):
        CountingHasher.hashed.append(password)
        return super().encode(password, salt)


@pytest.fixture
def counting_hasher(settings):
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    CountingHasher.hashed = []
    return CountingHasher.hashed


@pytest.fixture
def admin_web(transactional_db):
    listener = bind_http(ListenAddress("127.0.0.1", 0))
    listener.start()
    yield f"http://127.0.0.1:{listener.address.port}"
    listener.close()
    asyncio.run(listener.wait_closed())


def web_login(base: str, username: str, password: str) -> tuple[int, str]:
    """Log into the admin web UI as a browser does; (status, page) of the answer."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/"}
    ).encode()
    request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": f"{base}/login/"})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def smtp_login(server, username: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as client:
        client.starttls(context=tls_context())
        client.ehlo("client.example.com")
        # One AUTH PLAIN (smtplib's login() would try the next mechanism after a 535).
        credentials = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {credentials}")[0]


def ssh_login(port: int, username: str, password: str) -> bool:
    async def attempt() -> bool:
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, username=username, password=password, known_hosts=None, client_keys=None
            ):
                return True
        except asyncssh.PermissionDenied:
            return False

    return asyncio.run(attempt())


def test_smtp_unknown_and_known_logins_cost_the_hasher_alike(smtp, counting_hasher, example_com):  # noqa: F811
    counting_hasher.clear()  # the users' passwords were hashed when they were added
    assert smtp_login(smtp, "alice", "wrong") == 535
    assert counting_hasher == ["wrong"]
    assert smtp_login(smtp, "nobody", "wrong too") == 535
    assert counting_hasher == ["wrong", "wrong too"]
    assert smtp_login(smtp, "alice", "change-me") == 235


def test_ssh_unknown_and_known_logins_cost_the_hasher_alike(counting_hasher, console_runner, tmp_path):  # noqa: F811
    console = console_runner.start(tmp_path)
    counting_hasher.clear()  # the admin's password was hashed when it was added
    assert ssh_login(console.port, "admin", "wrong") is False
    assert counting_hasher == ["wrong"]
    assert ssh_login(console.port, "nobody", "wrong too") is False
    assert counting_hasher == ["wrong", "wrong too"]
    assert ssh_login(console.port, "admin", ADMIN_PASSWORD) is True


def test_admin_web_unknown_and_known_logins_cost_the_hasher_alike(admin_web, counting_hasher):
    cache.clear()
    user_add(name="admin", password="change-me", is_admin=True)
    counting_hasher.clear()
    assert web_login(admin_web, "admin", "wrong")[0] == 200  # the form again, with its error
    assert counting_hasher == ["wrong"]
    assert web_login(admin_web, "nobody", "wrong too")[0] == 200
    assert counting_hasher == ["wrong", "wrong too"]
    status, page = web_login(admin_web, "admin", "change-me")
    assert (status, 'id="logout-form"' in page) == (200, True)


def test_admin_web_login_is_throttled_like_the_listeners(admin_web, settings, monkeypatch, caplog):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    monkeypatch.setattr(authentication.time, "sleep", lambda seconds: None)  # the login's delay
    cache.clear()
    user_add(name="admin", password="change-me", is_admin=True)
    for _ in range(3):
        status, page = web_login(admin_web, "admin", "guess")
        assert "Please enter the correct username and password" in page
    status, page = web_login(admin_web, "admin", "change-me")
    assert status == 200
    assert re.search(r"Too many failed logins; try again in \d+ seconds\.", page)
    assert "Site administration" not in page
    assert any(
        m.startswith("admin: login refused for 'admin' from 127.0.0.1: too many failed logins from 127.0.0.1")
        for m in caplog.messages
    )


@pytest.fixture
def throttle_policy(db, settings, monkeypatch):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN = 5
    slept: list[float] = []
    monkeypatch.setattr(authentication.time, "sleep", slept.append)
    cache.clear()
    verified_credentials.clear()
    yield slept
    cache.clear()


def test_guesses_spread_over_addresses_are_bounded_per_account(throttle_policy):
    user_add(name="alice", password="s3cret")
    for i in range(5):
        assert authenticate("alice", f"guess{i}", client_address=f"198.51.100.{i}", service="smtp") is None
    with pytest.raises(Throttled, match=r"^too many failed logins for 'alice'; retry in \d+s$"):
        authenticate("alice", "s3cret", client_address="198.51.100.99", service="smtp")
    # Another account is not affected.
    user_add(name="bob", password="b0b-secret")
    assert authenticate("bob", "b0b-secret", client_address="198.51.100.99", service="smtp") is not None


def test_the_owner_at_a_known_good_address_is_slowed_never_locked_out(throttle_policy):
    slept = throttle_policy
    user_add(name="alice", password="s3cret")
    assert authenticate("alice", "s3cret", client_address="203.0.113.7", service="smtp") is not None
    # Someone behind the same address guesses other accounts until the address is refused...
    for name in ("bob", "carol", "dave"):
        assert authenticate(name, "guess", client_address="203.0.113.7", service="smtp") is None
    with pytest.raises(Throttled):
        authenticate("bob", "guess", client_address="203.0.113.7", service="smtp")
    # ...and others guess alice's password from everywhere until her account is refused.
    for i in range(5):
        assert authenticate("alice", "guess", client_address=f"198.51.100.{i}", service="smtp") is None
    with pytest.raises(Throttled):
        authenticate("alice", "s3cret", client_address="198.51.100.50", service="smtp")
    # alice, from the address she logged in from before, still gets in: slowed, not refused.
    slept.clear()
    assert authenticate("alice", "s3cret", client_address="203.0.113.7", service="smtp").username == "alice"
    assert slept == [login_delay(5)] == [1.0]


def test_guessing_the_owners_account_from_the_owners_address_ends_the_exemption(throttle_policy):
    user_add(name="alice", password="s3cret")
    assert authenticate("alice", "s3cret", client_address="203.0.113.7", service="smtp") is not None
    for _ in range(3):
        assert authenticate("alice", "guess", client_address="203.0.113.7", service="smtp") is None
    with pytest.raises(Throttled, match=r"from 203\.0\.113\.7"):
        authenticate("alice", "guess", client_address="203.0.113.7", service="smtp")
