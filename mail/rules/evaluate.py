"""Evaluate compiled rules against one recipient's message facts. Pure: no Django.

The outside state (when this sender last got a vacation reply, how many redirects a sender
caused lately) is asked of a Gate, so the database stays out of this module and a dry run
can answer without recording anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mail.message import decode_words
from mail.rules import vacation as vacation_mod
from mail.rules.language import Condition, Rule, RuleSet
from mail.rules.plan import DeliveryPlan, Filing, MessageFacts, OutgoingMessage, Rejection

LOOP_HEADER = "X-Everlock-Redirected"


class Gate(Protocol):
    def vacation_due(self, *, recipient: str, sender: str, days: int) -> bool:
        """True when `sender` got no auto-reply from `recipient` in the last `days`; records one."""

    def redirects_allowed(self, *, sender: str, count: int, per_hour: int) -> bool:
        """True when `sender` may cause `count` more redirects within `per_hour`; records them."""


@dataclass
class Headers:
    """The message's header fields by lowercased name, values unfolded and decoded once."""

    facts: MessageFacts
    _cache: dict[str, list[str]] | None = None

    def get(self, name: str) -> list[str]:
        if self._cache is None:
            cache: dict[str, list[str]] = {}
            for n, v in self.facts.headers:
                cache.setdefault(n.lower(), []).append(_decode(v))
            self._cache = cache
        return self._cache.get(name, [])


def _decode(value: str) -> str:
    return decode_words(value.replace("\r\n", "").replace("\n", "").strip())


def _values(cond: Condition, facts: MessageFacts, headers: Headers) -> list[str]:
    if cond.kind == "envelope":
        return [facts.envelope_from if cond.name == "from" else facts.recipient]
    return headers.get(cond.name)


def _test(cond: Condition, value: str) -> bool:
    if cond.op == "regex":
        return cond.regex.search(value) is not None
    if not cond.case_sensitive:
        value = value.casefold()
    if cond.op == "equals":
        return value in cond.values
    if cond.op == "contains":
        return any(v in value for v in cond.values)
    return cond.regex.match(value) is not None  # glob


def matches(cond: Condition | None, facts: MessageFacts, headers: Headers) -> bool:
    """Whether the condition tree holds for this message."""
    if cond is None:
        return True
    kind = cond.kind
    if kind == "all":
        return all(matches(c, facts, headers) for c in cond.children)
    if kind == "any":
        return any(matches(c, facts, headers) for c in cond.children)
    if kind == "not":
        return not matches(cond.children[0], facts, headers)
    if kind == "size_over":
        return facts.size > cond.number
    if kind == "size_under":
        return facts.size < cond.number
    if kind == "authenticated":
        return facts.authenticated == cond.flag
    if kind == "auth":
        return any(a in cond.values for a in facts.auth or ())
    if kind in ("spf", "dkim", "dmarc", "arc", "iprev"):
        return any(r in cond.values for r in facts.results(kind))
    values = _values(cond, facts, headers)
    if cond.op == "exists":
        return bool(values) == cond.exists
    return any(_test(cond, v) for v in values)


@dataclass
class Evaluation:
    plan: DeliveryPlan
    trace: list[str] = field(default_factory=list)  # what happened, for the dry run


def evaluate(
    ruleset: RuleSet,
    facts: MessageFacts,
    *,
    gate: Gate,
    rules: tuple[Rule, ...] | None = None,
    now: Callable[[], float] | None = None,
) -> Evaluation:
    """Run the rules for facts.recipient in order; return the plan and a readable trace.

    `rules` is ruleset.for_recipient(facts.recipient) when the caller has it cached.
    """
    if rules is None:
        rules = ruleset.for_recipient(facts.recipient)
    plan = DeliveryPlan()
    trace: list[str] = []
    headers = Headers(facts)
    keep = True
    seen = flagged = False
    filed: dict[str, int] = {}
    redirect_targets: list[str] = []
    limits = ruleset.limits

    def file(folder: str) -> None:
        if folder in filed:
            f = plan.filings[filed[folder]]
            plan.filings[filed[folder]] = Filing(folder, f.seen or seen, f.flagged or flagged)
        else:
            filed[folder] = len(plan.filings)
            plan.filings.append(Filing(folder, seen, flagged))

    for rule in rules:
        if not matches(rule.match, facts, headers):
            continue
        plan.matched.append(rule.name)
        trace.append(f"rule {rule.name!r} matches")
        if rule.reject is not None:
            r = rule.reject
            plan.reject = Rejection(code=r.code, enhanced=r.enhanced, text=r.text)
            trace.append(f"  reject: {r.code} {r.enhanced} {r.text}")
            return Evaluation(plan=_finish_reject(plan), trace=trace)
        seen = seen or rule.seen
        flagged = flagged or rule.flagged
        if rule.seen or rule.flagged:
            trace.append(f"  flags: seen={seen} flagged={flagged}")
        for name, value in rule.add_headers:
            plan.add_headers.append((name, value))
            trace.append(f"  add header: {name}: {value}")
        for folder in rule.copy:
            file(folder)
            trace.append(f"  copy into {folder!r}")
        if rule.fileinto is not None:
            file(rule.fileinto)
            keep = False
            trace.append(f"  file into {rule.fileinto!r}")
        for targets, cancels_keep, verb in (
            (rule.forward, False, "forward"),
            (rule.redirect, True, "redirect"),
        ):
            if not targets:
                continue
            refusal = _redirect_refusal(facts, headers, targets, redirect_targets, limits, gate)
            if refusal:
                plan.refused.append(f"{verb} to {', '.join(targets)} refused: {refusal}")
                trace.append(f"  {verb} to {', '.join(targets)} refused: {refusal}; kept in inbox")
                continue
            redirect_targets.extend(targets)
            plan.outgoing.append(_redirected(facts, targets))
            if cancels_keep:
                keep = False
            trace.append(f"  {verb} to {', '.join(targets)}")
        if rule.vacation is not None:
            refusal = vacation_mod.refusal(facts, headers.get, rule.vacation)
            if refusal is None and not gate.vacation_due(
                recipient=facts.recipient, sender=facts.envelope_from.lower(), days=rule.vacation.days
            ):
                refusal = f"already replied to {facts.envelope_from} within {rule.vacation.days} days"
            if refusal:
                trace.append(f"  vacation: no reply ({refusal})")
            else:
                plan.outgoing.append(vacation_mod.reply(facts, headers.get, rule.vacation, now=now))
                trace.append(f"  vacation: reply to {facts.envelope_from}")
        if rule.discard:
            keep = False
            trace.append("  discard")
        if rule.stop:
            trace.append("  stop")
            break
    if keep:
        file(facts.keep_folder)
        if facts.quarantined:
            trace.append(f"  DMARC quarantine: kept in {facts.keep_folder!r}")
    elif not plan.filings:
        plan.discard = True
    folders = ", ".join(f.folder + _flags_text(f) for f in plan.filings) or "nowhere (discarded)"
    trace.append(f"filed into: {folders}")
    if not plan.matched:
        trace.insert(0, "no rule matches")
    if facts.auth is not None:
        trace.insert(0, "authentication results: " + (" ".join(facts.auth) or "none"))
    return Evaluation(plan=plan, trace=trace)


def _flags_text(f: Filing) -> str:
    flags = [n for n, on in (("seen", f.seen), ("flagged", f.flagged)) if on]
    return f" ({', '.join(flags)})" if flags else ""


def _finish_reject(plan: DeliveryPlan) -> DeliveryPlan:
    # A rejected message is refused at SMTP time: nothing of earlier rules happens.
    plan.filings.clear()
    plan.add_headers.clear()
    plan.outgoing.clear()
    return plan


def _redirect_refusal(
    facts: MessageFacts,
    headers: Headers,
    targets: tuple[str, ...],
    done: list[str],
    limits: dict[str, int],
    gate: Gate,
) -> str | None:
    if not facts.raw:
        return "the message content is not available to send on"
    hops = headers.get(LOOP_HEADER.lower())
    if any(facts.recipient in h.lower() for h in hops):
        return f"loop: already redirected by {facts.recipient}"
    if len(hops) >= limits["max_redirect_hops"]:
        return f"loop: {len(hops)} {LOOP_HEADER} headers"
    if len(done) + len(targets) > limits["max_redirect_targets"]:
        return f"more than {limits['max_redirect_targets']} redirect targets"
    if not gate.redirects_allowed(
        sender=facts.envelope_from.lower(),
        count=len(targets),
        per_hour=limits["redirects_per_sender_per_hour"],
    ):
        return f"more than {limits['redirects_per_sender_per_hour']} redirects per hour from this sender"
    return None


def _redirected(facts: MessageFacts, targets: tuple[str, ...]) -> OutgoingMessage:
    # The message as received, with a trace header naming who redirected it: the next hop's
    # rules see it and refuse to redirect it again through us (loop detection).
    header = f"{LOOP_HEADER}: {facts.recipient}\r\n".encode()
    return OutgoingMessage(
        envelope_from=facts.envelope_from,
        recipients=targets,
        data=header + facts.raw,
        carries_message=True,
        sender_verified=facts.sender_verified,
    )
