"""The results of every check of one message, and what follows from them (Verdict); pure."""

from __future__ import annotations

from dataclasses import dataclass

from mail import replies
from mail.auth.checks import DKIMResult, SPFResult
from mail.auth.dmarc import DMARCResult
from mail.replies import Reply


@dataclass(frozen=True)
class Summary:
    """What delivery and the rules need of the checks: "method=result" each (as "spf=pass",
    "dkim=fail", "dmarc=pass"), and whether DMARC quarantine applies."""

    results: tuple[str, ...]
    quarantined: bool = False

    @property
    def sender_verified(self) -> bool:
        """The envelope sender passed SPF or DMARC: an automatic message may go to it."""
        return "spf=pass" in self.results or "dmarc=pass" in self.results


@dataclass(frozen=True)
class Verdict:
    ip: str
    spf: SPFResult
    dkim: tuple[DKIMResult, ...]
    arc: str
    dmarc: DMARCResult
    iprev: tuple[str, str]  # (result, the PTR name found)

    @property
    def reply(self) -> Reply | None:
        """The refusal at the end of DATA, or None to deliver.

        - DMARC temperror (its record could not be fetched): 451 4.4.3.
        - DMARC fail whose disposition is reject or quarantine, when SPF or a DKIM
          signature had a temporary error (it might have passed): 451 4.4.3.
        - DMARC fail with disposition reject: 550 5.7.1 (RFC 7489 section 6.6.3).
        SPF fail on its own does not refuse: DMARC decides (forwarded mail fails SPF
        without being forged, RFC 7489 section 10.1)."""
        dmarc = self.dmarc
        if dmarc.result == "temperror":
            return replies.AUTH_DNS_TEMPORARY
        if dmarc.result == "fail" and dmarc.disposition != "none":
            if self.spf.result == "temperror" or any(d.result == "temperror" for d in self.dkim):
                return replies.AUTH_DNS_TEMPORARY
            if dmarc.disposition == "reject":
                return replies.DMARC_REJECT
        return None

    @property
    def quarantine(self) -> bool:
        """DMARC p=quarantine applies: the copies go to the recipients' Junk folder."""
        return self.dmarc.result == "fail" and self.dmarc.disposition == "quarantine"

    @property
    def summary(self) -> Summary:
        """The results as the Authentication-Results header written for them tells them."""
        results = [
            f"spf={self.spf.result}",
            *(f"dkim={d.result}" for d in self.dkim),
            *(() if self.dkim else ("dkim=none",)),
            f"dmarc={self.dmarc.result}",
            f"arc={self.arc}",
            f"iprev={self.iprev[0]}",
        ]
        return Summary(tuple(results), self.quarantine)
