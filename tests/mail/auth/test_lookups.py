"""The checks' DNS cache keeps an answer for its TTL, and no longer."""

from __future__ import annotations

import time

from dns_zones.services import record_add, record_delete


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
