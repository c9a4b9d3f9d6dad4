"""Everlock settings.

Everything an operator may change is read here, once, from the environment or from a `.env`
file in the working directory (see `.env.example`). Services never read the environment
themselves: commands, tasks and AppConfigs pass these values in.
"""

import ipaddress
import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from everlock_site.files import write_private_file
from everlock_site.logging import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(Path.cwd() / ".env")

# EVERLOCK_DATA_DIR: where Everlock keeps its state: the SQLite database, the SSH host key,
# the generated secret key, the TLS pair, stored messages and the everlock-mail/ config files.
DATA_DIR = Path(env.str("EVERLOCK_DATA_DIR", default="./var")).expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data dir."""
    if env.str("SECRET_KEY", default=""):
        return env.str("SECRET_KEY")
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    # When several processes start at once, the first one's key wins.
    write_private_file(path, key.encode(), keep_existing=True)
    return path.read_text().strip()


SECRET_KEY = _secret_key()

# DEBUG: never on in production; it only changes the Django admin's error pages.
DEBUG = env.bool("EVERLOCK_DEBUG", default=False)

# EVERLOCK_ALLOWED_HOSTS: host names the admin web UI answers to (comma separated).
ALLOWED_HOSTS = env.list("EVERLOCK_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# EVERLOCK_CSRF_TRUSTED_ORIGINS: origins the admin web UI accepts forms from when it is reached
# under another name or scheme than it is served on, e.g. "https://admin.example.com" behind a
# TLS-terminating reverse proxy (comma separated, scheme included).
CSRF_TRUSTED_ORIGINS = env.list("EVERLOCK_CSRF_TRUSTED_ORIGINS", default=[])

# EVERLOCK_ADMIN_HTTPS: the admin web UI is reached over HTTPS through a reverse proxy that
# terminates TLS and sets X-Forwarded-Proto (overwriting any the client sent). Session and
# CSRF cookies are then sent over HTTPS only.
EVERLOCK_ADMIN_HTTPS = env.bool("EVERLOCK_ADMIN_HTTPS", default=False)
if EVERLOCK_ADMIN_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "everlock_site.apps.EverlockAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "everlock_site",
    "accounts",
    "dns_zones",
    "mail",
    "sshadmin",
    "tls",
]

MIDDLEWARE = [
    # ACME http-01 answers, before anything that checks the Host header (tls.middleware).
    "tls.middleware.acme_challenge",
    # The MTA-STS policy and autoconfig files, chosen by a mail domain's Host header.
    "mail.client_files.ClientFilesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "everlock_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Everlock's admin templates (base_site.html) come before django.contrib.admin's.
        "DIRS": [BASE_DIR / "everlock_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "everlock_site.wsgi.application"

# DATABASE_URL: the database every process shares. Default: SQLite in the data dir.
# Production: postgres://user:password@host:5432/name
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'everlock.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Writers take the lock at BEGIN, so concurrent writers queue on `timeout`
            # instead of failing with "database is locked" on lock upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            # WAL lets readers run beside the writer; synchronous=FULL makes a commit
            # durable before we answer 250.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
        }
    )
    # Kept open: a SQLite connection costs nothing to keep and much to open (the pragmas),
    # and Celery's Django fixup would otherwise open one per delivery task.
    DATABASES["default"].setdefault("CONN_MAX_AGE", None)
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

AUTH_USER_MODEL = "accounts.User"
# The admin web login checks passwords as every listener does: through the login throttle.
AUTHENTICATION_BACKENDS = ["accounts.backends.ThrottledModelBackend"]

# New passwords (console, `serve --admin-password*`, the admin web UI) are checked by Django's
# validators; the console's --allow-weak sets a refused one anyway.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# The admin's CSS and scripts, served by WhiteNoise straight from the installed apps, so a
# server needs no collectstatic step (everlock_site.http).
STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Stored message bodies go through Django's storage API: the filesystem under the data dir by
# default; an S3-compatible backend can be configured through STORAGES.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "messages": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "messages"), "file_permissions_mode": 0o600},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Counters for /metrics (everlock_site.metrics): each process adds to its own files here, and
# a scrape adds them up. prometheus-client reads the variable when it is first imported.
EVERLOCK_METRICS_DIR = DATA_DIR / "metrics"
EVERLOCK_METRICS_DIR.mkdir(exist_ok=True, mode=0o700)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(EVERLOCK_METRICS_DIR)

# EVERLOCK_METRICS_TOKEN: when set, /metrics on the HTTP listener answers only requests with
# "Authorization: Bearer TOKEN" (from any address); when empty, only loopback clients.
EVERLOCK_METRICS_TOKEN = env.str("EVERLOCK_METRICS_TOKEN", default="")

# Cross-process cache (login throttle, verified-credential generations): the database, so
# every listener and worker sees the same counters without another server.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "everlock_cache",
    }
}

# EVERLOCK_HOSTNAME: the name this server gives in SMTP greetings and Received headers.
EVERLOCK_HOSTNAME = env.str("EVERLOCK_HOSTNAME", default="localhost")

# EVERLOCK_IMAP_MAX_CONNECTIONS: open connections per IMAP listener; more are answered
# `* BYE [LIMIT]`. EVERLOCK_IMAP_MAX_SESSIONS_PER_USER: logged-in sessions of one user per
# IMAP process. EVERLOCK_IMAP_IDLE_TIMEOUT: seconds a connection may stay silent, IDLE included
# (RFC 9051 asks for at least 30 minutes). EVERLOCK_IMAP_MAX_LINE: bytes of one command line
# (literals aside). EVERLOCK_IMAP_NOTIFY_INTERVAL: seconds between looks for changes other
# processes made to open folders (how soon IDLE hears of new mail).
EVERLOCK_IMAP_MAX_CONNECTIONS = env.int("EVERLOCK_IMAP_MAX_CONNECTIONS", default=4000)
EVERLOCK_IMAP_MAX_SESSIONS_PER_USER = env.int("EVERLOCK_IMAP_MAX_SESSIONS_PER_USER", default=50)
EVERLOCK_IMAP_IDLE_TIMEOUT = env.float("EVERLOCK_IMAP_IDLE_TIMEOUT", default=30 * 60)
EVERLOCK_IMAP_MAX_LINE = env.int("EVERLOCK_IMAP_MAX_LINE", default=64 * 1024)
EVERLOCK_IMAP_NOTIFY_INTERVAL = env.float("EVERLOCK_IMAP_NOTIFY_INTERVAL", default=0.25)

# EVERLOCK_TLS_CERT / EVERLOCK_TLS_KEY: PEM files (chain, key) of the certificate the TLS
# listeners present when the client names no host that has an ACME certificate. When unset,
# a self-signed pair for EVERLOCK_HOSTNAME is generated once in the data dir (tls/).
EVERLOCK_TLS_CERT = env.str("EVERLOCK_TLS_CERT", default="")
EVERLOCK_TLS_KEY = env.str("EVERLOCK_TLS_KEY", default="")
# EVERLOCK_TLS_RELOAD_INTERVAL: seconds between each process's looks for a new certificate
# (an ACME renewal, a replaced EVERLOCK_TLS_CERT file); listeners present it without a restart.
EVERLOCK_TLS_RELOAD_INTERVAL = env.float("EVERLOCK_TLS_RELOAD_INTERVAL", default=30.0)

# Certificates by ACME (RFC 8555), see docs/certificates.md. On when EVERLOCK_ACME_EMAIL and
# EVERLOCK_ACME_DIRECTORY are both set: Everlock then obtains and renews certificates for the
# names it serves (each mail domain's outbound hostname, mta-sts.<domain>, autoconfig.<domain>,
# EVERLOCK_ADMIN_HOST). EVERLOCK_ACME_DIRECTORY: the CA's directory URL (Let's Encrypt's
# production directory by default). EVERLOCK_ACME_EMAIL: the account's contact address (the CA
# writes there about expiring certificates and policy changes). EVERLOCK_ACME_CA_FILE: a PEM
# file of CA certificates to trust for the directory's HTTPS instead of the system's (a
# private ACME server). EVERLOCK_ACME_CHECK_INTERVAL: seconds between the delivery workers'
# looks for names without a certificate and certificates past two thirds of their lifetime.
# EVERLOCK_ACME_RETRY_AFTER: seconds before an order that failed is placed again.
EVERLOCK_ACME_DIRECTORY = env.str(
    "EVERLOCK_ACME_DIRECTORY", default="https://acme-v02.api.letsencrypt.org/directory"
)
EVERLOCK_ACME_EMAIL = env.str("EVERLOCK_ACME_EMAIL", default="")
EVERLOCK_ACME_CA_FILE = env.str("EVERLOCK_ACME_CA_FILE", default="")
EVERLOCK_ACME_CHECK_INTERVAL = env.float("EVERLOCK_ACME_CHECK_INTERVAL", default=60.0)
EVERLOCK_ACME_RETRY_AFTER = env.float("EVERLOCK_ACME_RETRY_AFTER", default=3600.0)

# EVERLOCK_ADMIN_HOST: the name the admin web UI is reached by over HTTPS (e.g.
# admin.example.com); with ACME on, it gets a certificate too. Empty: none.
EVERLOCK_ADMIN_HOST = env.str("EVERLOCK_ADMIN_HOST", default="")

# EVERLOCK_DNS: "on" when this installation runs the hosted DNS backend (backend-dns-dns),
# so that mail domains in hosted zones get DKIM set up automatically. Every process (serve,
# the console, the workers) reads this one setting; `everlock serve --backend-dns-dns` sets it
# for its own process.
EVERLOCK_DNS = env.bool("EVERLOCK_DNS", default=False)
# TCP connections the DNS server holds open (RFC 7766): in all, and from one client address.
# When all are taken, the one that made progress longest ago is closed for a new client.
EVERLOCK_DNS_TCP_MAX_CONNECTIONS = env.int("EVERLOCK_DNS_TCP_MAX_CONNECTIONS", default=256)
EVERLOCK_DNS_TCP_MAX_CONNECTIONS_PER_CLIENT = env.int(
    "EVERLOCK_DNS_TCP_MAX_CONNECTIONS_PER_CLIENT", default=8
)

# EVERLOCK_RESOLVER: nameservers for outbound MX lookups and the inbound checks as
# "host:port,host:port"; empty means the system's resolver (/etc/resolv.conf).
EVERLOCK_RESOLVER = env.str("EVERLOCK_RESOLVER", default="")

# EVERLOCK_INBOUND_CHECKS: SPF, DKIM, ARC, DMARC and iprev on mail received on port 25, with
# an Authentication-Results header on each delivered copy (docs/inbound-checks.md).
EVERLOCK_INBOUND_CHECKS = env.bool("EVERLOCK_INBOUND_CHECKS", default=True)
# EVERLOCK_DNSBL_ZONES: DNS blocklists (RFC 5782) asked for each inbound client address,
# comma-separated ("zen.spamhaus.org,bl.example.net"); a listed client gets 554 5.7.1.
EVERLOCK_DNSBL_ZONES = env.list("EVERLOCK_DNSBL_ZONES", default=[])

# EVERLOCK_REMOTE_SMTP_PORT: the port remote MX hosts are dialled on (25 on the internet).
EVERLOCK_REMOTE_SMTP_PORT = env.int("EVERLOCK_REMOTE_SMTP_PORT", default=25)

# EVERLOCK_OUTBOUND_SOURCE_ADDRESSES: the local addresses outbound SMTP connections leave from,
# at most one IPv4 and one IPv6 (e.g. "192.0.2.25,2001:db8::25"), so that remote servers see
# the address your MX, SPF and reverse DNS records name. Empty: the system chooses.
EVERLOCK_OUTBOUND_SOURCE_ADDRESSES = env.list("EVERLOCK_OUTBOUND_SOURCE_ADDRESSES", default=[])

# EVERLOCK_SMTP_TLS_VERIFY: verify remote certificates on outbound STARTTLS. Off by default:
# opportunistic TLS as on the public MX network.
EVERLOCK_SMTP_TLS_VERIFY = env.bool("EVERLOCK_SMTP_TLS_VERIFY", default=False)

# EVERLOCK_OUTBOUND_CA_FILE: a PEM file of the certificate authorities trusted when verifying
# remote hosts (MX hosts under MTA-STS or EVERLOCK_SMTP_TLS_VERIFY, MTA-STS policy servers)
# instead of the system's store; for a private network or tests.
EVERLOCK_OUTBOUND_CA_FILE = env.str("EVERLOCK_OUTBOUND_CA_FILE", default="")
# EVERLOCK_MTA_STS_PORT: the HTTPS port MTA-STS policies of remote domains are fetched from
# (443 on the internet, RFC 8461 section 3.3).
EVERLOCK_MTA_STS_PORT = env.int("EVERLOCK_MTA_STS_PORT", default=443)

# EVERLOCK_PUBLIC_ADDRESSES: the public IPv4 and IPv6 addresses of this server (e.g.
# "192.0.2.25,2001:db8::25"). When set, a mail domain in a hosted zone derives A/AAAA records
# for its mail host and for mta-sts., autoconfig. and autodiscover.<domain>; when empty those
# three names are CNAMEs of the mail host, whose addresses the administrator publishes.
EVERLOCK_PUBLIC_ADDRESSES = [
    a.strip() for a in env.list("EVERLOCK_PUBLIC_ADDRESSES", default=[]) if a.strip()
]
for _address in EVERLOCK_PUBLIC_ADDRESSES:
    try:
        ipaddress.ip_address(_address)
    except ValueError:
        raise ImproperlyConfigured(f"EVERLOCK_PUBLIC_ADDRESSES: {_address!r} is not an IP address") from None
# EVERLOCK_PUBLIC_PORTS: the ports clients reach this server on, as published in the SRV
# records (RFC 6186, RFC 8314) and the autoconfig file: "submissions=465,submission=587,
# imaps=993,imap=143" (any subset; the rest keep these defaults).
EVERLOCK_PUBLIC_PORTS: dict[str, int] = {}
for _item in env.list("EVERLOCK_PUBLIC_PORTS", default=[]):
    _service, _, _port = _item.strip().partition("=")
    if _service not in ("submissions", "submission", "imaps", "imap") or not _port.isdigit():
        raise ImproperlyConfigured(
            f"EVERLOCK_PUBLIC_PORTS: expected submissions|submission|imaps|imap=PORT, got {_item!r}"
        )
    EVERLOCK_PUBLIC_PORTS[_service] = int(_port)

# EVERLOCK_SUBMISSION_TRUSTED_NETWORKS: clients that may submit without AUTH, as addresses of
# a domain set to auth=off (submission auth "none"): programs on this host or your own network
# (comma separated CIDR networks). Mail from anyone else, and for other domains, needs AUTH.
EVERLOCK_SUBMISSION_TRUSTED_NETWORKS = env.list(
    "EVERLOCK_SUBMISSION_TRUSTED_NETWORKS", default=["127.0.0.0/8", "::1/128"]
)

# EVERLOCK_SUBMISSION_PLAINTEXT_AUTH: allow AUTH without STARTTLS from non-loopback clients.
EVERLOCK_SUBMISSION_PLAINTEXT_AUTH = env.bool("EVERLOCK_SUBMISSION_PLAINTEXT_AUTH", default=False)

# Inbound SMTP limits (RFC 5321 section 4.5.3 gives the minimums).
EVERLOCK_SMTP_MAX_MESSAGE_SIZE = env.int("EVERLOCK_SMTP_MAX_MESSAGE_SIZE", default=50 * 1024 * 1024)
EVERLOCK_SMTP_MAX_RECIPIENTS = env.int("EVERLOCK_SMTP_MAX_RECIPIENTS", default=100)
EVERLOCK_SMTP_MAX_HOPS = env.int("EVERLOCK_SMTP_MAX_HOPS", default=50)
EVERLOCK_SMTP_IDLE_TIMEOUT = env.int("EVERLOCK_SMTP_IDLE_TIMEOUT", default=300)
EVERLOCK_SMTP_SESSION_TIMEOUT = env.int("EVERLOCK_SMTP_SESSION_TIMEOUT", default=1800)
EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT = env.int("EVERLOCK_SMTP_MAX_CONNECTIONS_PER_CLIENT", default=20)
# EVERLOCK_SMTP_MAX_CONNECTIONS: open connections per SMTP listener; one more is answered
# "421 4.7.0 Too many connections, try again later" and closed. Lowered at start (with a
# warning) when the process's open file limit, raised to its hard limit, cannot hold it.
EVERLOCK_SMTP_MAX_CONNECTIONS = env.int("EVERLOCK_SMTP_MAX_CONNECTIONS", default=2000)

# EVERLOCK_MESSAGE_SYNC: how the message files of a batch are made durable before their rows
# commit. "filesystem": one syncfs(2) of the filesystem holding the data dir's messages, as
# cheap as one fsync (Linux; elsewhere "file"). "file": an fsync per file and per directory,
# for a data dir on a filesystem that other busy programs write to as well.
EVERLOCK_MESSAGE_SYNC = env.str("EVERLOCK_MESSAGE_SYNC", default="filesystem")
if EVERLOCK_MESSAGE_SYNC not in ("filesystem", "file"):
    raise ImproperlyConfigured(f'EVERLOCK_MESSAGE_SYNC is "filesystem" or "file": {EVERLOCK_MESSAGE_SYNC!r}')

# Login throttle (the policy is stated in accounts/throttle.py), shared by SMTP AUTH, the SSH
# console and the admin web login: per client address, failures in a window (seconds) before
# further attempts from that address are refused; per login, failures in the window slow each
# further check (0.25 s doubling to 4 s), and after EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN the
# login is refused from every address except its known-good ones: those it logged in from
# successfully within EVERLOCK_AUTH_KNOWN_GOOD_DAYS, where its owner is never locked out.
EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = env.int("EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS", default=10)
EVERLOCK_AUTH_FAILURE_WINDOW = env.int("EVERLOCK_AUTH_FAILURE_WINDOW", default=300)
EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN = env.int("EVERLOCK_AUTH_MAX_FAILURES_PER_LOGIN", default=30)
EVERLOCK_AUTH_KNOWN_GOOD_DAYS = env.int("EVERLOCK_AUTH_KNOWN_GOOD_DAYS", default=30)

# EVERLOCK_ADMIN_PASSWORD: the password of `everlock serve --admin-user NAME` (and of
# runadminssh) when neither --admin-password-file nor --admin-password gives one; unlike
# --admin-password it shows in no process list. Used only to create that user when missing.
EVERLOCK_ADMIN_PASSWORD = env.str("EVERLOCK_ADMIN_PASSWORD", default="")

# CELERY_BROKER_URL: the delivery workers' broker. Default: the embedded broker, a spool
# directory in the data dir that needs no server (single machine only). Production:
# redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//
_broker_dir = DATA_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    for sub in ("out", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange bindings; kombu's default is ./control, relative to the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    # Poll the spool often: a kick is delivered within this many seconds.
    CELERY_BROKER_TRANSPORT_OPTIONS["polling_interval"] = 0.1
# EVERLOCK_CELERY_QUEUE: the broker queue the delivery tasks use (one per installation when
# several share a Redis database).
CELERY_TASK_DEFAULT_QUEUE = env.str("EVERLOCK_CELERY_QUEUE", default="everlock-delivery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep Django's LOGGING (EVERLOCK_LOG) in worker processes (see also everlock_site.celery).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_REDIRECT_STDOUTS = False
# The tasks are plain kicks: no remote control or events needed (the embedded broker has
# no fanout exchanges for them).
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# EVERLOCK_QUEUE_SCAN_INTERVAL: seconds between a delivery worker's scans for due queue rows.
# Each worker process runs this timer itself (no beat needed), so a lost or purged broker
# message delays delivery by at most this long.
EVERLOCK_QUEUE_SCAN_INTERVAL = env.float("EVERLOCK_QUEUE_SCAN_INTERVAL", default=30.0)
# EVERLOCK_ORPHAN_FILE_AGE: a message file without a row (its writer was killed before the
# commit) is removed once it is this many seconds old: far longer than any transaction that
# could still commit its row (a group commit lasts seconds). EVERLOCK_ORPHAN_SWEEP_INTERVAL:
# seconds between the delivery workers' sweeps (one at each start).
EVERLOCK_ORPHAN_FILE_AGE = env.float("EVERLOCK_ORPHAN_FILE_AGE", default=86400.0)
EVERLOCK_ORPHAN_SWEEP_INTERVAL = env.float("EVERLOCK_ORPHAN_SWEEP_INTERVAL", default=3600.0)
# EVERLOCK_DKIM_ROTATION_INTERVAL: seconds between the delivery workers' steps of DKIM key
# rotations (/mail domains dkim rotate D): looking the new key records up through
# EVERLOCK_RESOLVER, switching signing to them once visible for their TTL, withdrawing the
# old ones. EVERLOCK_DKIM_ROTATION_GRACE: seconds the old key records stay published after
# the switch, so mail signed just before it still verifies when checked late.
EVERLOCK_DKIM_ROTATION_INTERVAL = env.float("EVERLOCK_DKIM_ROTATION_INTERVAL", default=300.0)
EVERLOCK_DKIM_ROTATION_GRACE = env.float("EVERLOCK_DKIM_ROTATION_GRACE", default=7 * 86400.0)
# EVERLOCK_QUEUE_FIRST_RETRY / EVERLOCK_QUEUE_MAX_RETRY: seconds before the first retry of a
# temporary failure, doubling per attempt up to the maximum (see mail/delivery/attempts.py).
# The first retry is also how long a claimed row waits when its worker dies mid-delivery.
EVERLOCK_QUEUE_FIRST_RETRY = env.float("EVERLOCK_QUEUE_FIRST_RETRY", default=300.0)
EVERLOCK_QUEUE_MAX_RETRY = env.float("EVERLOCK_QUEUE_MAX_RETRY", default=4 * 3600.0)
# EVERLOCK_QUEUE_DELAY_NOTICE: seconds after which a sender whose message still waits gets
# one delay notice (a DSN with Action: delayed); 0 sends none.
EVERLOCK_QUEUE_DELAY_NOTICE = env.float("EVERLOCK_QUEUE_DELAY_NOTICE", default=4 * 3600.0)
# EVERLOCK_DELIVERY_CONCURRENCY: delivery processes of the worker `everlock serve
# --backend-mail-smtp` starts.
EVERLOCK_DELIVERY_CONCURRENCY = env.int("EVERLOCK_DELIVERY_CONCURRENCY", default=2)
# EVERLOCK_DELIVERY_SESSIONS: SMTP sessions each delivery process runs at once with one
# destination domain (Postfix's default_destination_concurrency_limit is 20 per host).
EVERLOCK_DELIVERY_SESSIONS = env.int("EVERLOCK_DELIVERY_SESSIONS", default=8)
# EVERLOCK_CELERY_EAGER: run tasks in the calling process (tests of the services only).
CELERY_TASK_ALWAYS_EAGER = env.bool("EVERLOCK_CELERY_EAGER", default=False)

# EVERLOCK_LOG: "level" or "module=level,module=level" (RUST_LOG is read as an alias with the
# product doc's target names). EVERLOCK_LOG_FORMAT: "text" (each line begins with an ISO 8601
# timestamp) or "json" (one object per line: timestamp, level, logger, message and the
# structured fields of the line, such as client and queue_id).
LOGGING_CONFIG = "logging.config.dictConfig"
LOGGING = logging_config(
    env.str("EVERLOCK_LOG", default="") or env.str("RUST_LOG", default=""),
    env.str("EVERLOCK_LOG_FORMAT", default="text"),
)
