"""The rules.toml language: parse, validate and compile. Pure: no Django.

A rules file is an ordered list of ``[[rule]]`` tables, evaluated top to bottom for each
local recipient of a message (inbound on port 25 and submission to local addresses alike).
A message no rule files anywhere is kept in ``inbox`` (the implicit keep of Sieve, RFC 5228
section 2.10.2).

Example::

    [limits]                          # optional; the defaults are shown
    max_redirect_targets = 5          # addresses one message may be redirected to in total
    max_redirect_hops = 5             # X-Everlock-Redirected headers before a loop is declared
    redirects_per_sender_per_hour = 20

    [[rule]]
    name = "spam"                     # required, unique
    scope = "all"                     # "all" (default), a domain "example.com",
                                      # or a mailbox "alice@example.com"
    match = { header = "X-Spam-Flag", equals = "yes" }
    fileinto = "Junk"                 # folders are created on demand
    seen = true
    stop = true

    [[rule]]
    name = "announce list"
    scope = "example.com"
    match = { any = [
        { header = "List-Id", glob = "*<announce.example.net>" },
        { envelope = "from", regex = '^owner-.*@example\\.net$' },
    ] }
    fileinto = "Lists/Announce"
    add_header = { name = "X-Label", value = "announce" }

    [[rule]]
    name = "big mail from outside"
    scope = "alice@example.com"
    match = { all = [ { size_over = 10485760 }, { not = { authenticated = true } } ] }
    reject = { code = 552, enhanced = "5.3.4", text = "Message too big for this mailbox" }

    [[rule]]
    name = "boss"
    scope = "alice@example.com"
    match = { header = "From", contains = "boss@example.net" }
    flagged = true
    copy = ["Important"]              # filed too; the implicit keep still files into inbox
    forward = ["alice@example.org"]   # a copy goes there too (Sieve redirect :copy)

    [[rule]]
    name = "away"
    scope = "alice@example.com"
    vacation = { days = 7, subject = "Away until Monday", body = "I am away.", addresses = ["a@example.com"] }

Conditions (the value of ``match``: one condition table; a list means ``all`` of them; no
``match``, or ``match = []``, matches every message). Each table has exactly one of these forms:

- ``{ header = "NAME", OP = VALUE }``: a header field (RFC 2047 words decoded, folding
  removed); with several fields of that name, any one may match. ``Subject`` is
  ``header = "Subject"``.
- ``{ envelope = "from" | "to", OP = VALUE }``: the SMTP envelope sender (empty for the null
  sender) or this recipient.
- OP is one of ``exists = true|false``, ``equals``, ``contains``, ``glob`` (``*`` and ``?``,
  Sieve ``:matches``), ``regex`` (Python syntax, searched). A list of strings for equals,
  contains or glob matches when any one does. Comparison ignores case unless
  ``case_sensitive = true``.
- ``{ size_over = N }`` / ``{ size_under = N }``: message size in bytes (RFC 5228 size).
- ``{ authenticated = true|false }``: the sender authenticated (submission, port 587).
- ``{ auth = "dmarc=fail" }`` (or a list): one of the receiving server's
  Authentication-Results (docs/inbound-checks.md) is that ``method=result``.
- ``{ spf = "fail" }``, ``{ dkim = "pass" }``, ``{ dmarc = ["fail", "none"] }``, ``{ arc = ... }``,
  ``{ iprev = ... }`` (a result or a list): that method's result is one of them (for dkim, any
  signature's). Results are pass, fail, softfail, neutral, none, policy, temperror,
  permerror. Submitted mail (port 587) and mail received with the checks off have no results:
  these conditions do not match it.
- ``{ all = [...] }``, ``{ any = [...] }``, ``{ not = {...} }``: nest freely.

Actions of a matching rule, carried out in this order:

- ``seen = true``, ``flagged = true``: flags for every filing from here on, the implicit keep
  included (Sieve imap4flags addflag, RFC 5232).
- ``add_header = { name, value }`` or a list of them: prepended to the stored copies.
- ``copy = "F" | ["F", ...]``: file a copy; the implicit keep stays (fileinto :copy).
- ``fileinto = "F"``: file into F instead of inbox (cancels the implicit keep).
- ``forward = [addresses]``: send a copy on, keeping ours (redirect :copy, RFC 3894).
- ``redirect = [addresses]``: send on and cancel the implicit keep (RFC 5228 4.2). Local
  addresses are delivered locally, remote ones go through the outbound queue. The envelope
  sender is kept. Loops (our X-Everlock-Redirected header naming this recipient, or more than
  ``max_redirect_hops`` of them) and storms (more than ``max_redirect_targets`` addresses for
  one message, or more than ``redirects_per_sender_per_hour`` from one envelope sender) are
  refused; a refused redirect keeps the message in inbox, so nothing is lost. A local
  target's own rules apply, and its redirects are followed in turn through any chain; a chain
  that comes back to a mailbox it passed (a loop), runs past ``max_redirect_hops`` mailboxes,
  or reaches a target that cannot take the message (no such mailbox, a rule rejects it)
  leaves the message in the inbox of the last mailbox that redirected it, with a log line
  saying why. Should a redirected message bounce, the bounce (DSN) goes only to a local
  sender, never out to a remote one, whose address may be forged (backscatter).
- ``vacation = { days = 7, subject = "...", body = "...", from = "...", addresses = [...] }``:
  an auto-reply (RFC 3834, Sieve vacation RFC 5230): sent from the null sender at most once
  per sender per ``days`` (1 to 365, default 7), never to the null sender, to mailer daemons
  or list owners, to mail with Auto-Submitted other than "no", Precedence bulk/list/junk or
  any List-* header, nor to mail that does not name the recipient (or one of ``addresses``)
  in To, Cc, Bcc, Resent-To or Resent-Cc. ``subject`` defaults to "Auto: " and the original
  subject, ``from`` to the recipient.
- ``discard = true``: cancel the implicit keep (what earlier rules filed stays filed).
- ``reject = { code = 5xx, enhanced = "5.x.x", text = "..." }``: refuse the message at SMTP
  time with that reply; nothing is filed or sent, and evaluation ends.
- ``stop = true``: no later rule is evaluated (RFC 5228 3.3).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from domain_names import DomainNameError, normalize_host

DEFAULT_LIMITS = {
    "max_redirect_targets": 5,
    "max_redirect_hops": 5,
    "redirects_per_sender_per_hour": 20,
}
MAX_VACATION_DAYS = 365
_RULE_KEYS = {
    "name",
    "scope",
    "match",
    "seen",
    "flagged",
    "add_header",
    "copy",
    "fileinto",
    "forward",
    "redirect",
    "vacation",
    "discard",
    "reject",
    "stop",
}
# RFC 8601 section 2.7 methods and results the inbound checks record (mail.auth).
AUTH_METHODS = ("spf", "dkim", "dmarc", "arc", "iprev")
AUTH_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "policy", "temperror", "permerror")
_OPS = ("exists", "equals", "contains", "glob", "regex")
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 section 2.2 ftext
_ENHANCED = re.compile(r"^5\.\d{1,3}\.\d{1,3}$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_RULE_HEADER_LINE = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)


class RulesError(ValueError):
    """A rules file that does not parse or validate; the message names rule, field and line."""


# ---------------------------------------------------------------- compiled form


@dataclass(frozen=True)
class Condition:
    """One node of a compiled condition tree. `kind` picks which fields matter."""

    kind: str  # header, envelope, size_over, size_under, authenticated, auth, spf, dkim,
    # dmarc, arc, iprev, all, any, not
    name: str = ""  # lowercased header name, or "from"/"to"
    op: str = ""
    values: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    exists: bool = True
    number: int = 0
    flag: bool = False
    case_sensitive: bool = False
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Vacation:
    days: int
    subject: str
    body: str
    sender: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Reject:
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True)
class Rule:
    name: str
    scope: str  # "all", a domain, or a mailbox address (lowercase)
    match: Condition | None
    seen: bool = False
    flagged: bool = False
    add_headers: tuple[tuple[str, str], ...] = ()
    copy: tuple[str, ...] = ()
    fileinto: str | None = None
    forward: tuple[str, ...] = ()
    redirect: tuple[str, ...] = ()
    vacation: Vacation | None = None
    discard: bool = False
    reject: Reject | None = None
    stop: bool = False

    def applies_to(self, recipient: str) -> bool:
        if self.scope == "all":
            return True
        if "@" in self.scope:
            return recipient == self.scope
        return recipient.rpartition("@")[2] == self.scope


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def for_recipient(self, recipient: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.applies_to(recipient))


# ---------------------------------------------------------------- parsing


def parse_rules(text: str) -> RuleSet:
    """Parse and compile rules.toml text. Raises RulesError naming the line, rule and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"rules.toml: {exc}") from None
    lines = [text.count("\n", 0, m.start()) + 1 for m in _RULE_HEADER_LINE.finditer(text)]
    unknown = sorted(set(data) - {"rule", "limits"})
    if unknown:
        raise RulesError(f"rules.toml: unknown top-level key {unknown[0]!r} (expected [[rule]] or [limits])")
    limits = _parse_limits(data.get("limits", {}))
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError("rules.toml: rule must be an array of tables ([[rule]])")
    rules: list[Rule] = []
    seen_names: set[str] = set()
    for index, raw in enumerate(raw_rules):
        where = f"line {lines[index]}, " if index < len(lines) else ""
        label = f"rules.toml {where}rule {index + 1}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
            label += f" {raw['name']!r}"
        try:
            rule = _parse_rule(raw)
        except _FieldError as exc:
            raise RulesError(f"{label}, field {exc.field}: {exc.message}") from None
        if rule.name in seen_names:
            raise RulesError(f"{label}, field name: duplicate rule name {rule.name!r}")
        seen_names.add(rule.name)
        rules.append(rule)
    return RuleSet(rules=tuple(rules), limits=limits)


class _FieldError(Exception):
    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


def _parse_limits(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise RulesError("rules.toml: limits must be a table")
    limits = dict(DEFAULT_LIMITS)
    for key, value in raw.items():
        if key not in DEFAULT_LIMITS:
            raise RulesError(f"rules.toml: limits: unknown key {key!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 10000:
            raise RulesError(f"rules.toml: limits.{key}: expected an integer from 0 to 10000")
        limits[key] = value
    return limits


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise _FieldError(path, "expected a non-empty string" if not allow_empty else "expected a string")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(path, "expected true or false")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _FieldError(path, "expected a string or a non-empty list of strings")
    return tuple(_string(v, f"{path}[{i}]") for i, v in enumerate(value))


def _folder(value: Any, path: str) -> str:
    name = _string(value, path).strip()
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise _FieldError(path, "a folder name is at most 200 characters, without control characters")
    return name


def _addresses(value: Any, path: str) -> tuple[str, ...]:
    out = []
    for i, a in enumerate(_strings(value, path)):
        if not _ADDRESS.match(a.strip()):
            raise _FieldError(f"{path}[{i}]", f"not an email address: {a!r}")
        out.append(a.strip())
    return tuple(out)


def _scope(value: Any) -> str:
    scope = _string(value, "scope").strip().lower()
    if scope == "all":
        return scope
    if "@" in scope:
        if not _ADDRESS.match(scope):
            raise _FieldError("scope", f"not a mailbox address: {value!r}")
        local, _, domain = scope.rpartition("@")
        return f"{local.casefold()}@{_domain(domain, value)}"
    if "." not in scope or any(c.isspace() for c in scope):
        raise _FieldError("scope", f'expected "all", a domain or a mailbox address, not {value!r}')
    return _domain(scope, value)


def _domain(name: str, value: Any) -> str:
    # Recipients arrive with the domain in normal form (IDNA A-labels); scopes must compare equal.
    try:
        return normalize_host(name)
    except DomainNameError as exc:
        raise _FieldError("scope", f"invalid domain in {value!r}: {exc}") from None


def _parse_rule(raw: Any) -> Rule:
    if not isinstance(raw, dict):
        raise _FieldError("rule", "expected a table")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise _FieldError(unknown[0], "unknown key")
    if "name" not in raw:
        raise _FieldError("name", "missing")
    name = _string(raw["name"], "name").strip()
    # An empty list is "all of nothing": it matches every message, like no match at all.
    match = _condition(raw["match"], "match") if raw.get("match", []) != [] else None
    add_headers = ()
    if "add_header" in raw:
        value = raw["add_header"]
        items = value if isinstance(value, list) else [value]
        add_headers = tuple(_header_pair(h, f"add_header[{i}]") for i, h in enumerate(items))
    reject = _reject(raw["reject"]) if "reject" in raw else None
    rule = Rule(
        name=name,
        scope=_scope(raw.get("scope", "all")),
        match=match,
        seen=_bool(raw.get("seen", False), "seen"),
        flagged=_bool(raw.get("flagged", False), "flagged"),
        add_headers=add_headers,
        copy=tuple(_folder(f, f"copy[{i}]") for i, f in enumerate(_strings(raw["copy"], "copy")))
        if "copy" in raw
        else (),
        fileinto=_folder(raw["fileinto"], "fileinto") if "fileinto" in raw else None,
        forward=_addresses(raw["forward"], "forward") if "forward" in raw else (),
        redirect=_addresses(raw["redirect"], "redirect") if "redirect" in raw else (),
        vacation=_vacation(raw["vacation"]) if "vacation" in raw else None,
        discard=_bool(raw.get("discard", False), "discard"),
        reject=reject,
        stop=_bool(raw.get("stop", False), "stop"),
    )
    if reject is not None:
        others = sorted(k for k in raw if k not in {"name", "scope", "match", "reject", "stop"})
        if others:
            raise _FieldError(others[0], "a rule that rejects has no other actions")
    return rule


def _header_pair(value: Any, path: str) -> tuple[str, str]:
    if not isinstance(value, dict) or set(value) != {"name", "value"}:
        raise _FieldError(path, "expected a table { name = ..., value = ... }")
    name = _string(value["name"], f"{path}.name").strip()
    if not _HEADER_NAME.match(name):
        raise _FieldError(f"{path}.name", f"not a header field name: {name!r}")
    text = _string(value["value"], f"{path}.value", allow_empty=True)
    if "\r" in text or "\n" in text:
        raise _FieldError(f"{path}.value", "a header value is one line")
    return name, text


def _reject(value: Any) -> Reject:
    if not isinstance(value, dict):
        raise _FieldError("reject", "expected a table { code = 5xx, enhanced = ..., text = ... }")
    unknown = sorted(set(value) - {"code", "enhanced", "text"})
    if unknown:
        raise _FieldError(f"reject.{unknown[0]}", "unknown key")
    code = value.get("code", 550)
    if not isinstance(code, int) or isinstance(code, bool) or not 550 <= code <= 554:
        raise _FieldError("reject.code", "expected 550, 551, 552, 553 or 554")
    enhanced = _string(value.get("enhanced", "5.7.1"), "reject.enhanced")
    if not _ENHANCED.match(enhanced):
        raise _FieldError("reject.enhanced", f"expected an enhanced status code 5.x.y, not {enhanced!r}")
    text = _string(value.get("text", "Message rejected by the recipient's rules"), "reject.text")
    if any(ord(c) < 32 or ord(c) > 126 for c in text):
        raise _FieldError("reject.text", "the reply text is one line of printable ASCII")
    return Reject(code=code, enhanced=enhanced, text=text.strip())


def _vacation(value: Any) -> Vacation:
    if not isinstance(value, dict):
        raise _FieldError("vacation", "expected a table")
    unknown = sorted(set(value) - {"days", "subject", "body", "from", "addresses"})
    if unknown:
        raise _FieldError(f"vacation.{unknown[0]}", "unknown key")
    days = value.get("days", 7)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_VACATION_DAYS:
        raise _FieldError("vacation.days", f"expected an integer from 1 to {MAX_VACATION_DAYS}")
    if "body" not in value:
        raise _FieldError("vacation.body", "missing")
    subject = _string(value.get("subject", ""), "vacation.subject", allow_empty=True)
    if "\r" in subject or "\n" in subject:
        raise _FieldError("vacation.subject", "a subject is one line")
    sender = ""
    if "from" in value:
        sender = _addresses(value["from"], "vacation.from")[0]
    return Vacation(
        days=days,
        subject=subject.strip(),
        body=_string(value["body"], "vacation.body"),
        sender=sender,
        addresses=tuple(a.lower() for a in _addresses(value["addresses"], "vacation.addresses"))
        if "addresses" in value
        else (),
    )


def _condition(value: Any, path: str) -> Condition:
    if isinstance(value, list):
        return Condition(kind="all", children=_conditions(value, path))
    if not isinstance(value, dict) or not value:
        raise _FieldError(path, "expected a condition table or a list of them")
    keys = set(value)
    for combinator in ("all", "any"):
        if combinator in keys:
            if keys != {combinator}:
                raise _FieldError(path, f"{combinator} stands alone in its table")
            return Condition(kind=combinator, children=_conditions(value[combinator], f"{path}.{combinator}"))
    if "not" in keys:
        if keys != {"not"}:
            raise _FieldError(path, "not stands alone in its table")
        return Condition(kind="not", children=(_condition(value["not"], f"{path}.not"),))
    for kind in ("size_over", "size_under"):
        if kind in keys:
            if keys != {kind}:
                raise _FieldError(path, f"{kind} stands alone in its table")
            n = value[kind]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise _FieldError(f"{path}.{kind}", "expected a number of bytes")
            return Condition(kind=kind, number=n)
    if "authenticated" in keys:
        if keys != {"authenticated"}:
            raise _FieldError(path, "authenticated stands alone in its table")
        return Condition(kind="authenticated", flag=_bool(value["authenticated"], f"{path}.authenticated"))
    for kind in ("auth", *AUTH_METHODS):
        if kind in keys:
            if keys != {kind}:
                raise _FieldError(path, f"{kind} stands alone in its table")
            return Condition(kind=kind, values=_auth_values(kind, value[kind], f"{path}.{kind}"))
    if "header" in keys or "envelope" in keys:
        return _test(value, path)
    raise _FieldError(
        path,
        "expected one of header, envelope, size_over, size_under, authenticated, auth, spf, dkim, "
        "dmarc, arc, iprev, all, any, not",
    )


def _auth_values(kind: str, value: Any, path: str) -> tuple[str, ...]:
    values = tuple(v.strip().lower() for v in _strings(value, path))
    for v in values:
        method, eq, result = v.partition("=") if kind == "auth" else (kind, "=", v)
        if kind == "auth" and (not eq or method not in AUTH_METHODS):
            raise _FieldError(
                path, f'expected "method=result" with a method of {", ".join(AUTH_METHODS)}, not {v!r}'
            )
        if result not in AUTH_RESULTS:
            raise _FieldError(path, f"unknown result {result!r}: expected one of {', '.join(AUTH_RESULTS)}")
    return values


def _conditions(value: Any, path: str) -> tuple[Condition, ...]:
    if not isinstance(value, list) or not value:
        raise _FieldError(path, "expected a non-empty list of conditions")
    return tuple(_condition(v, f"{path}[{i}]") for i, v in enumerate(value))


def _test(value: dict, path: str) -> Condition:
    if "header" in value and "envelope" in value:
        raise _FieldError(path, "a test has either header or envelope, not both")
    kind = "header" if "header" in value else "envelope"
    target = _string(value[kind], f"{path}.{kind}").strip()
    if kind == "header" and not _HEADER_NAME.match(target):
        raise _FieldError(f"{path}.header", f"not a header field name: {target!r}")
    if kind == "envelope" and target.lower() not in ("from", "to"):
        raise _FieldError(f"{path}.envelope", f'expected "from" or "to", not {target!r}')
    unknown = sorted(set(value) - {kind, "case_sensitive", *_OPS})
    if unknown:
        raise _FieldError(f"{path}.{unknown[0]}", "unknown key")
    ops = [op for op in _OPS if op in value]
    if len(ops) != 1:
        raise _FieldError(path, f"expected exactly one of {', '.join(_OPS)}")
    op = ops[0]
    case_sensitive = _bool(value.get("case_sensitive", False), f"{path}.case_sensitive")
    base = {"kind": kind, "name": target.lower(), "op": op, "case_sensitive": case_sensitive}
    if op == "exists":
        return Condition(**base, exists=_bool(value["exists"], f"{path}.exists"))
    if op == "regex":
        pattern = _string(value["regex"], f"{path}.regex")
        try:
            compiled = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
        except re.error as exc:
            raise _FieldError(f"{path}.regex", f"invalid regular expression: {exc}") from None
        return Condition(**base, regex=compiled)
    values = _strings(value[op], f"{path}.{op}")
    if not case_sensitive:
        values = tuple(v.casefold() for v in values)
    if op == "glob":
        # One alternation, translated once: evaluation is a single match call.
        pattern = "|".join(f"(?:{fnmatch.translate(v)})" for v in values)
        return Condition(**base, values=values, regex=re.compile(pattern, re.DOTALL))
    return Condition(**base, values=values)
