"""A corpus of generated messages checked by mail.auth and, on the same input with the same
DNS (Everlock's own server), by independent implementations: Perl's Mail::DKIM for the RSA
signatures it also made, Mail::SPF for every SPF query. DMARC follows from the independent
SPF and DKIM verdicts by RFC 7489's rules, written out plainly here. Ed25519 (which Debian's
Mail::DKIM cannot verify) is compared with what each message was made to be."""

from __future__ import annotations

import email.utils
import itertools

import dkim

from mail.auth import checks, dmarc, results
from mail.auth.verdict import Verdict
from tests.mail.auth.conftest import DMARC_RECORDS, SPF_RECORDS
from tests.mail.auth.independent import perl_sign, perl_spf, perl_verify

FROM_DOMAINS = (
    "corpus.test",
    "news.corpus.test",
    "strict.test",
    "news.strict.test",
    "half.test",
    "watch.test",
    "plain.test",
)
# (key, canonicalisation, what is done after signing, signing domain: None for the org domain)
SIGNINGS = (
    ("rsa", "relaxed/relaxed", "", None),
    ("rsa", "simple/simple", "", None),
    ("rsa", "relaxed/simple", "body", None),
    ("rsa", "simple/relaxed", "header", None),
    ("rsa", "relaxed/relaxed", "expired", None),
    ("rsa", "relaxed/relaxed", "revoked", None),
    ("rsa", "relaxed/relaxed", "", "plain.test"),
    ("ed", "relaxed/relaxed", "", None),
    ("ed", "simple/simple", "body", None),
    ("ed", "simple/relaxed", "header", None),
    ("none", "", "", None),
)
# (client address, MAIL FROM domain: None for the From domain)
ENVELOPES = (("127.0.0.1", None), ("127.0.0.2", None), ("127.0.0.1", "neutral.corpus.test"))
TO_PERL = {
    "pass": "pass",
    "fail": "fail",
    "permerror": "invalid",
    "neutral": "invalid",
    "temperror": "temperror",
}


def org(domain: str) -> str:
    # Under .test and .example.net the organizational domain is the last two labels.
    return ".".join(domain.split(".")[-2:])


def message(from_domain: str, n: int) -> bytes:
    return (
        f"From: Sender <someone@{from_domain}>\r\n"
        f"To: bob@example.com\r\n"
        f"Subject: corpus message {n}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: <{n}@{from_domain}>\r\n"
        "\r\n"
        f"Hello  Bob,\r\nmessage {n}.\r\n\r\n\r\n"
    ).encode()


def make_corpus(corpus_dns) -> list[dict]:
    cases = []
    for n, (from_domain, signing, envelope) in enumerate(
        itertools.product(FROM_DOMAINS, SIGNINGS, ENVELOPES)
    ):
        key, canon, change, signer = signing
        ip, mail_from_domain = envelope
        cases.append(
            {
                "n": n,
                "raw": message(from_domain, n),
                "from": from_domain,
                "key": key,
                "canon": canon,
                "change": change,
                "d": signer or org(from_domain),
                "ip": ip,
                "mail_from": f"bounce@{mail_from_domain or from_domain}",
                "helo": "mx.corpus.test",
            }
        )
    rsa = [c for c in cases if c["key"] == "rsa"]
    signatures = perl_sign(
        [
            {
                "message": c["raw"].decode(),
                "domain": c["d"],
                "selector": "revoked" if c["change"] == "revoked" else "rsa",
                "key_file": str(corpus_dns.keys.rsa_file),
                "canon": c["canon"],
                "expired": c["change"] == "expired",
            }
            for c in rsa
        ]
    )
    for case, signature in zip(rsa, signatures, strict=True):
        case["raw"] = signature.encode() + b"\r\n" + case["raw"]
    for case in cases:
        if case["key"] == "ed":
            header_c, body_c = case["canon"].split("/")
            case["raw"] = (
                dkim.sign(
                    case["raw"],
                    b"ed",
                    case["d"].encode(),
                    corpus_dns.keys.ed25519_seed,
                    canonicalize=(header_c.encode(), body_c.encode()),
                    signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                )
                + case["raw"]
            )
        if case["change"] == "body":
            case["raw"] = case["raw"].replace(b"Hello  Bob", b"Hello  Eve")
        elif case["change"] == "header":
            case["raw"] = case["raw"].replace(b"Subject: corpus", b"Subject: forged")
    return cases


def expected_dmarc(from_domain: str, mail_from: str, spf: str, dkim_passes: list[str]) -> tuple[str, str]:
    """(result, disposition) by RFC 7489 sections 3.1, 6.3 and 6.6 from the independent
    SPF and DKIM verdicts."""
    found = from_domain if from_domain in DMARC_RECORDS else org(from_domain)
    if found not in DMARC_RECORDS:
        return "none", "none"
    tags = dict(t.strip().split("=") for t in DMARC_RECORDS[found].split(";"))
    policy = tags["p"]
    if found != from_domain and "sp" in tags:
        policy = tags["sp"]

    def aligned(domain: str, mode: str) -> bool:
        return domain == from_domain if mode == "s" else org(domain) == org(from_domain)

    spf_domain = mail_from.rpartition("@")[2]
    if (spf == "pass" and aligned(spf_domain, tags.get("aspf", "r"))) or any(
        aligned(d, tags.get("adkim", "r")) for d in dkim_passes
    ):
        return "pass", "none"
    if tags.get("pct") == "0":
        policy = {"reject": "quarantine", "quarantine": "none", "none": "none"}[policy]
    return "fail", policy


def test_corpus_verdicts_agree_with_independent_implementations(corpus_dns):
    cases = make_corpus(corpus_dns)
    assert len(cases) >= 200
    lookups = corpus_dns.lookups()
    checks.install_spf_lookups(lookups)
    perl_dkim = perl_verify(corpus_dns.port, [c["raw"] for c in cases])
    perl_spf_results = perl_spf(
        corpus_dns.port, [{"ip": c["ip"], "mail_from": c["mail_from"], "helo": c["helo"]} for c in cases]
    )
    mismatches = []
    seen = {"dkim": set(), "spf": set(), "dmarc": set(), "action": set()}
    for case, theirs, their_spf in zip(cases, perl_dkim, perl_spf_results, strict=True):
        ours_dkim = checks.check_dkim(lookups, case["raw"])
        ours_spf = checks.check_spf(lookups, ip=case["ip"], mail_from=case["mail_from"], helo=case["helo"])
        if case["key"] == "rsa":
            expected_dkim = [(sig[1], sig[3]) for sig in theirs]
            got_dkim = [(r.domain, TO_PERL[r.result]) for r in ours_dkim]
        else:
            expected_dkim = (
                [] if case["key"] == "none" else [(case["d"], "fail" if case["change"] else "pass")]
            )
            got_dkim = [(r.domain, r.result) for r in ours_dkim]
        passes = [d for d, result in expected_dkim if result == "pass"]
        want_dmarc = expected_dmarc(case["from"], case["mail_from"], their_spf, passes)
        ours_dmarc = dmarc.evaluate(lookups, from_domain=case["from"], spf=ours_spf, dkim=ours_dkim)
        got = (got_dkim, ours_spf.result, (ours_dmarc.result, ours_dmarc.disposition))
        want = (expected_dkim, their_spf, want_dmarc)
        if got != want:
            mismatches.append(
                (case["n"], case["from"], case["key"], case["canon"], case["change"], got, want)
            )
        verdict = Verdict(
            case["ip"], ours_spf, tuple(ours_dkim), "none", ours_dmarc, ("pass", "mx.corpus.test")
        )
        action = str(verdict.reply) if verdict.reply else ("junk" if verdict.quarantine else "inbox")
        seen["dkim"].update(r for _, r in got_dkim)
        seen["spf"].add(ours_spf.result)
        seen["dmarc"].add(ours_dmarc.result)
        seen["action"].add(action)
        # The header written for the verdict reads back to the same results.
        field = results.header("mx.example.com", verdict).decode()
        parsed = results.parse(field.partition(":")[2])
        assert parsed[0] == "mx.example.com"
        assert [(o.method, o.result) for o in parsed[1] if o.method == "dkim" and ours_dkim] == [
            ("dkim", r.result) for r in ours_dkim
        ]
        assert ("dmarc", ours_dmarc.result) in [(o.method, o.result) for o in parsed[1]]
    assert mismatches == []
    # The corpus reaches every outcome it is meant to.
    assert seen["dkim"] >= {"pass", "fail", "invalid"}
    assert seen["spf"] >= {"pass", "fail", "neutral"}
    assert seen["dmarc"] == {"pass", "fail", "none"}
    assert seen["action"] == {"inbox", "junk", "550 5.7.1 Rejected by the DMARC policy of the From domain"}


def test_spf_results_agree_with_mail_spf(corpus_dns):
    """Every result of RFC 7208 section 2.6, for MAIL FROM and for the HELO identity."""
    lookups = corpus_dns.lookups()
    checks.install_spf_lookups(lookups)
    names = [f"{name}.corpus.test" for name in (*SPF_RECORDS, "two", "nospf", "nx")]
    queries = [
        {"ip": ip, "mail_from": f"someone@{name}" if scope == "mailfrom" else "", "helo": name}
        for name in names
        for ip in ("127.0.0.1", "127.0.0.2")
        for scope in ("mailfrom", "helo")
    ]
    theirs = perl_spf(corpus_dns.port, queries)
    ours = [
        checks.check_spf(lookups, ip=q["ip"], mail_from=q["mail_from"], helo=q["helo"]).result
        for q in queries
    ]
    assert list(zip(queries, ours, strict=True)) == list(zip(queries, theirs, strict=True))
    assert set(ours) == {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}
