"""Console commands of /mail rules: show, import and dry-run the mail rules (rules.toml).

Each handler calls one mail.services.rules function; RulesError becomes a CommandError.
"""

from __future__ import annotations

from mail.services.rules import RulesError, current_text, dry_run, import_rules_file, rules_file_path
from sshadmin.commands import CommandError, Context, command


@command("/mail rules show", usage="/mail rules show", summary="print the mail rules in force (rules.toml)")
def rules_show(ctx: Context) -> str:
    text = current_text()
    if not text.strip():
        return f"no mail rules: every message goes to inbox ({rules_file_path()} to add some)"
    return text.rstrip("\n")


@command(
    "/mail rules import",
    usage="/mail rules import",
    summary="load the mail rules from everlock-mail/rules.toml in the data dir",
)
def rules_import(ctx: Context) -> str:
    try:
        change = import_rules_file()
    except RulesError as exc:
        raise CommandError(f"{exc}; nothing changed") from None
    if not change.changed:
        return f"mail rules unchanged (version {change.version}, {change.rules} rules)"
    return f"mail rules imported: version {change.version}, {change.rules} rules"


@command(
    "/mail rules test",
    usage="/mail rules test RECIPIENT [MESSAGE...]",
    summary="show what the rules would do with a message (pasted, or a stored message id); changes nothing",
)
def rules_test(ctx: Context, recipient: str, *message: str) -> str:
    if len(message) == 1 and message[0].isdigit():
        kwargs = {"message_id": int(message[0])}
    else:
        text = " ".join(message)
        # A message pasted on one line carries its line breaks as literal \n.
        if "\n" not in text:
            text = text.replace("\\r\\n", "\n").replace("\\n", "\n")
        kwargs = {"raw": text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")}
    try:
        result = dry_run(recipient=recipient, **kwargs)
    except RulesError as exc:
        raise CommandError(str(exc)) from None
    return "\n".join(result.trace)
