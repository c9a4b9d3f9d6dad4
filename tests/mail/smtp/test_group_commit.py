"""Group commit: a batch commits together, and one failing message fails alone."""

import asyncio
import smtplib
import threading

import pytest

from mail.models import Message, MessageContent
from mail.services.storage import message_storage, store_content
from mail.smtp.group_commit import GroupCommitter


def store(*, raw: bytes, files):
    if raw == b"bad":
        store_content(raw, files=files)
        raise RuntimeError("refused after storing")
    return store_content(raw, files=files).storage_name


def store_many(*, items, files):
    return [store(raw=item["raw"], files=files) for item in items]


store.many = store_many


async def run_batch(committer, raws):
    return await asyncio.gather(*(committer.call(store, raw=raw) for raw in raws), return_exceptions=True)


@pytest.mark.django_db(transaction=True)
def test_batch_with_a_failure_commits_the_others_only():
    committer = GroupCommitter()
    try:
        results = asyncio.run(run_batch(committer, [b"one", b"bad", b"two", b"three"]))
    finally:
        committer.stop()
    assert isinstance(results[1], RuntimeError)
    names = [results[0], results[2], results[3]]
    assert sorted(MessageContent.objects.values_list("storage_name", flat=True)) == sorted(names)
    storage = message_storage()
    assert [storage.open(n).read() for n in names] == [b"one", b"two", b"three"]
    assert MessageContent.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_batch_fast_path():
    committer = GroupCommitter()
    try:
        results = asyncio.run(run_batch(committer, [b"a%d" % n for n in range(10)]))
    finally:
        committer.stop()
    assert MessageContent.objects.count() == 10
    assert all(isinstance(r, str) for r in results)


def test_concurrent_sessions_all_delivered(smtp, example_com):
    replies = []

    def send(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=30) as client:
            client.ehlo("mx.example.net")
            client.mail("carol@example.net")
            client.rcpt("bob@example.com")
            replies.append(client.data(b"Subject: n%d\r\n\r\nbody\r\n" % n))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == [(250, b"2.0.0 Accepted")] * 15
    assert sorted(Message.objects.values_list("subject", flat=True)) == sorted(f"n{n}" for n in range(15))
    assert MessageContent.objects.count() == 15


def store_then_fail_after_commit(*, raw: bytes, files):
    from django.db import transaction

    name = store_content(raw, files=files).storage_name

    def fail() -> None:
        raise RuntimeError("an on-commit action failed")

    transaction.on_commit(fail)
    return name


@pytest.mark.django_db(transaction=True)
def test_failing_on_commit_action_keeps_the_committed_message():
    committer = GroupCommitter()
    try:
        (name,) = asyncio.run(run_batch_of(committer, store_then_fail_after_commit, [b"kept"]))
    finally:
        committer.stop()
    assert list(MessageContent.objects.values_list("storage_name", flat=True)) == [name]
    assert message_storage().open(name).read() == b"kept"


async def run_batch_of(committer, func, raws):
    return await asyncio.gather(*(committer.call(func, raw=raw) for raw in raws))


def store_other(*, raw: bytes, files):
    return "other:" + store_content(raw, files=files).storage_name


@pytest.mark.django_db(transaction=True)
def test_commit_in_the_calling_thread_groups_by_function():
    # What the commit thread does with the deliveries that arrived together: each function's
    # calls in batches of its own, a failing one alone, every call settled once.
    committer = GroupCommitter(max_batch=2)
    outcomes = {}

    def settle_as(key):
        def settle(ok, value):
            assert key not in outcomes
            outcomes[key] = (ok, value)

        return settle

    raws = [b"a", b"bad", b"c", b"d", b"e"]
    calls = [(store, {"raw": raw}, settle_as(raw)) for raw in raws]
    calls.insert(2, (store_other, {"raw": b"o"}, settle_as(b"o")))
    committer.commit(calls)
    assert outcomes[b"bad"][0] is False and isinstance(outcomes[b"bad"][1], RuntimeError)
    assert outcomes[b"o"][0] is True and outcomes[b"o"][1].startswith("other:")
    stored = {raw: value for raw, (ok, value) in outcomes.items() if ok and raw != b"o"}
    assert sorted(stored) == [b"a", b"c", b"d", b"e"]
    assert MessageContent.objects.count() == 5
    storage = message_storage()
    assert all(storage.open(name).read() == raw for raw, name in stored.items())
