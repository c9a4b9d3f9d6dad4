"""SMTP sessions with one destination domain's MX hosts, each reused for message after
message (as Postfix's connection cache does), several of them running at once.

A Session touches no database, so the batch (mail.delivery.batch) can run several in
threads while its own thread records their outcomes: what a session learns that must be
recorded (the TLS result of each dial, RFC 8460) travels back with each message's outcome.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from mail.delivery.attempts import Claim, Reply
from mail.delivery.client import ConnectFailed, Connection, SendOptions, TLSFailed
from mail.delivery.mta_sts import Lookup, Policy, PolicyFetcher, policy_for
from mail.delivery.mx import Host
from mail.services.dsn import wants
from mail.services.storage import message_storage

log = logging.getLogger("mail.delivery")


@dataclass(frozen=True)
class Remote:
    """Where and how to dial: the injected outside world."""

    resolver: object
    port: int
    tls_verify: bool
    timeout: float = 60.0
    # Local addresses to connect from, at most one per address family; () lets the system choose.
    source_addresses: tuple[str, ...] = ()
    # The CA file remote certificates are verified against ("": the system's store).
    ca_file: str = ""
    # Where MTA-STS policies come from (RFC 8461); None: no policy is looked for.
    mta_sts: PolicyFetcher | None = None
    # SMTP sessions a batch runs at once with one destination domain.
    sessions: int = 1

    def policy(self, domain: str) -> Lookup:
        """The MTA-STS policy in force for `domain` (mail.delivery.mta_sts.policy_for)."""
        if self.mta_sts is None:
            return Lookup(None)
        return policy_for(domain, resolver=self.resolver, fetcher=self.mta_sts)

    def source_for(self, address: str) -> str | None:
        """The configured local address of `address`'s family, or None."""
        family = ipaddress.ip_address(address).version
        return next((a for a in self.source_addresses if ipaddress.ip_address(a).version == family), None)


def read_message(claim: Claim) -> bytes:
    """The stored message of a claimed row."""
    with message_storage().open(claim.storage_name, "rb") as fh:
        return fh.read()


@dataclass
class Sent:
    """What a session made of one claimed row: a reply per recipient (none when no host
    took a session: then `error` says why), the host that gave them (`mta`), and the TLS
    results of the dials made meanwhile, as keyword arguments of mta_sts.record_result."""

    claim: Claim
    replies: dict[int, Reply] = field(default_factory=dict)
    mta: str = ""
    error: str = ""
    tls_results: list[dict] = field(default_factory=list)


class Session:
    """SMTP with `domain`'s `hosts` (preference order) under its MTA-STS `policy` (None: no
    policy in force): send() delivers one claimed row at a time over a connection kept open
    for the next one. A host that breaks a new session is left for the next one. One thread
    at a time may use a session."""

    def __init__(self, domain: str, hosts: list[Host], policy: Policy | None, remote: Remote):
        self.domain = domain
        self.hosts = hosts
        self.policy = policy
        self.remote = remote
        self.conn: Connection | None = None
        # The connection has carried a transaction: when it breaks, the host may only have
        # closed it meanwhile (an idle timeout), so it is dialled again before the next one.
        self.reused = False
        self.index = 0
        self.tls_results: list[dict] = []

    def _result(self, **kwargs) -> None:
        self.tls_results.append(dict(domain=self.domain, policy=self.policy, **kwargs))

    def _dial(self, host: Host, address: str, helo_hostname: str) -> Connection:
        """A session with `host` at `address`, its TLS outcome noted. A host the policy names
        is held to verified TLS; in enforce mode a failure there raises TLSFailed, in testing
        mode it is logged and the host is dialled again as without a policy (RFC 8461
        section 5). Raises ConnectFailed when the host takes no session."""
        policy, remote = self.policy, self.remote
        common = dict(
            host=host.name,
            address=address,
            port=remote.port,
            helo_hostname=helo_hostname,
            timeout=remote.timeout,
            source_address=remote.source_for(address),
            ca_file=remote.ca_file,
        )
        if policy is not None and policy.matches(host.name):
            try:
                conn = Connection(**common, tls_verify=True, require_tls=True)
            except TLSFailed as exc:
                self._result(mx_host=host.name, result=exc.result)
                if policy.mode == "enforce":
                    raise
                log.warning("MTA-STS policy of %s (testing) not met, delivering anyway: %s", self.domain, exc)
            else:
                self._result(mx_host=host.name, result="success")
                return conn
        elif policy is not None:
            # Only in testing mode: enforce mode never dials a host its policy does not name.
            self._result(mx_host=host.name, result="validation-failure")
            log.warning(
                "MTA-STS policy of %s (testing) does not name MX host %s, delivering anyway",
                self.domain,
                host.name,
            )
        conn = Connection(**common, tls_verify=remote.tls_verify)
        self._result(mx_host=host.name, result="success" if conn.tls else "starttls-not-supported")
        return conn

    def _connect(self, claim: Claim) -> str:
        """Open a connection with the first host from self.index that takes one; the last
        error when none does (self.index then points past the last host)."""
        error = ""
        for index in range(self.index, len(self.hosts)):
            host = self.hosts[index]
            for address in host.addresses:
                try:
                    self.conn = self._dial(host, address, claim.helo_hostname)
                    self.index = index
                    return ""
                except ConnectFailed as exc:
                    error = str(exc)
                    log.info(
                        "connect to %s failed: %s",
                        host.name,
                        exc,
                        extra={
                            "queue_id": claim.id,
                            "domain": claim.domain,
                            "mx": host.name,
                            "address": address,
                        },
                    )
        self.index = len(self.hosts)
        return error

    def send(self, claim: Claim) -> Sent:
        """Deliver `claim` over the open connection, else the first host that takes one,
        moving on to the next host when a session breaks. Raises only for failures of our
        own (the row stays claimed)."""
        data = read_message(claim)
        sent = Sent(claim)
        while self.index < len(self.hosts):
            if self.conn is None:
                sent.error = self._connect(claim)
                if self.conn is None:
                    break
            try:
                sent.replies = self._send_one(claim, data)
                sent.mta = self.conn.host
                sent.error = ""
                self.reused = True
                break
            except ConnectFailed as exc:
                sent.error = str(exc)
                log.info(
                    "session with %s broke: %s",
                    self.conn.host,
                    exc,
                    extra={
                        "queue_id": claim.id,
                        "domain": claim.domain,
                        "mx": self.conn.host,
                        "address": self.conn.address,
                    },
                )
                self.conn = None
                if not self.reused:
                    self.index += 1
                self.reused = False
        sent.tls_results, self.tls_results = self.tls_results, []
        return sent

    def _send_one(self, claim: Claim, data: bytes) -> dict[int, Reply]:
        conn = self.conn
        ids = {address: rid for rid, address in claim.recipients}
        answers = conn.send(
            envelope_from=claim.envelope_from,
            recipients=[a for _, a in claim.recipients],
            data=data,
            options=_send_options(claim),
        )
        replies = {ids[a]: Reply(code, text) for a, (code, text) in answers.items()}
        if not conn.offers_dsn:
            # RFC 3461 section 4.1: a host without DSN reports nothing; we say "relayed".
            claim.relayed.extend(
                rid
                for rid, reply in replies.items()
                if reply.code < 300 and wants(claim.notify.get(rid, ""), "SUCCESS")
            )
        for rid, reply in replies.items():
            if reply.code >= 400:
                log.info(
                    "%s [%s] replied to %s: %s",
                    conn.host,
                    conn.address,
                    dict(claim.recipients)[rid],
                    reply.line,
                    extra={
                        "queue_id": claim.id,
                        "domain": claim.domain,
                        "mx": conn.host,
                        "address": conn.address,
                    },
                )
        return replies

    def close(self) -> None:
        """QUIT the open connection, if any."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _send_options(claim: Claim) -> SendOptions:
    addresses = dict(claim.recipients)
    return SendOptions(
        ret=claim.dsn_ret,
        envid=claim.dsn_envid,
        requiretls=claim.requiretls,
        binarymime=claim.binarymime,
        notify={addresses[rid]: value for rid, value in claim.notify.items() if rid in addresses},
        orcpt={addresses[rid]: value for rid, value in claim.orcpt.items() if rid in addresses},
    )
