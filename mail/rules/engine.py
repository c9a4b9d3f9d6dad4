"""Rules evaluation for local delivery: the compiled rules of this process and their state.

plan_delivery() is called by local delivery (mail.services.delivery) inside the transaction
that files the message, so the vacation and redirect memory it records commits (or rolls
back) with the delivery itself. Each process keeps the compiled rules keyed by (RuleSet id,
version, updated_at); one single-row query per call notices a change, so edits made by any
process apply to the next message without a restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from mail.models import RedirectRecord, RuleSet, VacationReply
from mail.rules.evaluate import Evaluation, evaluate
from mail.rules.language import Rule, parse_rules
from mail.rules.language import RuleSet as CompiledRules
from mail.rules.plan import DeliveryPlan, Filing, MessageFacts


@dataclass
class CurrentRules:
    version: tuple  # (row id, version, updated_at): a deleted and recreated row differs too
    rules: CompiledRules
    by_recipient: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    def for_recipient(self, recipient: str) -> tuple[Rule, ...]:
        found = self.by_recipient.get(recipient)
        if found is None:
            if len(self.by_recipient) > 10000:
                self.by_recipient.clear()
            found = self.by_recipient[recipient] = self.rules.for_recipient(recipient)
        return found


_lock = threading.Lock()
_cache: CurrentRules | None = None
_EMPTY = CurrentRules(version=(), rules=CompiledRules())


def current_rules() -> CurrentRules:
    """The compiled rules of the current RuleSet version (compiled at most once per version).

    The stored text was validated when it was saved; should it still fail to parse (edited
    behind our back in the database), the error propagates and delivery answers 451.
    """
    global _cache
    version = RuleSet.objects.order_by("id").values_list("id", "version", "updated_at").first()
    if version is None:
        return _EMPTY
    cached = _cache
    if cached is not None and cached.version == version:
        return cached
    with _lock:
        if _cache is not None and _cache.version == version:
            return _cache
        row = RuleSet.objects.order_by("id").values_list("id", "version", "updated_at", "text").first()
        if row is None:
            return _EMPTY
        compiled = CurrentRules(version=tuple(row[:3]), rules=parse_rules(row[3]))
        _cache = compiled
        return compiled


class DatabaseGate:
    """The evaluator's memory in the database; `record=False` only asks (dry runs)."""

    def __init__(self, *, now: datetime, record: bool = True):
        self.now = now
        self.record = record

    def vacation_due(self, *, recipient: str, sender: str, days: int) -> bool:
        now = self.now
        if not self.record:
            last = VacationReply.objects.filter(recipient=recipient, sender=sender).values_list(
                "last_sent_at", flat=True
            )
            return not last or last[0] <= now - timedelta(days=days)
        # Joins the delivery's transaction when there is one (so the memory commits or rolls
        # back with the reply); the row lock lets two deliveries racing for one sender send
        # one reply.
        with transaction.atomic():
            row = VacationReply.objects.select_for_update().filter(recipient=recipient, sender=sender).first()
            if row is None:
                VacationReply.objects.create(recipient=recipient, sender=sender, last_sent_at=now)
                return True
            if row.last_sent_at > now - timedelta(days=days):
                return False
            row.last_sent_at = now
            row.save(update_fields=["last_sent_at"])
            return True

    def redirects_allowed(self, *, sender: str, count: int, per_hour: int) -> bool:
        now = self.now
        recent = (
            RedirectRecord.objects.filter(sender=sender, created_at__gt=now - timedelta(hours=1)).aggregate(
                n=Sum("count")
            )["n"]
            or 0
        )
        if recent + count > per_hour:
            return False
        if self.record:
            RedirectRecord.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
            RedirectRecord.objects.create(sender=sender, count=count, created_at=now)
        return True


def plan_delivery(
    facts: MessageFacts, *, compiled: CurrentRules | None = None, now: datetime | None = None
) -> DeliveryPlan:
    """The plan for one recipient of a message; inbox when no rule matches.

    Call inside the delivery's transaction: it records vacation replies and redirects sent.
    `compiled` is current_rules() when the caller plans many deliveries at once; `now` is
    the moment of the delivery (default: the clock), against which the vacation and
    redirect memories are measured and which dates an auto-reply.
    """
    if compiled is None:
        compiled = current_rules()
    rules = compiled.for_recipient(facts.recipient)
    if not rules:
        return DeliveryPlan(filings=[Filing(facts.keep_folder)] if facts.quarantined else [])
    now = now or timezone.now()
    return evaluate(compiled.rules, facts, gate=DatabaseGate(now=now), rules=rules, now=now.timestamp).plan


def dry_run(facts: MessageFacts, *, now: datetime | None = None) -> Evaluation:
    """What the rules would do with this message at `now` (default: the clock), recording
    nothing."""
    compiled = current_rules()
    now = now or timezone.now()
    return evaluate(
        compiled.rules,
        facts,
        gate=DatabaseGate(now=now, record=False),
        rules=compiled.for_recipient(facts.recipient),
        now=now.timestamp,
    )
