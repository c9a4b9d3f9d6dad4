"""The checks' DNS cache keeps an answer for its TTL, and no longer; from_cache runs a check
on cached answers alone."""

from __future__ import annotations

import functools
import time

import pytest

from dns_zones.services import record_add, record_delete
from mail.auth import checks
from mail.auth.lookups import NotCached


def served(corpus_dns, value: str):
    return lambda: corpus_dns.server.dig("+short", "ttl.corpus.test", "TXT") == f'"{value}"\n'


def test_answers_are_kept_for_their_ttl(corpus_dns):
    lookups = corpus_dns.lookups()
    record, _ = record_add(origin="corpus.test", name="ttl", rtype="TXT", data='"first"', ttl=5)
    assert corpus_dns.server.wait_for(
        lambda: corpus_dns.server.dig("+short", "ttl.corpus.test", "TXT") == '"first"\n'
    )
    assert lookups.txt("ttl.corpus.test") == [b"first"]
    record_delete(origin="corpus.test", record_id=record.id)
    record_add(origin="corpus.test", name="ttl", rtype="TXT", data='"second"', ttl=5)
    assert corpus_dns.server.wait_for(
        lambda: corpus_dns.server.dig("+short", "ttl.corpus.test", "TXT") == '"second"\n'
    )
    # The server answers anew; the cache still has the first answer within its 5 seconds.
    assert lookups.txt("ttl.corpus.test") == [b"first"]
    time.sleep(5.1)
    assert lookups.txt("ttl.corpus.test") == [b"second"]


def test_from_cache_answers_only_from_the_cache(corpus_dns):
    lookups = corpus_dns.lookups()
    with pytest.raises(NotCached):
        lookups.from_cache(lookups.txt, "_dmarc.corpus.test")
    assert lookups.txt("_dmarc.corpus.test") == [b"v=DMARC1; p=reject; sp=quarantine"]
    assert lookups.from_cache(lookups.txt, "_dmarc.corpus.test") == [b"v=DMARC1; p=reject; sp=quarantine"]
    # NXDOMAIN is kept too (for the SOA's negative TTL, RFC 2308).
    assert lookups.txt("nothing.corpus.test") == []
    assert lookups.from_cache(lookups.txt, "nothing.corpus.test") == []


def test_a_lookup_missed_under_from_cache_counts_even_when_the_check_swallows_it(corpus_dns):
    # pyspf fetches an exp= explanation inside a bare `except: pass`: the miss must still
    # send the check to where it may wait on DNS, or its result would lack the explanation.
    _txt = "v=spf1 ip4:192.0.2.1 exp=why.corpus.test -all"
    record_add(origin="corpus.test", name="explained", rtype="TXT", data=f'"{_txt}"')
    record_add(origin="corpus.test", name="why", rtype="TXT", data='"%{i} may not send for %{d}"')
    lookups = corpus_dns.lookups()
    checks.install_spf_lookups(lookups)
    lookups.txt("explained.corpus.test")  # the record is cached, its explanation not
    check = functools.partial(
        checks.check_spf,
        lookups,
        ip="127.0.0.1",
        mail_from="carol@explained.corpus.test",
        helo="mx.corpus.test",
    )
    with pytest.raises(NotCached):
        lookups.from_cache(check)
    assert check() == checks.SPFResult(
        "fail", "explained.corpus.test", "mailfrom", "127.0.0.1 may not send for explained.corpus.test"
    )
    assert lookups.from_cache(check) == check()
