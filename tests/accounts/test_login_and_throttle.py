"""Login resolution (table-driven), password checks, the verified-credential cache, the throttle."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connection

from accounts import authentication
from accounts.authentication import Throttled, authenticate, resolve_login, verified_credentials
from accounts.models import User
from accounts.services import user_add, user_delete, user_set_password
from accounts.throttle import LOGIN_DELAY_MAX, Throttle, login_delay

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_state():
    cache.clear()
    verified_credentials.clear()
    yield
    cache.clear()
    verified_credentials.clear()


def _make(*names: str) -> None:
    for name in names:
        User.objects.create(username=name)


@pytest.mark.parametrize(
    ("stored", "login", "expected"),
    [
        (["alice"], "alice", "alice"),
        (["alice"], "ALICE", "alice"),
        (["alice"], "alice@example.com", "alice"),
        (["alice"], "Alice@Example.COM", "alice"),
        (["alice"], "alice@bücher.example", "alice"),
        (["alice@example.com"], "alice@example.com", "alice@example.com"),
        (["alice@example.com"], "ALICE@EXAMPLE.COM", "alice@example.com"),
        (["alice@example.com"], "alice", None),
        (["alice@example.com"], "alice@example.net", None),
        # An exact stored match wins over the local part.
        (["alice", "alice@example.com"], "alice@example.com", "alice@example.com"),
        (["alice", "alice@example.com"], "alice@example.net", "alice"),
        (["alice", "alice@example.com"], "alice", "alice"),
        # IDNA: the stored A-label matches a U-label login and the reverse spelling.
        (["alice@xn--bcher-kva.example"], "alice@bücher.example", "alice@xn--bcher-kva.example"),
        (["alice@xn--bcher-kva.example"], "alice@BÜCHER.example", "alice@xn--bcher-kva.example"),
        (["alice@xn--bcher-kva.example"], "alice@xn--bcher-kva.example", "alice@xn--bcher-kva.example"),
        (["alice"], "bob", None),
        (["alice"], "", None),
        (["alice"], "al ice", None),
        (["alice"], "alice@bad..name", None),
    ],
)
def test_resolve_login(stored, login, expected):
    _make(*stored)
    user = resolve_login(login)
    assert (user.username if user else None) == expected


def test_inactive_user_does_not_resolve():
    User.objects.create(username="alice", is_active=False)
    assert resolve_login("alice") is None


def test_authenticate_right_and_wrong_password(caplog):
    user_add(name="alice", password="s3cret")
    assert authenticate(
        "alice@example.com", "s3cret", client_address="192.0.2.1", service="smtp"
    ).username == ("alice")
    with caplog.at_level(logging.WARNING, logger="accounts.authentication"):
        assert authenticate("alice", "wrong", client_address="192.0.2.1", service="smtp") is None
        assert authenticate("nobody", "x", client_address="192.0.2.1", service="ssh") is None
        assert authenticate("alice", "", client_address="192.0.2.1", service="ssh") is None
    assert [r.getMessage() for r in caplog.records if r.name == "accounts.authentication"] == [
        "smtp: authentication failed for 'alice' from 192.0.2.1 "
        "(wrong password; 1 failures from the address, 1 for the login)",
        "ssh: authentication failed for 'nobody' from 192.0.2.1 "
        "(unknown login; 2 failures from the address, 1 for the login)",
        "ssh: authentication failed for 'alice' from 192.0.2.1 "
        "(wrong password; 3 failures from the address, 2 for the login)",
    ]


def test_verified_credentials_skip_the_hasher_and_forget_a_changed_password(monkeypatch):
    user_add(name="alice", password="one")
    assert authenticate("alice", "one", client_address="192.0.2.1", service="smtp") is not None
    calls = []
    original = User.check_password

    def counting(self, raw):
        calls.append(raw)
        return original(self, raw)

    monkeypatch.setattr(User, "check_password", counting)
    for _ in range(3):
        assert authenticate("alice", "one", client_address="192.0.2.1", service="smtp") is not None
    assert calls == []
    # A wrong password never matches the cached HMAC; it goes to the hasher.
    assert authenticate("alice", "two", client_address="192.0.2.1", service="smtp") is None
    assert calls == ["two"]
    # A password change (by any process) changes the stored hash: the old password is gone.
    user_set_password(name="alice", password="two")
    assert authenticate("alice", "one", client_address="192.0.2.1", service="smtp") is None
    assert authenticate("alice", "two", client_address="192.0.2.1", service="smtp") is not None
    assert calls == ["two", "one", "two"]
    user_delete(name="alice")
    assert authenticate("alice", "two", client_address="192.0.2.1", service="smtp") is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_logins_of_one_user_pay_the_hasher_once(monkeypatch):
    user_add(name="alice", password="one")
    calls = []
    original = User.check_password

    def slow(self, raw):
        calls.append(raw)
        time.sleep(0.2)  # the real hasher takes about this long
        return original(self, raw)

    monkeypatch.setattr(User, "check_password", slow)

    def login(_):
        try:
            return authenticate("alice", "one", client_address="192.0.2.1", service="smtp")
        finally:
            connection.close()  # this worker thread's own connection

    with ThreadPoolExecutor(5) as pool:
        users = list(pool.map(login, range(5)))
    assert [u.username for u in users] == ["alice"] * 5
    assert calls == ["one"]


def test_address_throttle_refuses_then_expires(settings):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    user_add(name="alice", password="s3cret")
    for _ in range(3):
        assert authenticate("bob", "x", client_address="192.0.2.9", service="smtp") is None
    with pytest.raises(Throttled, match=r"^too many failed logins from 192\.0\.2\.9; retry in \d+s$"):
        authenticate("alice", "s3cret", client_address="192.0.2.9", service="smtp")
    # The right password from another address still works: no lockout of alice.
    assert authenticate("alice", "s3cret", client_address="192.0.2.10", service="smtp") is not None


def test_throttle_window_with_a_clock():
    now = [1000.0]
    throttle = Throttle(max_failures=2, window=60, clock=lambda: now[0])
    assert throttle.check(login="alice", client_address="192.0.2.1") == 0.0
    assert throttle.record_failure(login="alice", client_address="192.0.2.1") == (1, 1)
    now[0] += 30
    assert throttle.record_failure(login="Alice", client_address="192.0.2.1") == (2, 2)
    with pytest.raises(Throttled) as exc:
        throttle.check(login="bob", client_address="192.0.2.1")
    assert exc.value.retry_after == 30
    # Another address is not refused; the login's failures count from everywhere.
    assert throttle.check(login="alice", client_address="192.0.2.2") == 0.0
    assert throttle.record_failure(login="alice", client_address="192.0.2.2") == (1, 3)
    assert throttle.check(login="alice", client_address="192.0.2.3") == login_delay(3) == 0.25
    now[0] += 31  # the first window is over
    assert throttle.check(login="bob", client_address="192.0.2.1") == 0.0
    assert throttle.record_failure(login="bob", client_address="192.0.2.1") == (1, 1)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (2, 0.0), (3, 0.25), (4, 0.5), (5, 1.0), (6, 2.0), (7, 4.0), (8, LOGIN_DELAY_MAX), (50, 4.0)],
)
def test_login_delay_grows_and_is_capped(failures, delay):
    assert login_delay(failures) == delay


def test_repeated_failures_slow_the_login_but_do_not_refuse_it(settings, monkeypatch):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 100
    user_add(name="alice", password="s3cret")
    slept = []
    monkeypatch.setattr(authentication.time, "sleep", slept.append)
    for i in range(5):
        assert authenticate("alice", "guess", client_address=f"198.51.100.{i}", service="smtp") is None
    assert slept == [0.25, 0.5]
    assert authenticate("alice", "s3cret", client_address="203.0.113.5", service="smtp") is not None
    assert slept == [0.25, 0.5, 1.0]
