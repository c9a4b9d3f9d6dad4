"""EVERLOCK_LOG parsing into Django's LOGGING."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from everlock_site.logging import LogSpecError, logging_config, parse_log_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("spec", "root", "modules"),
    [
        ("", "INFO", {}),
        ("debug", "DEBUG", {}),
        ("warn", "WARNING", {}),
        ("mail.delivery=info,mail.smtp=info", "INFO", {"mail.delivery": "INFO", "mail.smtp": "INFO"}),
        ("warning, sshadmin=debug", "WARNING", {"sshadmin": "DEBUG"}),
        ("everlock_backend_mail_smtp=info", "INFO", {"mail.delivery": "INFO"}),
        ("everlock_frontend_ssh=trace,error", "ERROR", {"sshadmin": "DEBUG"}),
        ("accounts::authentication=off", "INFO", {"accounts.authentication": "CRITICAL"}),
    ],
)
def test_parse_log_spec(spec, root, modules):
    assert parse_log_spec(spec) == (root, modules)


@pytest.mark.parametrize("spec", ["loud", "mail.smtp=chatty", "info,mail=="])
def test_parse_log_spec_rejects(spec):
    with pytest.raises(LogSpecError, match=r"^EVERLOCK_LOG: unknown level"):
        parse_log_spec(spec)


def test_logging_config_keeps_libraries_quiet_unless_named():
    config = logging_config("debug,asyncssh=info,sshadmin=warning")
    assert config["root"] == {"handlers": ["console"], "level": "DEBUG"}
    assert config["loggers"]["asyncssh"] == {"level": "INFO"}
    assert config["loggers"]["celery"] == {"level": "WARNING"}
    assert config["loggers"]["sshadmin"] == {"level": "WARNING"}
    assert config["formatters"]["everlock"]["format"] == "[%(levelname)s %(name)s] %(message)s"


KOMBU_INFO = "import django; django.setup(); from kombu import Connection; Connection('filesystem://').info()"


@pytest.mark.parametrize(("spec", "shown"), [("", False), ("info", False), ("kombu=debug", True)])
def test_kombu_hostname_warning_shows_only_at_debug(tmp_path, spec, shown):
    """kombu warns "No hostname was supplied" for every message through the embedded broker;
    that is debug chatter, not a warning an operator should act on."""
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), "EVERLOCK_LOG": spec}
    env.pop("RUST_LOG", None)
    result = subprocess.run(
        [sys.executable, "-c", KOMBU_INFO], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = ["[DEBUG kombu.connection] No hostname was supplied. Reverting to default 'localhost'"]
    assert result.stderr.splitlines() == (expected if shown else [])
