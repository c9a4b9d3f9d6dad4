"""The per-domain config file everlock-mail/domains/<domain>.toml: export and import.

The database is the source of truth; the file mirrors each mail domain after every change,
for inspection and editing. An edited file is read back explicitly (`manage.py mailconfig
import`, `/mail domains import D`). The schema is the product doc's:

    enabled = true

    [submission]
    enabled = true
    auth = "authenticated"          # or "none"

    [outbound]
    hostname = "mail.example.com"   # omitted: mail.<domain>

    [outbound.dkim]
    enabled = true
    selector = "default"            # Ed25519 key (RFC 8463)
    private_key_pem = \"\"\"...\"\"\"       # omitted: no Ed25519 key
    rsa_selector = "default-rsa"
    rsa_private_key_pem = \"\"\"...\"\"\"   # omitted: no RSA key

    [outbound.dkim.rotation]        # only while a key rotation is in progress
    state = "publishing"            # new keys published; "retiring": old keys still published
    selector = "20261201"           # publishing: the new keys; retiring: the old ones
    private_key_pem = \"\"\"...\"\"\"
    rsa_selector = "20261201-rsa"
    rsa_private_key_pem = \"\"\"...\"\"\"
    ttl = 3600                      # how long the new records must be visible before signing moves
    started = 2026-12-01T05:00:00Z
    visible_since = 2026-12-01T05:05:00Z   # when the resolver first returned all new records
    switched = 2026-12-01T06:05:00Z        # when signing moved to the new keys

    [dns]                           # omitted: all defaults
    dmarc = "quarantine"            # or "none", "reject": the published DMARC policy
    reports = "postmaster@example.com"   # omitted: postmaster@<domain>
    mta_sts = "testing"             # or "enforce", "none": the MTA-STS policy served

The files hold private keys, so they are written with mode 0600 in a 0700 directory, and
atomically (a temporary file renamed over the old one), so a reader never sees half a file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import tomli_w

from domain_names import DomainNameError, normalize_host
from everlock_site.files import write_private_file
from mail.addresses import AddressError, is_valid_local_part, parse_address
from mail.dkim.keys import DKIMKeyError, check_ed25519_pem, check_rsa_pem, check_selector

SUBDIR = Path("everlock-mail") / "domains"
SUBMISSION_AUTH = ("authenticated", "none")
DMARC_POLICIES = ("none", "quarantine", "reject")
MTA_STS_MODES = ("enforce", "testing", "none")
DEFAULT_DMARC = "quarantine"
DEFAULT_MTA_STS = "testing"


class ConfigFileError(ValueError):
    """A domain file that does not parse or validate; the message names the field or line."""


ROTATION_STATES = ("publishing", "retiring")


@dataclass(frozen=True)
class RotationConfig:
    """A DKIM key rotation in progress; field meanings as on DkimRotation."""

    state: str
    selector: str
    private_key_pem: str
    rsa_selector: str
    rsa_private_key_pem: str
    ttl: int
    started_at: datetime
    visible_since: datetime | None = None
    switched_at: datetime | None = None

    @classmethod
    def of(cls, domain) -> RotationConfig | None:
        """The rotation of a MailDomain (its `dkim_rotation`), or None."""
        rotation = getattr(domain, "dkim_rotation", None) if getattr(domain, "pk", None) else None
        if rotation is None:
            return None
        return cls(**{f: getattr(rotation, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DomainConfig:
    """A mail domain as the file describes it; field meanings as on MailDomain."""

    name: str
    enabled: bool = True
    submission_enabled: bool = False
    submission_auth: str = "authenticated"
    outbound_hostname: str = ""
    postmaster: str = ""
    dmarc_policy: str = DEFAULT_DMARC
    report_address: str = ""
    mta_sts_mode: str = DEFAULT_MTA_STS
    dkim_enabled: bool = False
    dkim_selector: str = "default"
    dkim_private_key_pem: str = ""
    dkim_rsa_selector: str = "default-rsa"
    dkim_rsa_private_key_pem: str = ""
    dkim_rotation: RotationConfig | None = None

    @classmethod
    def from_domain(cls, domain) -> DomainConfig:
        """The config of a MailDomain (or anything with its attributes)."""
        fields = {f: getattr(domain, f) for f in cls.__dataclass_fields__ if f != "dkim_rotation"}
        return cls(**fields, dkim_rotation=RotationConfig.of(domain))


def domains_dir(data_dir: Path) -> Path:
    return Path(data_dir) / SUBDIR


def domain_path(data_dir: Path, name: str) -> Path:
    return domains_dir(data_dir) / f"{name}.toml"


def render(config: DomainConfig, *, private_keys: bool = True) -> str:
    """The TOML text for `config`; without the private key fields when `private_keys` is false."""
    outbound: dict = {}
    if config.outbound_hostname:
        outbound["hostname"] = config.outbound_hostname
    dkim: dict = {"enabled": config.dkim_enabled, "selector": config.dkim_selector}
    if private_keys and config.dkim_private_key_pem:
        dkim["private_key_pem"] = _pem_text(config.dkim_private_key_pem)
    dkim["rsa_selector"] = config.dkim_rsa_selector
    if private_keys and config.dkim_rsa_private_key_pem:
        dkim["rsa_private_key_pem"] = _pem_text(config.dkim_rsa_private_key_pem)
    rotation = config.dkim_rotation
    if rotation is not None:
        table: dict = {"state": rotation.state, "selector": rotation.selector}
        if private_keys:
            table["private_key_pem"] = _pem_text(rotation.private_key_pem)
        table["rsa_selector"] = rotation.rsa_selector
        if private_keys:
            table["rsa_private_key_pem"] = _pem_text(rotation.rsa_private_key_pem)
        table["ttl"] = rotation.ttl
        table["started"] = rotation.started_at
        if rotation.visible_since is not None:
            table["visible_since"] = rotation.visible_since
        if rotation.switched_at is not None:
            table["switched"] = rotation.switched_at
        dkim["rotation"] = table
    outbound["dkim"] = dkim
    doc: dict = {"enabled": config.enabled}
    if config.postmaster:
        doc["postmaster"] = config.postmaster
    doc |= {
        "submission": {"enabled": config.submission_enabled, "auth": config.submission_auth},
        "outbound": outbound,
    }
    dns: dict = {}
    if config.dmarc_policy != DEFAULT_DMARC:
        dns["dmarc"] = config.dmarc_policy
    if config.report_address:
        dns["reports"] = config.report_address
    if config.mta_sts_mode != DEFAULT_MTA_STS:
        dns["mta_sts"] = config.mta_sts_mode
    if dns:
        doc["dns"] = dns
    return tomli_w.dumps(doc, multiline_strings=True)


def _pem_text(pem: str) -> str:
    # As in the doc's example: the PEM starts on the line after the opening quotes (tomli_w
    # breaks the line there) and the closing quotes stand on their own line.
    return pem.strip() + "\n"


def write(data_dir: Path, config: DomainConfig) -> Path:
    """Write `config` to its file atomically with mode 0600; return the path."""
    directory = domains_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{config.name}.toml"
    write_private_file(path, render(config).encode("utf-8"))
    return path


def remove(data_dir: Path, name: str) -> bool:
    """Remove the file of domain `name`; return whether there was one."""
    try:
        domain_path(data_dir, name).unlink()
    except FileNotFoundError:
        return False
    return True


def read(path: Path, *, name: str | None = None) -> DomainConfig:
    """Parse and validate the domain file at `path`; the domain is the file's stem.

    Raises ConfigFileError naming the file and the line (syntax) or field (content) at fault.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except (OSError, UnicodeError) as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    try:
        return parse(text, name=name or path.stem)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None


def parse(text: str, *, name: str) -> DomainConfig:
    """Parse and validate domain file text for domain `name`. Raises ConfigFileError."""
    try:
        name = normalize_host(name)
    except DomainNameError as exc:
        raise ConfigFileError(f"file name: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries the position: "... (at line 7, column 3)".
        raise ConfigFileError(f"not valid TOML: {exc}") from None

    reader = _Reader(doc)
    enabled = reader.boolean("enabled", default=True)
    postmaster = reader.string("postmaster", default="")
    if postmaster and not is_valid_local_part(postmaster):
        raise ConfigFileError(f"postmaster: invalid local part {postmaster!r}")
    submission = reader.table("submission")
    outbound = reader.table("outbound")
    dns_doc = reader.table("dns")
    reader.done()

    dn = _Reader(dns_doc, "dns.")
    dmarc = dn.string("dmarc", default=DEFAULT_DMARC)
    reports = dn.string("reports", default="")
    mta_sts = dn.string("mta_sts", default=DEFAULT_MTA_STS)
    dn.done()
    for field, value, allowed in (("dmarc", dmarc, DMARC_POLICIES), ("mta_sts", mta_sts, MTA_STS_MODES)):
        if value not in allowed:
            raise ConfigFileError(f"dns.{field}: must be one of {', '.join(map(repr, allowed))}")
    if reports:
        try:
            reports = str(parse_address(reports))
        except AddressError as exc:
            raise ConfigFileError(f"dns.reports: {exc}") from None

    sub = _Reader(submission, "submission.")
    submission_enabled = sub.boolean("enabled", default=False)
    auth = sub.string("auth", default="authenticated")
    if auth not in SUBMISSION_AUTH:
        raise ConfigFileError(f"submission.auth: must be one of {', '.join(map(repr, SUBMISSION_AUTH))}")
    sub.done()

    out = _Reader(outbound, "outbound.")
    hostname = out.string("hostname", default="")
    if hostname:
        try:
            hostname = normalize_host(hostname)
        except DomainNameError as exc:
            raise ConfigFileError(f"outbound.hostname: {exc}") from None
    dkim_doc = out.table("dkim")
    out.done()

    dk = _Reader(dkim_doc, "outbound.dkim.")
    dkim_enabled = dk.boolean("enabled", default=False)
    selector = dk.selector("selector", default="default")
    pem = dk.string("private_key_pem", default="").strip()
    rsa_selector = dk.selector("rsa_selector", default="default-rsa")
    rsa_pem = dk.string("rsa_private_key_pem", default="").strip()
    rotation_doc = dk.table("rotation")
    dk.done()
    rotation = _parse_rotation(rotation_doc) if rotation_doc else None
    for field, value, check in (
        ("private_key_pem", pem, check_ed25519_pem),
        ("rsa_private_key_pem", rsa_pem, check_rsa_pem),
    ):
        if value:
            try:
                check(value)
            except DKIMKeyError as exc:
                raise ConfigFileError(f"outbound.dkim.{field}: {exc}") from None
    if selector == rsa_selector:
        raise ConfigFileError("outbound.dkim.rsa_selector: must differ from selector")
    if dkim_enabled and not (pem or rsa_pem):
        raise ConfigFileError(
            "outbound.dkim.enabled: signing needs private_key_pem or rsa_private_key_pem "
            "(or use /mail domains set D dkim=on, which generates the keys)"
        )
    return DomainConfig(
        name=name,
        enabled=enabled,
        submission_enabled=submission_enabled,
        submission_auth=auth,
        outbound_hostname=hostname,
        postmaster=postmaster.casefold(),
        dmarc_policy=dmarc,
        report_address=reports,
        mta_sts_mode=mta_sts,
        dkim_enabled=dkim_enabled,
        dkim_selector=selector,
        dkim_private_key_pem=pem + "\n" if pem else "",
        dkim_rsa_selector=rsa_selector,
        dkim_rsa_private_key_pem=rsa_pem + "\n" if rsa_pem else "",
        dkim_rotation=rotation,
    )


def _parse_rotation(doc: dict) -> RotationConfig:
    prefix = "outbound.dkim.rotation."
    reader = _Reader(doc, prefix)
    state = reader.string("state", default="")
    if state not in ROTATION_STATES:
        raise ConfigFileError(f"{prefix}state: must be one of {', '.join(map(repr, ROTATION_STATES))}")
    selector = reader.selector("selector", default="")
    pem = reader.string("private_key_pem", default="").strip()
    rsa_selector = reader.selector("rsa_selector", default="")
    rsa_pem = reader.string("rsa_private_key_pem", default="").strip()
    ttl = reader.integer("ttl", default=3600)
    started = reader.moment("started", default=None)
    visible_since = reader.moment("visible_since", default=None)
    switched = reader.moment("switched", default=None)
    reader.done()
    for field, value, check in (
        ("private_key_pem", pem, check_ed25519_pem),
        ("rsa_private_key_pem", rsa_pem, check_rsa_pem),
    ):
        try:
            check(value)
        except DKIMKeyError as exc:
            raise ConfigFileError(f"{prefix}{field}: {exc}") from None
    if started is None:
        raise ConfigFileError(f"{prefix}started: missing")
    if state == "retiring" and switched is None:
        raise ConfigFileError(f"{prefix}switched: a retiring rotation has switched")
    return RotationConfig(
        state=state,
        selector=selector,
        private_key_pem=pem + "\n",
        rsa_selector=rsa_selector,
        rsa_private_key_pem=rsa_pem + "\n",
        ttl=ttl,
        started_at=started,
        visible_since=visible_since,
        switched_at=switched,
    )


class _Reader:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, table: dict, prefix: str = ""):
        self.data = table
        self.prefix = prefix
        self.seen: set[str] = set()

    def _get(self, key: str, kind: type, kind_name: str, default):
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigFileError(f"{self.prefix}{key}: must be {kind_name}")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        return self._get(key, bool, "true or false", default)

    def string(self, key: str, *, default: str) -> str:
        return self._get(key, str, "a string", default)

    def integer(self, key: str, *, default: int) -> int:
        value = self._get(key, int, "a whole number", default)
        if value < 0:
            raise ConfigFileError(f"{self.prefix}{key}: must not be negative")
        return value

    def moment(self, key: str, *, default: datetime | None) -> datetime | None:
        value = self._get(key, datetime, "a date and time with its offset (2026-12-01T05:00:00Z)", default)
        if value is not None and value.tzinfo is None:
            raise ConfigFileError(f"{self.prefix}{key}: needs its UTC offset (Z or +HH:MM)")
        return value

    def table(self, key: str) -> dict:
        return self._get(key, dict, "a table", {})

    def selector(self, key: str, *, default: str) -> str:
        value = self.string(key, default=default)
        try:
            return check_selector(value)
        except DKIMKeyError as exc:
            raise ConfigFileError(f"{self.prefix}{key}: {exc}") from None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigFileError(f"{self.prefix}{unknown[0]}: unknown setting")
