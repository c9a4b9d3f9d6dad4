"""EVERLOCK_LOG and EVERLOCK_LOG_FORMAT -> Django's LOGGING dict.

The EVERLOCK_LOG value is a default level, module=level pairs, or both: "info",
"mail.delivery=info", "warning,mail.smtp=debug". Targets of the product doc's RUST_LOG form
("everlock_backend_mail_smtp=info") are accepted and mapped onto our module names, so the
documented diagnostics line works as written.

Every line starts with its time in ISO 8601 with the UTC offset
(`2026-03-01T12:00:00.123+00:00 [INFO mail.smtp] ...`); EVERLOCK_LOG_FORMAT=json writes one
JSON object per line instead, with the structured fields a log call gives in `extra`
(client address, queue id, ...) beside timestamp, level, logger and message.
"""

import json
import logging
from datetime import datetime

DEFAULT_LEVEL = "INFO"

# Library messages that say nothing to an operator: {logger name: text in the message}. They
# become debug records, shown only when that logger is at debug.
NOISE = {
    # kombu, for every message through the embedded broker (a filesystem:// URL has no host).
    "kombu.connection": "No hostname was supplied",
    # aiosmtpd, at every successful AUTH (it sets its deprecated Session.login_data itself).
    "mail.log": "Session.login_data is deprecated",
}

LEVELS = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "off": "CRITICAL",
    "critical": "CRITICAL",
}

TARGET_ALIASES = {
    "everlock_backend_mail_smtp": "mail.delivery",
    "everlock_frontend_smtp": "mail.smtp",
    "everlock_frontend_ssh": "sshadmin",
    "everlock_backend_dns_dns": "dns_zones",
    "everlock_frontend_http": "everlock_site.http",
}


class DemoteNoise(logging.Filter):
    """On a logger: its records containing `contains` become debug records, dropped unless the
    logger is enabled for debug."""

    def __init__(self, contains: str):
        super().__init__()
        self.contains = contains

    def filter(self, record: logging.LogRecord) -> bool:
        if self.contains not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class LogSpecError(ValueError):
    """EVERLOCK_LOG or EVERLOCK_LOG_FORMAT does not parse."""


def timestamp(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601 with milliseconds and the local UTC offset (Django sets
    the process's zone to TIME_ZONE, UTC): 2026-03-01T12:00:00.123+00:00."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`TIMESTAMP [LEVEL logger] message`, a traceback on the lines after it."""

    def __init__(self) -> None:
        super().__init__("[%(levelname)s %(name)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"{timestamp(record)} {super().format(record)}"


# The attributes every LogRecord has; any other attribute came from a call's `extra`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: timestamp, level, logger, message, the
    `extra` fields of the call, and `exception` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


FORMATTERS = {"text": TextFormatter, "json": JSONFormatter}


def parse_log_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Return (root level, {logger name: level}) for an EVERLOCK_LOG value.

    Raises LogSpecError naming the part that is not a known level.
    """
    root = DEFAULT_LEVEL
    modules: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        target, sep, level = part.rpartition("=")
        level_name = LEVELS.get(level.strip().lower())
        if level_name is None:
            raise LogSpecError(f"EVERLOCK_LOG: unknown level {level!r} in {part!r}")
        if not sep:
            root = level_name
            continue
        target = target.strip().replace("::", ".")
        modules[TARGET_ALIASES.get(target, target)] = level_name
    return root, modules


def logging_config(spec: str, log_format: str = "text") -> dict:
    """LOGGING for an EVERLOCK_LOG value and an EVERLOCK_LOG_FORMAT ("text" or "json").

    Raises LogSpecError for a value that does not parse.
    """
    formatter = FORMATTERS.get(log_format.strip().lower())
    if formatter is None:
        raise LogSpecError(f"EVERLOCK_LOG_FORMAT: {log_format!r} is not text or json")
    root, modules = parse_log_spec(spec)
    worker_level = "DEBUG" if root == "DEBUG" else "WARNING"
    # Library chatter stays at warning unless asked for by name; the delivery worker's own
    # (Celery's banner and start-up lines, kombu's) also with "debug".
    defaults = {"asyncssh": "WARNING", "mail.log": "WARNING", "celery": worker_level,
                "kombu": worker_level, "waitress": "WARNING"}  # fmt: skip
    loggers = {name: {"level": modules.pop(name, level)} for name, level in defaults.items()}
    loggers.update({name: {"level": level} for name, level in modules.items()})
    for name in NOISE:
        loggers.setdefault(name, {})["filters"] = [f"noise:{name}"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"everlock": {"()": formatter}},
        "filters": {f"noise:{name}": {"()": DemoteNoise, "contains": text} for name, text in NOISE.items()},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "everlock"}},
        "root": {"handlers": ["console"], "level": root},
        "loggers": loggers,
    }
