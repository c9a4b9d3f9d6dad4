"""Mail rules cost: evaluation of 100 rules per message, and inbound SMTP throughput with 100
rules loaded against none (the issue's bar: within 10%).

.venv/bin/python bench/rules.py      (BENCH_MESSAGES=1000 by default; BENCH_ROUNDS=2)
"""

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.smtp_load import CLIENTS, MESSAGES, _everlock_server, drive, message, prepare, start

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def hundred_rules() -> str:
    """99 rules that do not match the benchmark's mail (every kind of condition), then one
    that files it: every message walks all 100."""
    kinds = [
        '{{ header = "List-Id", glob = "*<list{i}.example.net>" }}',
        '{{ header = "Subject", regex = "^\\\\[ticket #{i}\\\\]" }}',
        '{{ header = "From", contains = ["x{i}@example.net", "y{i}@example.net"] }}',
        '{{ envelope = "from", equals = "z{i}@example.net" }}',
        '{{ all = [ {{ size_over = 1000000 }}, {{ not = {{ header = "X-Spam-{i}", exists = false }} }} ] }}',
        '{{ any = [ {{ header = "X-Tag", equals = "t{i}" }}, {{ authenticated = true }} ] }}',
    ]
    out = []
    for i in range(99):
        scope = ("all", "example.com", "bob@example.com")[i % 3]
        match = kinds[i % len(kinds)].format(i=i)
        out.append(f'[[rule]]\nname = "r{i}"\nscope = "{scope}"\nmatch = {match}\nfileinto = "F{i}"\n')
    out.append('[[rule]]\nname = "last"\nmatch = { header = "Subject", equals = "bench" }\ncopy = "Bench"\n')
    return "\n".join(out)


def evaluation_cost() -> tuple[float, float]:
    """Microseconds per message to evaluate 100 rules, and 0 rules (pure, no database)."""
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    from mail.rules.evaluate import evaluate
    from mail.rules.language import parse_rules
    from mail.rules.plan import MessageFacts

    class Gate:
        def vacation_due(self, **kw):
            return True

        def redirects_allowed(self, **kw):
            return True

    raw = message()
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    facts = MessageFacts(
        envelope_from="carol@example.net",
        recipient="bob@example.com",
        headers=tuple((n, str(v)) for n, v in parsed.items()),
        size=len(raw),
        authenticated=False,
        raw=raw,
    )
    results = []
    for text in (hundred_rules(), ""):
        ruleset = parse_rules(text)
        rules = ruleset.for_recipient(facts.recipient)
        n = 20000
        started = time.perf_counter()
        for _ in range(n):
            evaluate(ruleset, facts, gate=Gate(), rules=rules)
        results.append((time.perf_counter() - started) / n * 1e6)
    return results[0], results[1]


def throughput(data_dir: str, rules_text: str) -> float:
    from mail.services.rules import set_rules

    set_rules(text=rules_text, data_dir=Path(data_dir))
    server, ports = start(_everlock_server, data_dir)
    try:
        return asyncio.run(drive(ports[0], sender="carol@example.net", rcpt="bob@example.com", auth=None))
    finally:
        server.terminate()
        server.join()


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="everlock-bench-rules-")
    prepare(data_dir, dkim=False)
    with_rules, without = evaluation_cost()
    print(f"evaluation per message: 100 rules {with_rules:7.1f} us, no rules {without:5.1f} us")
    none_rates, hundred_rates = [], []
    for _ in range(ROUNDS):
        none_rates.append(throughput(data_dir, ""))
        hundred_rates.append(throughput(data_dir, hundred_rules()))
    none_rate, hundred_rate = max(none_rates), max(hundred_rates)
    print(f"inbound: {MESSAGES} messages of 2 KB, {CLIENTS} concurrent clients, best of {ROUNDS} rounds")
    print(f"no rules:  {none_rate:8.1f} msgs/s  (rounds: {', '.join(f'{r:.1f}' for r in none_rates)})")
    print(f"100 rules: {hundred_rate:8.1f} msgs/s  (rounds: {', '.join(f'{r:.1f}' for r in hundred_rates)})")
    print(f"ratio:     {hundred_rate / none_rate:8.1%} (target >= 90%)")
    print(f"evaluation share of a message's time at the no-rules rate: {with_rules * 1e-6 * none_rate:.1%}")
    from mail.models import Message

    print(
        f"filed by the last of the 100 rules: {Message.objects.filter(folder__name='Bench').count()} messages"
    )


if __name__ == "__main__":
    main()
