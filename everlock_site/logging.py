"""EVERLOCK_LOG -> Django's LOGGING dict.

The value is a default level, module=level pairs, or both: "info", "mail.delivery=info",
"warning,mail.smtp=debug". Targets of the product doc's RUST_LOG form
("everlock_backend_mail_smtp=info") are accepted and mapped onto our module names, so the
documented diagnostics line works as written.
"""

import logging

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
    """EVERLOCK_LOG does not parse."""


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


def logging_config(spec: str) -> dict:
    root, modules = parse_log_spec(spec)
    # Library chatter stays at warning unless asked for by name.
    loggers = {
        name: {"level": modules.pop(name, "WARNING")}
        for name in ("asyncssh", "mail.log", "celery", "kombu", "waitress")
    }
    loggers.update({name: {"level": level} for name, level in modules.items()})
    for name in NOISE:
        loggers.setdefault(name, {})["filters"] = [f"noise:{name}"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"everlock": {"format": "[%(levelname)s %(name)s] %(message)s"}},
        "filters": {f"noise:{name}": {"()": DemoteNoise, "contains": text} for name, text in NOISE.items()},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "everlock"}},
        "root": {"handlers": ["console"], "level": root},
        "loggers": loggers,
    }
