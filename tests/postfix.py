"""A private Postfix instance on loopback for interoperability tests and benchmarks.

Debian's postfix, run with a configuration directory of its own (`postfix -c DIR`): its own
queue, data and log directories under `base`, one smtpd on 127.0.0.1:`port`, so it runs
beside a system installation without touching it. It delivers the virtual domain
`example.net` (or `virtual_domain`) into one Maildir (`maildir`) and relays what `transport` names (domain ->
"[127.0.0.1]:port"). `debug_peer_list` makes it log every SMTP command and reply it sends or
receives for loopback peers: the transcript the tests read (`log()`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

POSTFIX = "/usr/sbin/postfix"
# The uid and gid the virtual delivery agent writes the Maildir as (any unprivileged ids).
VMAIL_ID = 5000

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.example.net
mydomain = example.net
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {relay_domains}
transport_maps = {transport_maps}
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {virtual_domain}
virtual_mailbox_base = {base}/vmail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:{vmail}
virtual_gid_maps = static:{vmail}
virtual_minimum_uid = 100
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtp_tls_security_level = may
smtp_tls_loglevel = 1
# Lines longer than 998 go out as they came (by default the client folds them).
smtp_line_length_limit = 0
debug_peer_list = 127.0.0.1
debug_peer_level = 2
smtp_host_lookup = native
smtp_dns_support_level = disabled
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


@dataclass
class Postfix:
    base: Path
    port: int

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    @property
    def maildir(self) -> Path:
        return self.base / "vmail" / "box"

    @property
    def master_pid(self) -> int:
        """The process id of the instance's master daemon (its children are the smtpd,
        cleanup, qmgr and delivery processes)."""
        return int((self.base / "spool" / "pid" / "master.pid").read_text().strip())

    def log(self) -> str:
        path = self.base / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self) -> list[bytes]:
        """The messages delivered into the Maildir, oldest first."""
        new = self.maildir / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime)]

    def wait_for(self, predicate, *, timeout: float = 30, what: str = "") -> None:
        """Poll `predicate()` until true; AssertionError with the log's tail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix: no {what} after {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.1)


def available() -> bool:
    return Path(POSTFIX).exists() and os.geteuid() == 0


@contextlib.contextmanager
def running_postfix(
    *,
    cert: Path,
    key: Path,
    transport: dict[str, str] | None = None,
    port: int | None = None,
    virtual_domain: str = "example.net",
    settings: dict[str, str] | None = None,
    prepare=None,
    chroot: bool = False,
) -> Iterator[Postfix]:
    """Start a private Postfix in a new directory and stop it (and remove the directory)
    when the block ends. The directory is under the system's temporary directory and open
    to other users: Postfix's daemons and the delivery agent run as other users.

    `settings` are main.cf lines added at the end ("{base}" in a value is the instance's
    directory); `prepare(base)` runs before Postfix starts (SASL databases and the like);
    with `chroot` the smtpd runs chrooted into the queue directory (`base`/spool).
    """
    transport = transport or {}
    port = port or free_port()
    base = Path(tempfile.mkdtemp(prefix="everlock-postfix-"))
    base.chmod(0o755)
    etc = base / "etc"
    for sub in ("etc", "spool", "data", "vmail"):
        (base / sub).mkdir()
    os.chown(base / "vmail", VMAIL_ID, VMAIL_ID)
    entries = ", ".join(f"{domain}=smtp:{target}" for domain, target in transport.items())
    (etc / "main.cf").write_text(
        MAIN_CF.format(
            base=base,
            vmail=VMAIL_ID,
            cert=cert,
            key=key,
            relay_domains=", ".join(transport),
            transport_maps=f"inline:{{{entries}}}" if entries else "",
            virtual_domain=virtual_domain,
        )
        + "".join(f"{name} = {value.format(base=base)}\n" for name, value in (settings or {}).items())
    )
    if prepare is not None:
        prepare(base)
    master = (Path(__file__).parent / "postfix-master.cf").read_text()
    (etc / "master.cf").write_text(f"127.0.0.1:{port} inet n - {'y' if chroot else 'n'} - - smtpd\n" + master)
    instance = Postfix(base=base, port=port)
    subprocess.run([POSTFIX, "-c", str(etc), "set-permissions"], check=True, capture_output=True)
    subprocess.run([POSTFIX, "-c", str(etc), "start"], check=True, capture_output=True)
    try:
        instance.wait_for(lambda: _listening(port), timeout=30, what="listener")
        yield instance
    finally:
        subprocess.run([POSTFIX, "-c", str(etc), "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
