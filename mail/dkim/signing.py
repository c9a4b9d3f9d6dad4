"""DKIM signing (RFC 6376) with Ed25519-SHA256 (RFC 8463) and RSA-SHA256, relaxed/relaxed.

Pure: no Django. Canonicalisation and hashing are done here and the signature itself by
`cryptography` (OpenSSL): stock dkimpy signs RSA in pure Python, which would make signing the
bottleneck of submission. Parsed private keys are cached by their PEM (mail.dkim.keys).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mail.dkim.keys import load_private_key

if TYPE_CHECKING:
    from mail.models import MailDomain

# The header fields we sign when present (RFC 6376 section 5.4.1's list of fields that
# SHOULD be signed, minus those a list manager routinely rewrites).
SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "in-reply-to",
    "references",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
# Signed one more time than they occur, so that a From or Subject added in transit breaks the
# signature (RFC 6376 section 8.15, "over-signing").
OVERSIGNED = ("from", "subject")

_LINE_END = re.compile(rb"\r?\n")
_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb" \r\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"\r?\n(?![ \t])")


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split `message` into its header fields (name, raw value incl. folding) and its body."""
    match = _HEADER_END.search(message)
    if match is None:
        head, body = message, b""
    else:
        head, body = message[: match.start()], message[match.end() :]
    fields = []
    for raw in _FIELD_START.split(head):
        name, colon, value = raw.partition(b":")
        if colon and name:
            fields.append((name, value))
    return fields, body


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 section 3.4.2: lowercase name, unfold, collapse WSP, trim around the colon."""
    value = _WSP_RUN.sub(b" ", _LINE_END.sub(b"", value)).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 section 3.4.4: collapse WSP, drop it at line ends, drop trailing empty lines.

    Bare LF line ends count as CRLF (messages travel with CRLF on the wire).
    """
    # Each rewrite only when the body needs it: most bodies need none, and a scan for a
    # byte is far cheaper than a regular-expression substitution over the whole body.
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LINE_END.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    if b" \r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if body.endswith(b" "):
        body = body[:-1]
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    body = body[:end]
    return body + b"\r\n" if body else b""


def _fold_tags(tags: list[str], *, width: int = 76) -> str:
    """Join tag=value pairs with "; ", folding lines (CRLF + space) before `width`."""
    lines = ["DKIM-Signature:"]
    for i, tag in enumerate(tags):
        text = " " + tag + (";" if i < len(tags) - 1 else "")
        if len(lines[-1]) + len(text) > width and lines[-1] != "DKIM-Signature:":
            lines.append(text)
        else:
            lines[-1] += text
    return "\r\n".join(lines)


def _fold_b64(value: str, first: int, *, width: int = 76) -> str:
    chunks = [value[:first]]
    rest = value[first:]
    chunks.extend(" " + rest[i : i + width - 2] for i in range(0, len(rest), width - 2))
    return "\r\n".join(chunks)


@dataclass(frozen=True)
class _Signed:
    """What every signature of one message shares: the names of the signed fields (h=),
    their relaxed form in signing order, and the body hash (bh=)."""

    names: tuple[str, ...]
    header_input: bytes
    body_hash: str


def _signed_parts(message: bytes) -> _Signed:
    fields, body = split_message(message)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        by_name.setdefault(name.strip(b" \t").lower(), []).append(value)
    names: list[str] = []
    header_input = []
    for name in SIGNED_HEADERS:
        instances = by_name.get(name.encode("ascii"), [])
        count = len(instances) + (1 if name in OVERSIGNED else 0)
        if not instances and name not in OVERSIGNED:
            continue
        names.extend([name] * count)
        # RFC 6376 section 5.4.2: several instances are signed from the bottom up; a name
        # listed more often than it occurs contributes nothing for the extra entries.
        header_input.extend(relaxed_header(name.encode("ascii"), v) + b"\r\n" for v in reversed(instances))
    return _Signed(names=tuple(names), header_input=b"".join(header_input), body_hash=body_hash)


def sign(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_key_pem: str,
    timestamp: int | None = None,
    _signed: _Signed | None = None,
) -> bytes:
    """The DKIM-Signature header field (CRLF-terminated) for `message` with one key.

    The algorithm follows the key: ed25519-sha256 (RFC 8463) or rsa-sha256. Relaxed/relaxed
    canonicalisation; the fields of SIGNED_HEADERS present in the message are signed, From and
    Subject once more than they occur. `domain` is the d= value (ASCII). Raises DKIMKeyError for
    an unusable key.
    """
    key = load_private_key(private_key_pem)
    signed = _signed if _signed is not None else _signed_parts(message)
    algorithm = "rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else "ed25519-sha256"
    tags = [
        "v=1",
        f"a={algorithm}",
        "c=relaxed/relaxed",
        f"d={domain}",
        f"s={selector}",
        f"t={int(time.time()) if timestamp is None else timestamp}",
        "h=" + ":".join(signed.names),
        f"bh={signed.body_hash}",
        "b=",
    ]
    unsigned = _fold_tags(tags)
    # RFC 6376 section 3.7: the signature field itself is hashed last, with an empty b= value
    # and without its trailing CRLF.
    name, _, value = unsigned.partition(":")
    own = relaxed_header(name.encode("ascii"), value.encode("ascii"))
    digest = hashlib.sha256(signed.header_input + own).digest()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the header hash input.
        signature = key.sign(digest)
    else:
        signature = key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    b64 = base64.b64encode(signature).decode("ascii")
    last_line = unsigned.rsplit("\r\n", 1)[-1]
    return (unsigned + _fold_b64(b64, max(0, 76 - len(last_line))) + "\r\n").encode("ascii")


def sign_for_domain(domain: MailDomain, message: bytes) -> bytes:
    """The DKIM-Signature header lines (CRLF-terminated) to prepend to `message`.

    With DKIM enabled for `domain`, one signature per key it has: Ed25519 under
    `dkim_selector`, then RSA-SHA256 under `dkim_rsa_selector`. Returns b"" when DKIM is off
    or the domain has no key. Raises DKIMKeyError for a stored key that cannot be loaded.
    """
    if not domain.dkim_enabled:
        return b""
    keys = [
        (domain.dkim_selector, domain.dkim_private_key_pem),
        (domain.dkim_rsa_selector, domain.dkim_rsa_private_key_pem),
    ]
    keys = [(s, pem) for s, pem in keys if pem]
    if not keys:
        return b""
    parts = _signed_parts(message)  # canonicalised once for both keys
    now = int(time.time())
    return b"".join(
        sign(message, domain=domain.name, selector=s, private_key_pem=pem, timestamp=now, _signed=parts)
        for s, pem in keys
    )
