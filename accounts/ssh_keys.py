"""Authorized SSH public keys of console users, in OpenSSH's authorized_keys format.

Pure: parses and fingerprints key lines with cryptography; accounts.services stores them.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key


class SSHKeyError(ValueError):
    """A key line that is not an OpenSSH public key; the message says which line and why."""


@dataclass(frozen=True)
class AuthorizedKey:
    """One key line: its type, base64 body, comment and OpenSSH SHA256 fingerprint."""

    key_type: str
    body: str
    comment: str

    @property
    def line(self) -> str:
        return " ".join(p for p in (self.key_type, self.body, self.comment) if p)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.body)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_key_line(line: str) -> AuthorizedKey:
    """The key of one `TYPE BASE64 [COMMENT]` line. Raises SSHKeyError saying what is wrong."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise SSHKeyError("expected an OpenSSH public key: TYPE BASE64 [COMMENT]")
    key_type, body = parts[0], parts[1]
    try:
        load_ssh_public_key(f"{key_type} {body}".encode("ascii"))
    except UnsupportedAlgorithm:
        raise SSHKeyError(f"unsupported key type {key_type!r}") from None
    except (ValueError, UnicodeEncodeError):
        raise SSHKeyError(f"not a valid {key_type} public key") from None
    return AuthorizedKey(key_type, body, parts[2].strip() if len(parts) == 3 else "")


def parse_authorized_keys(text: str) -> list[AuthorizedKey]:
    """The keys of an authorized_keys text; blank lines and # comments are skipped.

    Raises SSHKeyError naming the first line that is not a key.
    """
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_key_line(line))
        except SSHKeyError as exc:
            raise SSHKeyError(f"line {number}: {exc}") from None
    return keys
