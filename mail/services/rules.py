"""The mail rules: stored in the database, mirrored to everlock-mail/rules.toml.

Every change validates the whole text first (mail.rules.language.parse_rules): a text that
does not parse or validate raises RulesError and changes nothing. After a change commits,
DATA_DIR/everlock-mail/rules.toml is rewritten atomically (a temporary file renamed over
it), so the file always holds the rules in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from everlock_site.files import write_private_file
from mail.addresses import AddressError, parse_address
from mail.message import parse_message
from mail.models import MailDomain, Message, RuleSet
from mail.rules import engine
from mail.rules.evaluate import Evaluation
from mail.rules.language import RulesError, parse_rules
from mail.rules.language import RuleSet as CompiledRules
from mail.rules.plan import MessageFacts
from mail.services.delivery import received_results
from mail.services.storage import read_content

__all__ = [
    "RulesChange",
    "RulesError",
    "current_text",
    "dry_run",
    "import_rules_file",
    "rules_file_path",
    "set_rules",
]


@dataclass(frozen=True)
class RulesChange:
    """The outcome of set_rules: whether anything changed, the version, the rule count."""

    changed: bool
    version: int
    rules: int


def rules_file_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir if data_dir is not None else settings.DATA_DIR) / "everlock-mail" / "rules.toml"


def current_text() -> str:
    """The rules.toml text in force ("" when none was ever set)."""
    return RuleSet.objects.order_by("id").values_list("text", flat=True).first() or ""


def validate(text: str) -> CompiledRules:
    """The compiled rules of `text`. Raises RulesError naming the line, rule and field."""
    return parse_rules(text)


def set_rules(*, text: str, data_dir: Path | None = None) -> RulesChange:
    """Replace the rules with `text` (TOML). Idempotent: the same text changes nothing.

    Raises RulesError (nothing changed) when the text does not parse or validate. On commit,
    rules.toml is rewritten; every process picks the new version up on its next delivery.
    """
    compiled = validate(text)
    path = rules_file_path(data_dir)
    with transaction.atomic():
        row = RuleSet.objects.select_for_update().order_by("id").first()
        if row is None:
            row = RuleSet.objects.create(text=text, version=1)
        elif row.text == text:
            if not path.exists():
                transaction.on_commit(lambda: write_rules_file(text=text, path=path))
            return RulesChange(changed=False, version=row.version, rules=len(compiled.rules))
        else:
            row.text = text
            row.version += 1
            row.save(update_fields=["text", "version", "updated_at"])
        transaction.on_commit(lambda: write_rules_file(text=text, path=path))
    return RulesChange(changed=True, version=row.version, rules=len(compiled.rules))


def import_rules_file(*, path: Path | None = None, data_dir: Path | None = None) -> RulesChange:
    """Load the rules from rules.toml (the data dir's unless `path` is given).

    This is what `/mail rules import` and `manage.py mailconfig import` call. Raises
    RulesError when the file is missing, unreadable, or does not validate; then nothing changes.
    """
    source = Path(path) if path is not None else rules_file_path(data_dir)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{source}: cannot read: {exc}") from None
    return set_rules(text=text, data_dir=data_dir)


def write_rules_file(*, text: str, path: Path) -> None:
    """Write `text` to `path` atomically (mode 0600): readers see the old or the new file."""
    write_private_file(path, text.encode("utf-8"))


def dry_run(*, recipient: str, raw: bytes | None = None, message_id: int | None = None) -> Evaluation:
    """What the rules in force would do with a message for `recipient`; records nothing.

    The message is `raw` or the stored message `message_id`. Raises RulesError for an invalid
    recipient or an unknown message id.
    """
    try:
        address = parse_address(recipient.strip().strip("<>"))
    except AddressError as exc:
        raise RulesError(f"recipient: {exc}") from None
    envelope_from = ""
    authenticated = False
    if message_id is not None:
        message = Message.objects.select_related("content").filter(id=message_id).first()
        if message is None:
            raise RulesError(f"no stored message with id {message_id}")
        raw = bytes(message.prepended_headers) + read_content(message.content)
        envelope_from = message.envelope_from
    raw = raw or b""
    parsed = parse_message(raw)
    headers = parsed.headers
    if not envelope_from:
        # A pasted message: the Return-Path stands for the envelope sender when present.
        envelope_from = (parsed.first("Return-Path") or "").strip().strip("<>")
    checked = received_results(headers, MailDomain.objects.filter(name=address.domain).first())
    facts = MessageFacts(
        envelope_from=envelope_from,
        recipient=address.key,
        headers=headers,
        size=len(raw),
        authenticated=authenticated,
        raw=raw,
        auth=checked.results if checked is not None else None,
        quarantined=checked is not None and checked.quarantined,
    )
    return engine.dry_run(facts)
