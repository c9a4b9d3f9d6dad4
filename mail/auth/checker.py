"""Running the checks for the inbound listener without blocking its event loop.

SPF and iprev start at MAIL FROM, in a thread pool, so their DNS waits overlap the DATA
transfer. At the end of DATA a thread fetches what DNS has for the message (the DKIM and ARC
keys, the DMARC record), then a worker process verifies the signatures and decides DMARC
(CPU work that would otherwise hold the GIL the event loop needs). The DNSBLs are asked once
per connection, before its first transaction is accepted."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from domain_names import fold
from mail.auth import checks, dmarc, results
from mail.auth.lookups import Lookups, TemporaryDNSError
from mail.auth.verdict import Verdict
from mail.message import ParsedMessage, parse_message
from mail.replies import Reply, dnsbl_listed

log = logging.getLogger("mail.auth")

# How long the list of our domains' hostnames (the authserv-ids) is kept.
HOSTNAMES_TTL = 30.0


@dataclass
class Pending:
    """The checks started at MAIL FROM for one transaction."""

    ip: str
    sender: Future  # (SPFResult, iprev)


TEMPORARY = "temporary"  # the DMARC record could not be fetched now


@dataclass(frozen=True)
class Fetched:
    """What the DNS had for a message: its signatures' keys, its From domain's DMARC record
    (None for none, TEMPORARY) and whether that came from the organizational domain."""

    keys: checks.FetchedKeys
    from_domain: str
    record: dict[str, str] | str | None
    inherited: bool


def verify(raw: bytes, fetched: Fetched, spf: checks.SPFResult):
    """The signatures' results, the ARC status and the DMARC result of `raw`, from what was
    fetched: no DNS, so a worker process runs it."""
    signatures, arc = checks.check_signatures(raw, fetched.keys)
    if not fetched.from_domain:
        policy = dmarc.DMARCResult("none", "")
    elif fetched.record == TEMPORARY:
        policy = dmarc.DMARCResult("temperror", fetched.from_domain)
    else:
        policy = dmarc.decide(
            fetched.record, fetched.inherited, from_domain=fetched.from_domain, spf=spf, dkim=signatures
        )
    return signatures, arc, policy


@dataclass(frozen=True)
class Checked:
    """What the end of DATA needs: the verdict, the header to prepend, the message with the
    outside claims to our authserv-id removed and its header fields (parsed once, for
    filing)."""

    verdict: Verdict
    header: bytes
    raw: bytes
    parsed: ParsedMessage


class InboundChecks:
    """The checks of one listener process. `hostnames` returns {mail domain: its hostname}
    (the authserv-id of mail for it, mail.services.domains.receiving_hostnames), called in
    the pool and kept HOSTNAMES_TTL seconds; `default_hostname` is the server's own."""

    def __init__(
        self,
        *,
        lookups: Lookups,
        hostnames,
        default_hostname: str,
        dnsbl_zones: tuple[str, ...] = (),
        workers: int = 16,
    ):
        self.lookups = lookups
        self.dnsbl_zones = dnsbl_zones
        self.default_hostname = fold(default_hostname)
        self._hostnames_source = hostnames
        self._hostnames: dict[str, str] = {}
        self._hostnames_at = float("-inf")
        # Threads wait on DNS; signatures are checked beside the event loop, in worker
        # processes (the threads where a process may not have any).
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mail-auth")
        self.signatures = signature_workers() or self.pool
        checks.install_spf_lookups(lookups)

    async def dnsbl_refusal(self, ip: str) -> Reply | None:
        """554 5.7.1 with the list's text when a DNSBL lists `ip`, else None."""
        if not self.dnsbl_zones:
            return None
        loop = asyncio.get_running_loop()
        listing = await loop.run_in_executor(
            self.pool, checks.check_dnsbls, self.lookups, ip, self.dnsbl_zones
        )
        if listing is None:
            return None
        log.info("SMTP: %s refused, listed by %s: %s", ip, listing.zone, listing.text)
        return dnsbl_listed(listing.text)

    def begin(self, *, ip: str, helo: str, mail_from: str) -> Pending:
        """Start SPF and iprev for a transaction (MAIL FROM; "" for the null sender)."""
        return Pending(ip=ip, sender=self.pool.submit(self._sender_checks, ip, mail_from, helo))

    def _sender_checks(self, ip: str, mail_from: str, helo: str):
        return (
            checks.check_spf(self.lookups, ip=ip, mail_from=mail_from, helo=helo),
            checks.check_iprev(self.lookups, ip),
        )

    async def finish(self, pending: Pending, raw: bytes, *, recipient_domain: str) -> Checked:
        """The verdict on message `raw` (as received, before our trace fields)."""
        spf, iprev = await asyncio.wrap_future(pending.sender)
        loop = asyncio.get_running_loop()
        hostnames = await self._current_hostnames(loop)
        fetched, parsed = await loop.run_in_executor(self.pool, self._fetch, raw)
        try:
            signatures, arc, policy = await loop.run_in_executor(self.signatures, verify, raw, fetched, spf)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the pool is no more use. New workers
            # take this message and the next ones.
            log.warning("SMTP: a signature worker process died; starting new ones")
            signature_workers.cache_clear()
            self.signatures = signature_workers() or self.pool
            signatures, arc, policy = await loop.run_in_executor(self.signatures, verify, raw, fetched, spf)
        verdict = Verdict(ip=pending.ip, spf=spf, dkim=tuple(signatures), arc=arc, dmarc=policy, iprev=iprev)
        if verdict.reply is not None:
            log.info(
                "SMTP: message from %s (header.from=%s, spf=%s, dmarc=%s p=%s) refused: %s",
                pending.ip,
                policy.domain,
                spf.result,
                policy.result,
                policy.policy,
                verdict.reply,
            )
        authserv_id = hostnames.get(recipient_domain, self.default_hostname)
        claims = frozenset({self.default_hostname, *hostnames.values()})
        kept = results.without_claims(raw, claims)
        # Read again only when an outside claim was removed (rare): the fields changed.
        parsed = parsed if kept is raw else parse_message(kept)
        return Checked(verdict, results.header(authserv_id, verdict), kept, parsed)

    def _fetch(self, raw: bytes) -> tuple[Fetched, ParsedMessage]:
        """What the DNS has for `raw`, and its header fields (read here, once)."""
        parsed = parse_message(raw)
        from_domain = parsed.author_domain()
        try:
            record, inherited = (
                dmarc.policy_record(self.lookups, from_domain) if from_domain else (None, False)
            )
        except TemporaryDNSError:
            record, inherited = TEMPORARY, False
        return Fetched(checks.fetch_keys(self.lookups, raw), from_domain, record, inherited), parsed

    async def _current_hostnames(self, loop) -> dict[str, str]:
        if time.monotonic() - self._hostnames_at > HOSTNAMES_TTL:
            self._hostnames = await loop.run_in_executor(self.pool, self._hostnames_source)
            self._hostnames_at = time.monotonic()
        return self._hostnames


@functools.cache
def signature_workers() -> ProcessPoolExecutor | None:
    """The worker processes of this process that check signatures (one per CPU, started on
    first use), or None in a daemonic process (as test and benchmark harnesses start
    servers), which may not have children."""
    if multiprocessing.current_process().daemon:
        return None
    return ProcessPoolExecutor(
        os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _exit_with_parent(parent: int) -> None:
    # A worker waits for work on a pipe it holds both ends of: it would outlive a listener
    # that was killed. It ends within a second of its parent instead.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def checks_from_settings() -> InboundChecks | None:
    """The inbound checks as the settings configure them; None when EVERLOCK_INBOUND_CHECKS
    is off."""
    from django.conf import settings

    from mail.services.domains import receiving_hostnames

    if not settings.EVERLOCK_INBOUND_CHECKS:
        return None
    return InboundChecks(
        lookups=Lookups.from_spec(settings.EVERLOCK_RESOLVER),
        hostnames=receiving_hostnames,
        default_hostname=settings.EVERLOCK_HOSTNAME,
        dnsbl_zones=tuple(fold(z.strip()) for z in settings.EVERLOCK_DNSBL_ZONES if z.strip()),
    )
