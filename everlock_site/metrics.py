"""The counters every Everlock process adds to, for /metrics (everlock_site.scrape).

Listeners, the SMTP writer and the delivery workers are separate processes (and `everlock
serve` may run each listener in several), so the counts are kept with prometheus-client's
multiprocess mode: each process adds to memory-mapped files of its own in
EVERLOCK_DATA_DIR/metrics (settings sets PROMETHEUS_MULTIPROC_DIR before this module is
imported), and a scrape adds up the files of every process, living or not. A count costs a
lock and a memory write, never a database write, so refusing mail or answering DNS stays as
cheap as before; the files outlive a restart, so the counters only ever grow.

What the database knows (queue size, oldest entry) is not counted here but read at scrape
time; so are the certificates' expiry dates.
"""

from __future__ import annotations

import os

from prometheus_client import Counter

if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # pragma: no cover - a wiring error
    raise RuntimeError("everlock_site.metrics imported before the settings set PROMETHEUS_MULTIPROC_DIR")

SMTP_ACCEPTED = Counter(
    "everlock_smtp_messages_accepted",
    "Messages accepted (250 after DATA or the last BDAT), by listener.",
    ["listener"],
)
SMTP_REFUSED = Counter(
    "everlock_smtp_messages_refused",
    "Refusals (4xx and 5xx) of a connection or of MAIL, RCPT, DATA or BDAT, by listener, command and "
    "reason (the name of the reply in mail.replies, else its enhanced status code).",
    ["listener", "command", "reason"],
)
DELIVERIES = Counter(
    "everlock_deliveries",
    "Outcomes of outbound delivery attempts, per recipient: delivered, deferred (4xx or no host "
    "reachable), failed (5xx) and expired.",
    ["result"],
)
DNS_QUERIES = Counter(
    "everlock_dns_queries",
    "DNS queries answered, by transport (udp, tcp) and response code.",
    ["transport", "rcode"],
)
IMAP_CONNECTIONS = Counter(
    "everlock_imap_connections", "IMAP connections accepted, by listener.", ["listener"]
)
IMAP_LOGINS = Counter(
    "everlock_imap_logins", "IMAP login attempts, by result (ok, failed, throttled).", ["result"]
)
IMAP_SESSIONS = Counter("everlock_imap_sessions", "IMAP sessions opened after a login.")
IMAP_SESSIONS_CLOSED = Counter(
    "everlock_imap_sessions_closed",
    "IMAP sessions closed; everlock_imap_sessions_total minus this is the number open.",
)
