"""The Sender Rewriting Scheme (SRS, as libsrs2 and postsrsd do it; srslib) for mail a rule
sends on to another server.

A redirect keeps the message's bytes (its DKIM signatures stay valid) but not its envelope
sender: SPF at the next hop would check the original sender's domain against our address
and fail. The sender becomes SRS0=HHHH=TT=original.domain=local@our.domain, which our
domain's SPF covers; a bounce sent back to it reaches us, and the address reverses to the
original sender (HHHH is an HMAC of the rest, TT a day stamp: forged or stale addresses,
older than VALIDITY_DAYS, do not reverse)."""

from __future__ import annotations

import functools

import srslib
from django.conf import settings
from django.utils.crypto import salted_hmac

VALIDITY_DAYS = 21  # libsrs2's default: a bounce takes at most the senders' queue lifetime


@functools.cache
def _scheme(secret_key: str) -> srslib.SRS:
    secret = salted_hmac("everlock.mail.auth.srs", "sender rewriting", secret=secret_key).hexdigest()
    return srslib.SRS(secret, validity_days=VALIDITY_DAYS)


def forward(sender: str, domain: str) -> str:
    """`sender` rewritten to an address of our `domain` (an SRS address rewritten again
    becomes SRS1, so the chain stays short)."""
    return _scheme(settings.SECRET_KEY).forward(sender, domain)


def is_srs(address: str) -> bool:
    """Whether `address` (or its local part) has the form of an SRS address."""
    return address[:5].upper() in ("SRS0=", "SRS1=", "SRS0+", "SRS1+", "SRS0-", "SRS1-")


def reverse(address: str) -> str | None:
    """The original sender of SRS `address`, or None when it is not one of ours: malformed,
    a hash that does not match, or older than VALIDITY_DAYS."""
    try:
        return _scheme(settings.SECRET_KEY).reverse(address)
    except (srslib.Error, ValueError):
        return None
