"""Inbound checks of mail received on port 25: SPF, DKIM, ARC, DMARC, iprev and DNSBLs,
decided into one verdict (mail.auth.verdict) and recorded as an Authentication-Results
header (RFC 8601). Submission (port 587) is not checked: its senders log in."""
