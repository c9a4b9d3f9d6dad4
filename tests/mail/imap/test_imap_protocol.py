"""The protocol engine's extensions, transcript by transcript over a plain socket: SASL
AUTHENTICATE, ENABLE/CONDSTORE, ESEARCH and SEARCHRES, SORT and THREAD, BINARY, MULTIAPPEND,
COMPRESS=DEFLATE, literal limits; and the summaries kept with the stored messages."""

from __future__ import annotations

import base64
import re
import zlib

from mail.models import MessageContent
from tests.mail.imap.conftest import message
from tests.mail.imap.test_imap_sessions import RawIMAP


def _append(raw: RawIMAP, folder: bytes, data: bytes, flags: bytes = b"") -> bytes:
    return raw.command(b"APPEND " + folder + b" " + flags + b"{%d+}\r\n" % len(data) + data)


def test_authenticate_plain_with_and_without_an_initial_response(imap, mail_users):
    raw = RawIMAP(imap.port)
    raw.command(b"CAPABILITY")
    assert b"AUTH=PLAIN" in raw.untagged[0]
    token = base64.b64encode(b"\0alice\0wrong")
    assert raw.command(b"AUTHENTICATE PLAIN " + token) == (
        b"NO [AUTHENTICATIONFAILED] Invalid authentication credentials."
    )
    token = base64.b64encode(b"\0alice\0alice-secret")
    assert raw.command(b"AUTHENTICATE PLAIN " + token).startswith(b"OK [CAPABILITY IMAP4rev1 ")
    raw.close()
    raw = RawIMAP(imap.port)
    raw.sock.sendall(b"a AUTHENTICATE PLAIN\r\n")
    assert raw.reader.readline() == b"+ \r\n"
    raw.sock.sendall(base64.b64encode(b"\0bob\0bob-secret") + b"\r\n")
    assert raw.reader.readline().startswith(b"a OK [CAPABILITY ")
    raw.close()


def test_condstore_store_unchangedsince_and_esearch(imap, mail_users):
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    for n in range(3):
        assert _append(raw, b"INBOX", message(f"m{n}")).startswith(b"OK [APPENDUID ")
    assert raw.command(b"ENABLE CONDSTORE") == b"OK ENABLE completed."
    assert raw.untagged == [b"ENABLED CONDSTORE"]
    assert raw.command(b"SELECT INBOX").startswith(b"OK [READ-WRITE]")
    highest = int(
        next(re.search(rb"HIGHESTMODSEQ (\d+)", line)[1] for line in raw.untagged if b"HIGHEST" in line)
    )
    raw.command(b"STORE 2 +FLAGS.SILENT (\\Flagged)")
    # RFC 7162 §3.1.3: message 2 changed since `highest`, so its conditional STORE fails.
    assert raw.command(b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % highest) == (
        b"OK [MODIFIED 2] Conditional STORE failed."
    )
    assert raw.command(b"SEARCH RETURN (MIN MAX COUNT) SEEN") == b"OK SEARCH completed."
    assert raw.untagged[-1].startswith(b'ESEARCH (TAG "t') and raw.untagged[-1].endswith(
        b" MIN 1 MAX 3 COUNT 2"
    )
    # SEARCHRES (RFC 5182): the saved result is "$".
    raw.command(b"SEARCH RETURN (SAVE) FLAGGED")
    assert raw.command(b"FETCH $ (FLAGS)") == b"OK FETCH completed."
    assert [line for line in raw.untagged if b"FETCH" in line] == [
        b"2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (highest + 1)
    ]
    raw.close()


def test_sort_and_thread(imap, mail_users):
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    _append(raw, b"INBOX", b"Subject: b\r\nMessage-ID: <1@x>\r\n\r\none\r\n")
    _append(raw, b"INBOX", b"Subject: Re: b\r\nMessage-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\n\r\ntwo\r\n")
    _append(raw, b"INBOX", b"Subject: a\r\nMessage-ID: <3@x>\r\n\r\nthree\r\n")
    raw.command(b"SELECT INBOX")
    assert raw.command(b"SORT (SUBJECT) UTF-8 ALL") == b"OK SORT completed."
    assert raw.untagged == [b"SORT 3 1 2"]
    assert raw.command(b"UID SORT (REVERSE SIZE) UTF-8 ALL") == b"OK UID SORT completed."
    assert raw.untagged == [b"SORT 2 3 1"]
    assert raw.command(b"THREAD REFERENCES UTF-8 ALL") == b"OK THREAD completed."
    assert raw.untagged == [b"THREAD (1 2)(3)"]
    assert raw.command(b"SORT (SUBJECT) KOI8-R ALL").startswith(b"NO [BADCHARSET")
    raw.close()


def test_multiappend_binary_and_the_kept_summaries(imap, mail_users):
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    body = base64.encodebytes(b"\0\1binary").replace(b"\n", b"\r\n")
    first = (
        b"From: Zoe <zoe@example.net>\r\nSubject: one\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body
    )
    second = message("two")
    answer = raw.command(
        b"APPEND Drafts (\\Draft) {%d+}\r\n%s (\\Seen) {%d+}\r\n%s" % (len(first), first, len(second), second)
    )
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 1:2\] APPEND completed\.", answer)
    raw.command(b"EXAMINE Drafts")
    assert raw.command(b"FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])") == b"OK FETCH completed."
    # RFC 3516 §4.2: content with NUL octets comes as a literal8.
    assert raw.untagged[-1] == b"1 FETCH (BINARY.SIZE[1] 8 BINARY[1] ~{8}"
    assert raw.command(b"FETCH 2 (FLAGS ENVELOPE)") == b"OK FETCH completed."
    assert raw.untagged[-1] == (
        b'2 FETCH (FLAGS (\\Seen \\Recent) ENVELOPE (NIL "two" (("Zoe" NIL "zoe" "example.net")) '
        b'(("Zoe" NIL "zoe" "example.net")) (("Zoe" NIL "zoe" "example.net")) '
        b'((NIL NIL "alice" "example.com")) NIL NIL NIL "<two@example.net>"))'
    )
    raw.close()
    # ENVELOPE, BODYSTRUCTURE and BODY are kept with the stored content from the APPEND on.
    kept = MessageContent.objects.exclude(imap_envelope=None)
    assert kept.count() == 2
    assert all(bytes(c.imap_structure).startswith(b'("') for c in kept)


def test_compress_deflate(imap, mail_users):
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    assert raw.command(b"COMPRESS DEFLATE") == b"OK DEFLATE active."
    deflate, inflate = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
    raw.sock.sendall(deflate.compress(b"c1 NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    answer = b""
    while not answer.endswith(b"\r\n"):
        answer += inflate.decompress(raw.sock.recv(4096))
    assert answer == b"c1 OK NOOP completed.\r\n"
    raw.close()


def test_literals_beyond_the_limit(imap, mail_users, settings):
    raw = RawIMAP(imap.port)
    raw.command(b"LOGIN alice alice-secret")
    # A synchronizing literal too large is refused before the client sends it.
    raw.sock.sendall(b"a1 APPEND INBOX {999999999999}\r\n")
    assert raw.reader.readline() == b"a1 BAD [TOOBIG] Literal too large.\r\n"
    assert raw.command(b"NOOP") == b"OK NOOP completed."
    raw.close()
