"""IMAP through Python's imaplib and IMAPClient against the real listeners: mail delivered by
SMTP read over IMAP, flags, folders, copies and moves, APPEND, quota, shared mailboxes, IDLE,
and what bad input gets."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import ssl

import pytest
from imapclient import IMAPClient

from mail.models import Folder, Mailbox, Message, MessageContent
from tests.mail.imap.conftest import message
from tests.mail.smtp.conftest import tls_context


class RawIMAP:
    """Tagged commands over a plain socket; command() returns the tagged answer without the
    tag (untagged lines are skipped)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self.tag = 0
        assert self.reader.readline().startswith(b"* OK ")

    def command(self, line: bytes) -> bytes:
        self.tag += 1
        tag = b"t%d" % self.tag
        self.sock.sendall(tag + b" " + line + b"\r\n")
        self.untagged = []
        while True:
            answer = self.reader.readline()
            if answer.startswith(b"* "):
                self.untagged.append(answer[2:].rstrip(b"\r\n"))
            elif answer.startswith(tag + b" "):
                return answer[len(tag) + 1 :].rstrip(b"\r\n")
            if not answer:
                raise ConnectionError("closed")

    def close(self) -> None:
        self.sock.close()


def deliver(smtp_port: int, to: str, subject: str, body: str = "Hello.") -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port) as client:
        client.sendmail("zoe@example.net", [to], message(subject, to=to, body=body))


@pytest.fixture
def smtp_port(start_smtp, mail_users) -> int:
    return start_smtp().inbound_port


def test_mail_delivered_by_smtp_is_read_over_imap(imap, smtp_port):
    deliver(smtp_port, "alice@example.com", "first", body="The first body.")
    deliver(smtp_port, "alice@example.com", "second")
    client = imap.login()
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    subjects = [part[1] for part in data if isinstance(part, tuple)]
    assert subjects == [b"Subject: first\r\n\r\n", b"Subject: second\r\n\r\n"]
    assert b"UID 1 FLAGS (\\Recent)" in data[0][0] and b"UID 2 FLAGS (\\Recent)" in data[2][0]
    typ, data = client.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"The first body.\r\n"
    # Reading the body set \Seen, as RFC 9051 asks, and it is stored.
    assert Message.objects.get(subject="first").seen
    assert not Message.objects.get(subject="second").seen
    client.logout()


def test_uids_stay_stable_across_sessions_and_grow_with_new_mail(imap, smtp_port):
    deliver(smtp_port, "alice@example.com", "one")
    client = imap.login()
    client.select("INBOX")
    validity = client.response("UIDVALIDITY")[1][0]
    client.logout()
    deliver(smtp_port, "alice@example.com", "two")
    client = imap.login()
    client.select("INBOX")
    assert client.response("UIDVALIDITY")[1][0] == validity
    _typ, data = client.uid("SEARCH", None, "ALL")
    assert data == [b"1 2"]
    status = client.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
    assert status == ("OK", [b"INBOX (MESSAGES 2 UIDNEXT 3 UNSEEN 2)"])
    client.logout()


def test_flags_and_keywords_persist_and_show_in_the_database(imap, smtp_port):
    deliver(smtp_port, "alice@example.com", "flag me")
    client = imap.login()
    client.select("INBOX")
    typ, data = client.store("1", "+FLAGS", r"(\Flagged \Answered $Work)")
    assert typ == "OK"
    assert b"\\Answered" in data[0] and b"\\Flagged" in data[0] and b"$Work" in data[0]
    client.logout()
    stored = Message.objects.get(subject="flag me")
    assert sorted(stored.flags) == ["$Work", "\\Answered", "\\Flagged"]
    client = imap.login()
    client.select("INBOX")
    typ, data = client.fetch("1", "(FLAGS)")
    assert data == [b"1 (FLAGS (\\Answered \\Flagged $Work))"]
    client.store("1", "-FLAGS", r"($Work)")
    client.logout()
    assert Message.objects.get(subject="flag me").flags == ["\\Answered", "\\Flagged"]


def test_special_use_folders_namespace_and_rights(imap, mail_users):
    client = imap.login()
    typ, listed = client.list()
    assert typ == "OK"
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in listed
    for use in (b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"):
        assert any(use in line for line in listed), use
    assert b'(\\HasNoChildren) "/" Shared/carol@example.com/INBOX' in listed
    # No grant on dave@example.com: not listed, not reachable.
    assert not any(b"dave" in line for line in listed)
    assert client.select('"Shared/dave@example.com/INBOX"')[0] == "NO"
    assert client.namespace() == ("OK", [b'(("" "/")) NIL (("Shared/" "/"))'])
    assert client.myrights("INBOX") == ("OK", [b"INBOX lrswipkxte"])
    assert client.myrights('"Shared/carol@example.com/INBOX"') == (
        "OK",
        [b"Shared/carol@example.com/INBOX lr"],
    )
    typ, acl = client.getacl('"Shared/carol@example.com/INBOX"')
    assert acl == [b'Shared/carol@example.com/INBOX "alice" lr "bob" lrswipkxte']
    assert client._simple_command("SETACL", "INBOX", "bob", "lr")[0] == "NO"
    client.logout()


def test_a_reader_grant_opens_read_only(imap, smtp_port):
    deliver(smtp_port, "carol@example.com", "for carol")
    client = imap.login()
    typ, data = client.select('"Shared/carol@example.com/INBOX"', readonly=True)
    assert (typ, data) == ("OK", [b"1"])
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: for carol\r\n\r\n"
    typ, data = client.store("1", "+FLAGS", r"(\Seen)")
    assert (typ, data) == ("NO", [b"[READ-ONLY] Mailbox is read-only."])
    typ, data = client.append('"Shared/carol@example.com/INBOX"', None, None, message("injected"))
    assert typ == "NO"
    client.logout()
    assert not Message.objects.get(subject="for carol").seen
    assert not Message.objects.filter(subject="injected").exists()
    # bob, a writer on carol's mailbox, may change it.
    client = imap.login("bob", "bob-secret")
    client.select('"Shared/carol@example.com/INBOX"')
    assert client.store("1", "+FLAGS", r"(\Seen)")[0] == "OK"
    client.logout()
    assert Message.objects.get(subject="for carol").seen


def test_copy_move_expunge_and_the_stored_content(imap, smtp_port):
    deliver(smtp_port, "alice@example.com", "keep")
    deliver(smtp_port, "alice@example.com", "move me")
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    assert raw.command(b"CREATE Projects/2026").startswith(b"OK ")
    raw.command(b"SELECT INBOX")
    # RFC 4315 COPYUID: the destination's UIDVALIDITY, the source UIDs, the new UIDs.
    assert re.fullmatch(
        rb"OK \[COPYUID \d+ 1 1\] UID COPY completed\.", raw.command(b"UID COPY 1 Projects/2026")
    )
    # RFC 6851 §4.3: a MOVE sends its COPYUID untagged, before the EXPUNGE.
    assert raw.command(b"UID MOVE 2 Archive") == b"OK UID MOVE completed."
    assert re.fullmatch(rb"OK \[COPYUID \d+ 2 1\] .*", raw.untagged[0]) and raw.untagged[1] == b"2 EXPUNGE"
    raw.close()
    client = imap.login()
    client.select("INBOX")
    _typ, data = client.uid("SEARCH", None, "ALL")
    assert data == [b"1"]
    status = client.status("Archive", "(MESSAGES)")
    assert status == ("OK", [b"Archive (MESSAGES 1)"])
    # The original and its copy share one stored content; it goes with the last of them.
    contents = MessageContent.objects.count()
    client.store("1", "+FLAGS", r"(\Deleted)")
    assert client.expunge() == ("OK", [b"1"])
    assert MessageContent.objects.count() == contents
    client.select("Projects/2026")
    client.store("1", "+FLAGS", r"(\Deleted)")
    client.expunge()
    assert MessageContent.objects.count() == contents - 1
    client.logout()


def test_append_delete_and_rename_folders(imap, mail_users):
    client = imap.login()
    typ, data = client.append("Drafts", r"(\Draft)", None, message("draft one"))
    assert typ == "OK" and data[0].startswith(b"[APPENDUID ") and data[0].endswith(b" 1] APPEND completed.")
    draft = Message.objects.get(subject="draft one")
    assert draft.folder.name == "Drafts" and draft.flags == ["\\Draft"]
    assert client.create("Old")[0] == "OK"
    assert client.create("Old")[0] == "NO"
    assert client.rename("Old", "New")[0] == "OK"
    names = [line.rsplit(b" ", 1)[1] for line in client.list()[1]]
    assert b"New" in names and b"Old" not in names
    assert client.delete("New")[0] == "OK"
    assert client.delete("INBOX")[0] == "NO"
    assert client.unsubscribe("Junk")[0] == "OK"
    assert not any(line.endswith(b" Junk") for line in client.lsub()[1])
    client.logout()
    mailbox = Mailbox.objects.get(local_part="alice")
    assert not Folder.objects.filter(mailbox=mailbox, name__in=["Old", "New"]).exists()


def test_quota_is_reported_and_enforced(imap, mail_users):
    Mailbox.objects.filter(local_part="alice").update(quota=4096)
    client = imap.login()
    assert client.getquotaroot("INBOX") == (
        "OK",
        [[b'INBOX "alice@example.com"'], [b'"alice@example.com" (STORAGE 0 4)']],
    )
    assert client.append("INBOX", None, None, message("small"))[0] == "OK"
    typ, data = client.append("INBOX", None, None, message("big", body="x" * 5000))
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    assert not Message.objects.filter(subject="big").exists()
    client.logout()


def test_idle_hears_of_mail_delivered_by_smtp(imap, smtp_port):
    with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as client:
        client.login("alice", "alice-secret")
        client.select_folder("INBOX")
        client.idle()
        deliver(smtp_port, "alice@example.com", "pushed")
        responses = client.idle_check(timeout=5)
        client.idle_done()
    assert (1, b"EXISTS") in responses


def test_starttls_and_implicit_tls_logins(imap, mail_users):
    client = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
    assert "STARTTLS" in client.capabilities
    client.starttls(ssl_context=tls_context())
    assert client.login("alice@example.com", "alice-secret")[0] == "OK"
    client.logout()
    client = imaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=tls_context(), timeout=10)
    assert "STARTTLS" not in client.capabilities
    assert client.login("alice", "alice-secret")[0] == "OK"
    client.logout()
    with pytest.raises(ssl.SSLError):
        plain = socket.create_connection(("127.0.0.1", imap.tls_port), timeout=5)
        tls_context().wrap_socket(plain).close()
        raise ssl.SSLError("handshake worked")  # reached only when the TLS port is TLS


def test_wrong_passwords_are_refused_and_throttled(imap, mail_users, settings):
    settings.EVERLOCK_AUTH_MAX_FAILURES_PER_ADDRESS = 3
    client = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
    for _ in range(3):
        with pytest.raises(imaplib.IMAP4.error) as refused:
            client.login("alice", "wrong")
        assert str(refused.value) == "b'[AUTHENTICATIONFAILED] Invalid authentication credentials.'"
    # Refused before the password is looked at, even the right one.
    with pytest.raises(imaplib.IMAP4.error) as refused:
        client.login("alice", "alice-secret")
    assert str(refused.value) == "b'[UNAVAILABLE] Too many failed logins, try again later.'"
    client.logout()


def test_bad_input_gets_tagged_answers(imap, mail_users, settings):
    sock = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"* OK ")
    sock.sendall(b"a1 LOGIN alice alice-secret\r\n")
    assert reader.readline().startswith(b"a1 OK ")
    sock.sendall(b"a2 NOSUCHCOMMAND\r\n")
    assert reader.readline() == b"a2 BAD NOSUCHCOMMAND: Unknown command.\r\n"
    sock.sendall(b"a3 SELECT " + b"x" * (settings.EVERLOCK_IMAP_MAX_LINE + 10) + b"\r\n")
    assert reader.readline().startswith(b"a3 BAD ")
    # A mailbox name with an unclosed modified UTF-7 sequence, as an atom and as a literal:
    # no mailbox can have it (RFC 3501 §5.1.3).
    sock.sendall(b"a4 SELECT &Jjo\r\n")
    assert reader.readline() == b"a4 NO [CANNOT] Invalid mailbox name.\r\n"
    sock.sendall(b"a4 CREATE {4+}\r\n&Jjo\r\n")
    assert reader.readline() == b"a4 NO [CANNOT] Invalid mailbox name.\r\n"
    sock.sendall(b"a4 FETCH 1:* (FLAGS BODY[HEADER.FIELDS ()])\r\n")
    assert reader.readline() == b"a4 BAD FETCH: Must select a mailbox first.\r\n"
    sock.sendall(b'a4 SEARCH SUBJECT "AT&T"\r\n')
    assert reader.readline() == b"a4 BAD SEARCH: Must select a mailbox first.\r\n"
    sock.sendall(b"a5 NOOP\r\n")
    assert reader.readline() == b"a5 OK NOOP completed.\r\n"
    # A literal larger than any message may be is not read: the connection ends, nothing is
    # stored, and the server goes on serving others.
    sock.sendall(b"a6 APPEND INBOX {999999999999+}\r\n")
    assert reader.readline() == b""
    sock.close()
    assert not Message.objects.exists()
    imap.login().logout()


def test_sessions_per_user_are_limited(imap, mail_users, settings):
    settings.EVERLOCK_IMAP_MAX_SESSIONS_PER_USER = 2
    first, second = imap.login(), imap.login()
    third = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error) as refused:
        third.login("alice", "alice-secret")
    assert str(refused.value) == "b'[LIMIT] Too many sessions open for this user.'"
    assert imap.login("bob", "bob-secret").logout()[0] == "BYE"
    first.logout()
    assert third.login("alice", "alice-secret")[0] == "OK"
    for client in (second, third):
        client.logout()


def test_list_extended_and_list_status(imap, smtp_port):
    deliver(smtp_port, "alice@example.com", "unread")
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    raw.command(b"UNSUBSCRIBE Junk")
    assert raw.command(b'LIST (SPECIAL-USE) "" "*"') == b"OK LIST completed."
    assert sorted(raw.untagged) == [
        b'LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'LIST (\\HasNoChildren \\Junk) "/" Junk',
        b'LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'LIST (\\HasNoChildren \\Trash) "/" Trash',
    ]
    assert raw.command(b'LIST "" (INBOX Junk) RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))') == (
        b"OK LIST completed."
    )
    assert raw.untagged == [
        b'LIST (\\HasNoChildren \\Subscribed) "/" INBOX',
        b"STATUS INBOX (MESSAGES 1 UNSEEN 1)",
        b'LIST (\\HasNoChildren \\Junk) "/" Junk',
        b"STATUS Junk (MESSAGES 0 UNSEEN 0)",
    ]
    assert raw.command(b'LIST (SUBSCRIBED) "" "J*"') == b"OK LIST completed."
    assert raw.untagged == []
    assert raw.command(b'LIST (BOGUS) "" "*"') == b"BAD LIST: Invalid arguments."
    raw.close()
