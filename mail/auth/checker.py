"""Running the checks for the inbound listener without blocking its event loop on DNS.

A check whose answers are all in the DNS cache (mail.auth.lookups) runs on the event loop,
at once; one that would wait on the network runs in a thread of the pool, where waiting is
harmless. SPF and iprev start at MAIL FROM, so the waits they may have overlap the DATA
transfer; at the end of DATA what the DNS has for the message (its signatures' keys, the
DMARC record) is fetched the same way, then the signatures are verified and DMARC decided.

Verifying is CPU work (dkimpy canonicalises, hashes and checks RSA in Python): it runs on the
event loop too, for a message up to INLINE_VERIFY_LIMIT bytes, since the listener processes
already are one per core (everlock_site.supervisor). Handing it elsewhere costs more than it
saves: measured with bench/inbound_auth.py, the checks cost about 4 ms of CPU a message over
the checks-off path with a pool of worker processes per listener verifying, and about 2 ms
this way (docs/inbound-checks.md). A larger message is verified in a pool thread, so that
its canonicalisation does not hold up the other sessions for long.

The DNSBLs are asked once per connection, before its greeting."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dkim

from domain_names import fold
from mail.auth import checks, dmarc, results
from mail.auth.lookups import Lookups, NotCached, TemporaryDNSError
from mail.auth.verdict import Verdict
from mail.message import ParsedMessage, parse_message
from mail.replies import Reply, dnsbl_listed

log = logging.getLogger("mail.auth")

# How long the list of our domains' hostnames (the authserv-ids) is kept.
HOSTNAMES_TTL = 30.0
# Messages up to this size are verified on the event loop (about a millisecond for two
# signatures of a small message); larger ones in a thread.
INLINE_VERIFY_LIMIT = 256 * 1024


@dataclass
class Pending:
    """The checks started at MAIL FROM for one transaction."""

    ip: str
    sender: Future  # (SPFResult, iprev)


TEMPORARY = "temporary"  # the DMARC record could not be fetched now


@dataclass(frozen=True)
class Fetched:
    """What the DNS had for a message: its signatures' keys, its From domain's DMARC record
    (None for none, TEMPORARY) and whether that came from the organizational domain; with
    the message as dkimpy parsed it."""

    message: dkim.DKIM
    keys: checks.FetchedKeys
    from_domain: str
    record: dict[str, str] | str | None
    inherited: bool


def verify(raw: bytes, fetched: Fetched, spf: checks.SPFResult):
    """The signatures' results, the ARC status and the DMARC result of `raw`, from what was
    fetched: no DNS."""
    signatures, arc = checks.check_signatures(raw, fetched.keys, parsed=fetched.message)
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
        # The threads wait on DNS (and verify the signatures of large messages).
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mail-auth")
        checks.install_spf_lookups(lookups)

    async def _run(self, check, *args):
        """check(*args) here when the DNS cache has every answer it needs, else in the pool."""
        try:
            return self.lookups.from_cache(check, *args)
        except NotCached:
            return await asyncio.get_running_loop().run_in_executor(self.pool, check, *args)

    async def dnsbl_refusal(self, ip: str) -> Reply | None:
        """554 5.7.1 with the list's text when a DNSBL lists `ip`, else None."""
        if not self.dnsbl_zones:
            return None
        listing = await self._run(checks.check_dnsbls, self.lookups, ip, self.dnsbl_zones)
        if listing is None:
            return None
        log.info("SMTP: %s refused, listed by %s: %s", ip, listing.zone, listing.text)
        return dnsbl_listed(listing.text)

    def begin(self, *, ip: str, helo: str, mail_from: str) -> Pending:
        """Start SPF and iprev for a transaction (MAIL FROM; "" for the null sender)."""
        try:
            done: Future = Future()
            done.set_result(self.lookups.from_cache(self._sender_checks, ip, mail_from, helo))
            return Pending(ip=ip, sender=done)
        except NotCached:
            return Pending(ip=ip, sender=self.pool.submit(self._sender_checks, ip, mail_from, helo))

    def _sender_checks(self, ip: str, mail_from: str, helo: str):
        return (
            checks.check_spf(self.lookups, ip=ip, mail_from=mail_from, helo=helo),
            checks.check_iprev(self.lookups, ip),
        )

    async def finish(self, pending: Pending, raw: bytes, *, recipient_domain: str) -> Checked:
        """The verdict on message `raw` (as received, before our trace fields)."""
        sender = pending.sender
        spf, iprev = sender.result() if sender.done() else await asyncio.wrap_future(sender)
        loop = asyncio.get_running_loop()
        hostnames = await self._current_hostnames(loop)
        fetched, parsed = await self._run(self._fetch, raw)
        if len(raw) <= INLINE_VERIFY_LIMIT:
            signatures, arc, policy = verify(raw, fetched, spf)
        else:
            signatures, arc, policy = await loop.run_in_executor(self.pool, verify, raw, fetched, spf)
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
        message = dkim.DKIM(raw)
        try:
            record, inherited = (
                dmarc.policy_record(self.lookups, from_domain) if from_domain else (None, False)
            )
        except TemporaryDNSError:
            record, inherited = TEMPORARY, False
        return (
            Fetched(
                message, checks.fetch_keys(self.lookups, message.headers), from_domain, record, inherited
            ),
            parsed,
        )

    async def _current_hostnames(self, loop) -> dict[str, str]:
        if time.monotonic() - self._hostnames_at > HOSTNAMES_TTL:
            self._hostnames = await loop.run_in_executor(self.pool, self._hostnames_source)
            self._hostnames_at = time.monotonic()
        return self._hostnames


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
