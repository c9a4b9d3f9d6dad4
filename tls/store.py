"""The certificates TLS listeners present: one store per process, chosen by SNI.

Every TLS listener (SMTP STARTTLS and implicit TLS, IMAP, HTTPS) is given the same
`ssl.SSLContext`, the store's `context`. Its `sni_callback` switches each connection to the
context of the certificate for the name the client asked for (RFC 6066 section 3): the newest
unexpired ACME certificate covering that name (or its wildcard), else the default certificate.
The default is the configured pair (EVERLOCK_TLS_CERT / EVERLOCK_TLS_KEY), else an ACME
certificate for EVERLOCK_HOSTNAME, else a self-signed pair generated once in the data dir.

Certificates are rows (tls.models.Certificate). A thread of each process looks every
EVERLOCK_TLS_RELOAD_INTERVAL seconds at the newest row id, the row count and the configured
files' modification times, and builds new contexts when one of them changed, so a renewed
certificate (issued by any process, on any machine sharing the database) or a replaced
certificate file is presented to the next connection without a restart. Open connections
keep the certificate they started with. listener_store() makes the process's store and its
thread; a listener process forked after that starts a thread of its own.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from domain_names import fold

log = logging.getLogger("tls")


def self_signed_pair(*, directory: Path, hostname: str) -> tuple[Path, Path]:
    """cert.pem and key.pem in `directory`, generated for `hostname` when missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Write to temporary names and rename: two processes starting at once both end with
    # a matching pair.
    suffix = f".{os.getpid()}.tmp"
    key_tmp, cert_tmp = key_path.with_suffix(suffix + "k"), cert_path.with_suffix(suffix + "c")
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(key_tmp, key_path)
    os.replace(cert_tmp, cert_path)
    return cert_path, key_path


def _new_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(*, cert: str, key: str, data_dir: Path, hostname: str) -> ssl.SSLContext:
    """A server SSLContext with one fixed pair: `cert`/`key`, or the self-signed pair in
    data_dir/tls/ when they are empty. Listeners use CertificateStore.context instead."""
    if not cert or not key:
        cert_path, key_path = self_signed_pair(directory=data_dir / "tls", hostname=hostname)
        cert, key = str(cert_path), str(key_path)
    context = _new_context()
    context.load_cert_chain(cert, key)
    return context


def _pem_context(chain_pem: str, key_pem: str, *, directory: Path) -> ssl.SSLContext:
    """A server context for a PEM chain and key held in memory. ssl loads pairs from files
    only: they are written to a private temporary file and removed once loaded."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, path = tempfile.mkstemp(dir=directory, prefix=".load.", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem + chain_pem)
        context = _new_context()
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


@dataclass(frozen=True)
class Presented:
    """A certificate the store presents: for /tls list and the admin."""

    names: tuple[str, ...]
    issuer: str
    not_after: datetime.datetime
    source: str  # "acme", "file" or "self-signed"
    default: bool = False


def describe_pem(pem: bytes) -> tuple[tuple[str, ...], str, datetime.datetime, datetime.datetime]:
    """(DNS names, issuer, not_before, not_after) of the first certificate in `pem`."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(issuer_cn[0].value) if issuer_cn else cert.issuer.rfc4514_string()
    return names, issuer, cert.not_valid_before_utc, cert.not_valid_after_utc


class CertificateStore:
    """The contexts of one process; see the module docstring.

    `context` never changes (listeners keep it); what it presents does, on refresh().
    """

    def __init__(self, *, cert_file: str, key_file: str, data_dir: Path, hostname: str):
        self.cert_file, self.key_file = cert_file, key_file
        self.directory = data_dir / "tls"
        self.hostname = fold(hostname)
        self._version: tuple | None = None
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._presented: list[Presented] = []
        self._default = self._default_file_context()
        self.context = _new_context()
        self.context.load_cert_chain(*self._default_files())
        self.context.sni_callback = self._choose
        self._lock = threading.Lock()
        self.interval = 0.0

    def _default_files(self) -> tuple[str, str]:
        if self.cert_file and self.key_file:
            return self.cert_file, self.key_file
        cert, key = self_signed_pair(directory=self.directory, hostname=self.hostname)
        return str(cert), str(key)

    def _default_file_context(self) -> ssl.SSLContext:
        context = _new_context()
        context.load_cert_chain(*self._default_files())
        return context

    def _choose(self, connection, server_name: str | None, _context) -> None:
        # Called by OpenSSL during the handshake, on the event loop: no I/O, one dict lookup.
        chosen = None
        if server_name:
            name = fold(server_name)
            chosen = self._by_name.get(name)
            if chosen is None and "." in name:
                chosen = self._by_name.get("*." + name.split(".", 1)[1])
        connection.context = chosen or self._by_name.get("", self._default)

    def _file_version(self) -> tuple:
        stamps = []
        for path in self._default_files():
            try:
                st = os.stat(path)
                # The inode too: a pair moved into place may keep its old modification time.
                stamps.append((st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def refresh(self, *, now: datetime.datetime | None = None) -> bool:
        """Rebuild the contexts when a certificate row or the configured files changed;
        return whether they were rebuilt. Reads the database: call it outside the event loop."""
        from django.db.models import Count, Max

        from tls.models import Certificate

        with self._lock:
            stats = Certificate.objects.aggregate(newest=Max("id"), count=Count("id"))
            version = (stats["newest"], stats["count"], self._file_version())
            if version == self._version:
                return False
            now = now or datetime.datetime.now(datetime.UTC)
            by_name: dict[str, ssl.SSLContext] = {}
            presented: list[Presented] = []
            for cert in Certificate.objects.filter(not_after__gt=now).order_by("-id"):
                fresh = [n for n in cert.names if n not in by_name]
                if not fresh:
                    continue
                try:
                    context = _pem_context(cert.chain_pem, cert.key_pem, directory=self.directory)
                except (ssl.SSLError, ValueError) as exc:
                    log.error("certificate #%s for %s cannot be loaded: %s", cert.id, cert, exc)
                    continue
                for name in fresh:
                    by_name[name] = context
                presented.append(Presented(tuple(cert.names), cert.issuer, cert.not_after, "acme"))
            default_files = self._default_files()
            names, issuer, _, not_after = describe_pem(Path(default_files[0]).read_bytes())
            configured = bool(self.cert_file and self.key_file)
            if configured:
                # A replaced file is read again; a broken one keeps the previous pair.
                try:
                    self._default = self._default_file_context()
                except (ssl.SSLError, OSError) as exc:
                    log.error("EVERLOCK_TLS_CERT / EVERLOCK_TLS_KEY cannot be loaded: %s", exc)
            elif self.hostname in by_name:
                # No configured pair: clients without SNI get the ACME certificate of the
                # server's own name rather than the self-signed one.
                by_name[""] = by_name[self.hostname]
            source = "file" if configured else "self-signed"
            presented.append(Presented(names, issuer, not_after, source, default="" not in by_name))
            self._by_name, self._presented, self._version = by_name, presented, version
        log.info("TLS certificates loaded: %d from ACME", len(presented) - 1)
        return True

    def presented(self) -> list[Presented]:
        return list(self._presented)

    def watch(self, interval: float, *, wait: bool = True) -> threading.Thread:
        """Start a daemon thread that calls refresh() now and every `interval` seconds; with
        `wait`, the first refresh is done when this returns."""
        first = threading.Event()
        self.interval = interval

        def run() -> None:
            from django.db import connections

            while True:
                try:
                    self.refresh()
                except Exception as exc:  # the database is away: keep what we have
                    log.warning("TLS certificate reload failed: %s", exc)
                finally:
                    # One short connection per look: none stays open between them.
                    connections.close_all()
                    first.set()
                time.sleep(interval)

        thread = threading.Thread(target=run, name="everlock-tls-reload", daemon=True)
        thread.start()
        if wait:
            first.wait(30)
        return thread


_store: CertificateStore | None = None
_store_lock = threading.Lock()


def _watch_in_child() -> None:
    # Threads do not survive fork(): a listener process forked after the store was made
    # keeps its contexts and needs a watcher of its own.
    global _store_lock
    _store_lock = threading.Lock()
    if _store is not None:
        _store._lock = threading.Lock()  # a refresh running at the fork never ends here
        _store.watch(_store.interval, wait=False)


os.register_at_fork(after_in_child=_watch_in_child)


def listener_store() -> CertificateStore:
    """This process's store, created from the settings and watched on first use."""
    global _store
    from django.conf import settings

    with _store_lock:
        if _store is None:
            _store = CertificateStore(
                cert_file=settings.EVERLOCK_TLS_CERT,
                key_file=settings.EVERLOCK_TLS_KEY,
                data_dir=Path(settings.DATA_DIR),
                hostname=settings.EVERLOCK_HOSTNAME,
            )
            _store.watch(settings.EVERLOCK_TLS_RELOAD_INTERVAL)
        return _store
