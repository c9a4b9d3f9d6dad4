"""EVERLOCK_LOG parsing into Django's LOGGING."""

from __future__ import annotations

import pytest

from everlock_site.logging import LogSpecError, logging_config, parse_log_spec


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
