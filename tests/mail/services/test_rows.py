"""RowInserter: many rows in one INSERT, the ids in the order of the rows."""

from datetime import UTC, datetime

import pytest
from django.db import connection

from mail.models import Folder, Mailbox, MailDomain, Message, MessageContent
from mail.services.rows import RowInserter


@pytest.mark.django_db
def test_rows_go_in_with_their_values_and_ids_in_order():
    domain = MailDomain.objects.create(name="example.com")
    mailbox = Mailbox.objects.create(domain=domain, local_part="bob")
    folder = Folder.objects.create(mailbox=mailbox, name="inbox")
    when = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)
    # More rows than one statement may carry parameters for: they are split.
    count = connection.ops.bulk_batch_size(["storage_name", "size", "created_at"], []) or 1000
    count = min(count * 2 + 3, 5000)
    contents = RowInserter(MessageContent, ["storage_name", "size", "created_at"])
    ids = contents.insert([(f"n{i}.eml", i, when) for i in range(count)], returning_ids=True)
    assert len(ids) == count
    by_id = MessageContent.objects.in_bulk(ids)
    assert [by_id[pk].storage_name for pk in ids] == [f"n{i}.eml" for i in range(count)]
    assert by_id[ids[7]].size == 7 and by_id[ids[7]].created_at == when

    fields = ["folder", "content", "prepended_headers", "envelope_from", "envelope_to", "header_from"]
    fields += ["header_to", "subject", "date", "message_id", "size", "received_at", "seen", "flagged"]
    messages = RowInserter(Message, fields)
    row = (folder.id, ids[0], b"X-Rule: yes\r\n", "", "bob@example.com", "", "", "caf\u00e9", None, "", 42)
    (pk,) = messages.insert([(*row, when, True, False)], returning_ids=True)
    message = Message.objects.get(pk=pk)
    assert bytes(message.prepended_headers) == b"X-Rule: yes\r\n"
    assert (message.subject, message.date, message.size, message.received_at) == ("caf\u00e9", None, 42, when)
    assert (message.seen, message.flagged) == (True, False)
    assert message.content.storage_name == "n0.eml" and message.folder == folder
    assert messages.insert([]) == []
