"""Reading Everlock's text log: each line begins with an ISO 8601 timestamp and its offset."""

from __future__ import annotations

import re
from datetime import datetime

# 2026-03-01T12:00:00.123+00:00 [INFO mail.smtp] SMTP inbound listener on 127.0.0.1:2525
_STAMPED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (\[.*)", re.DOTALL)


def without_time(line: str) -> str:
    """`line` without its timestamp, which must be there and parse as ISO 8601 with an offset.

    Lines that are not log records (a traceback's, a CommandError) come back as they are.
    """
    line = line.rstrip("\n")
    match = _STAMPED.fullmatch(line)
    if match is None:
        assert not line.startswith("["), f"log line without a timestamp: {line!r}"
        return line
    assert datetime.fromisoformat(match[1]).utcoffset() is not None, line
    return match[2]


def log_lines(text: str) -> list[str]:
    """The lines of a log, each without its timestamp."""
    return [without_time(line) for line in text.splitlines()]
