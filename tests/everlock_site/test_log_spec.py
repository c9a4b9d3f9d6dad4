"""EVERLOCK_LOG and EVERLOCK_LOG_FORMAT into Django's LOGGING, and the lines it writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from everlock_site.logging import LogSpecError, TextFormatter, logging_config, parse_log_spec
from tests.log_lines import log_lines, without_time

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
    assert config["loggers"]["waitress"] == {"level": "WARNING"}
    assert config["loggers"]["sshadmin"] == {"level": "WARNING"}
    assert config["formatters"]["everlock"] == {"()": TextFormatter}


@pytest.mark.parametrize(
    ("spec", "worker_level"),
    [("", "WARNING"), ("info", "WARNING"), ("debug", "DEBUG"), ("warning,celery=info", "WARNING")],
)
def test_celery_and_kombu_speak_at_debug_only(spec, worker_level):
    loggers = logging_config(spec)["loggers"]
    assert loggers["kombu"]["level"] == worker_level
    assert loggers["celery"] == {"level": "INFO" if "celery=info" in spec else worker_level}


def test_logging_config_rejects_an_unknown_format():
    with pytest.raises(LogSpecError, match=r"^EVERLOCK_LOG_FORMAT: 'xml' is not text or json$"):
        logging_config("", "xml")


LOG_SOME = """
import logging, django
django.setup()
log = logging.getLogger("mail.delivery")
fields = {"queue_id": 7, "domain": "example.net"}
log.info("delivery #%s to %s deferred: %s", 7, "example.net", "refused", extra=fields)
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("mail.smtp").exception("SMTP: commit_submission failed")
"""


def _log_some(tmp_path, log_format: str) -> list[str]:
    env = {
        **os.environ,
        "EVERLOCK_DATA_DIR": str(tmp_path),
        "EVERLOCK_LOG": "",
        "EVERLOCK_LOG_FORMAT": log_format,
    }
    env.pop("RUST_LOG", None)
    result = subprocess.run(
        [sys.executable, "-c", LOG_SOME], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_text_lines_begin_with_an_iso_8601_timestamp(tmp_path):
    before = datetime.now(UTC)
    lines = _log_some(tmp_path, "text")
    stamp, _, rest = lines[0].partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stamp), stamp
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(stamp) <= datetime.now(UTC)
    assert rest == "[INFO mail.delivery] delivery #7 to example.net deferred: refused"
    assert without_time(lines[1]) == "[ERROR mail.smtp] SMTP: commit_submission failed"
    assert lines[2:4] == ["Traceback (most recent call last):", '  File "<string>", line 8, in <module>']
    assert lines[-1] == "ZeroDivisionError: division by zero"


def test_json_lines_are_one_object_each_with_the_structured_fields(tmp_path):
    lines = _log_some(tmp_path, "json")
    assert len(lines) == 2
    deferred, failed = (json.loads(line) for line in lines)
    assert datetime.fromisoformat(deferred.pop("timestamp")).utcoffset() == timedelta(0)
    assert deferred == {
        "level": "INFO",
        "logger": "mail.delivery",
        "message": "delivery #7 to example.net deferred: refused",
        "queue_id": 7,
        "domain": "example.net",
    }
    assert (failed["level"], failed["logger"], failed["message"]) == (
        "ERROR",
        "mail.smtp",
        "SMTP: commit_submission failed",
    )
    assert failed["exception"].startswith("Traceback (most recent call last):\n")
    assert failed["exception"].endswith("ZeroDivisionError: division by zero")


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
    assert log_lines(result.stderr) == (expected if shown else [])
