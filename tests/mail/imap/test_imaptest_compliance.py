"""Dovecot's imaptest compliance suite against the real IMAP listener.

The kit lives beside the checkout (../shared/tools/imaptest: build.sh builds imaptest,
run-tests.sh runs its 71 scripted test groups). Every group that runs must pass; groups whose
capability Everlock does not offer are skipped by imaptest and never counted as passed
(CONTEXT=SEARCH, CONTEXT=SORT, NOTIFY, URLAUTH).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from accounts.services import grant_add, user_add

KIT_CANDIDATES = [
    Path(os.environ.get("EVERLOCK_IMAPTEST_KIT", "")),
    Path(__file__).resolve().parents[3].parent / "shared" / "tools" / "imaptest",
    Path("/work/shared/tools/imaptest"),
]

MIN_PASSED = 60

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed \(.*?(?:failing tests: ([^)]*))?\)$")


def kit() -> Path:
    for candidate in KIT_CANDIDATES:
        if (candidate / "run-tests.sh").exists():
            return candidate
    raise AssertionError(f"the imaptest kit is missing: looked in {[str(c) for c in KIT_CANDIDATES]}")


@pytest.fixture
def imaptest_users(transactional_db):
    from mail.models import MailDomain

    MailDomain.objects.create(name="example.com")
    for name in ("imaptest", "imaptest2"):
        user_add(name=name, password="imaptest-secret")
        grant_add(name=name, resource=f"smtp/mail/example.com:{name}", role="writer")


def test_imaptest_compliance_suite(imap, imaptest_users, tmp_path):
    tools = kit()
    env = {**os.environ, "IMAPTEST_HOME": os.environ.get("IMAPTEST_HOME", "/tmp/imaptest")}
    built = subprocess.run([str(tools / "build.sh")], capture_output=True, text=True, timeout=900, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    done = subprocess.run(
        [str(tools / "run-tests.sh"), "127.0.0.1", str(imap.port), "imaptest", "imaptest-secret"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "USER2": "imaptest2", "LOGDIR": str(tmp_path), "TIMEOUT": "600"},
    )
    summary = done.stdout.strip().splitlines()[-1]
    match = SUMMARY.match(summary)
    assert match, done.stdout + done.stderr
    passed, failed = int(match.group(1)), int(match.group(2))
    assert failed == 0, f"{summary}\n(log: {done.stderr.strip()})"
    assert passed >= MIN_PASSED, summary
