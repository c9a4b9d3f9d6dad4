"""DATA read in blocks (mail.smtp.data): the end of the data, dot-stuffing, the line and size
limits, and what follows the data left for the next command, whatever the block sizes."""

import asyncio

import pytest

from mail import replies
from mail.smtp.data import read_data


def _read(
    wire: bytes, *, limit: int = 64, size_limit: int | None = None, line_limit: int = 40, feed: int = 7
):
    """Feed `wire` to a StreamReader of `limit` in pieces of `feed` bytes; return what
    read_data gives and what the reader still holds."""

    async def main():
        reader = asyncio.StreamReader(limit=limit)
        for start in range(0, len(wire), feed):
            reader.feed_data(wire[start : start + feed])
        reader.feed_eof()
        result = await read_data(reader, size_limit=size_limit, line_limit=line_limit)
        return result, await reader.read()

    return asyncio.run(main())


@pytest.mark.parametrize("feed", [1, 3, 7, 64, 10_000])
def test_the_message_ends_at_a_lone_dot_and_what_follows_stays(feed):
    wire = b"Subject: x\r\n\r\n..leading dot\r\nend.\r\n. \r\n.x\r\nlast\r\n.\r\nQUIT\r\n"
    (content, failure), rest = _read(wire, feed=feed)
    assert failure is None
    assert content == b"Subject: x\r\n\r\n.leading dot\r\nend.\r\n \r\nx\r\nlast\r\n"
    assert rest == b"QUIT\r\n"


def test_an_empty_message():
    assert _read(b".\r\nRSET\r\n") == ((b"", None), b"RSET\r\n")
    assert _read(b"\r\n.\r\n") == ((b"\r\n", None), b"")
    assert _read(b"..\r\n.\r\n") == ((b".\r\n", None), b"")


@pytest.mark.parametrize("feed", [1, 5, 1000])
def test_a_long_message_is_read_past_the_readers_limit(feed):
    body = b"".join(b"line %05d %s\r\n" % (i, b"x" * 20) for i in range(500))
    (content, failure), rest = _read(body + b".\r\nNEXT", feed=feed)
    assert (content, failure, rest) == (body, None, b"NEXT")


@pytest.mark.parametrize("feed", [1, 9, 1000])
def test_a_line_over_the_limit_is_refused_after_the_whole_data(feed):
    just = b"a" * 40 + b"\r\n"
    assert _read(b"x\r\n" + just + b".\r\n", feed=feed)[0] == (b"x\r\n" + just, None)
    for long in (b"a" * 41 + b"\r\n", b"x\r\n" + b"a" * 41 + b"\r\n", b"a" * 200 + b"\r\nok\r\n"):
        assert _read(long + b".\r\nQUIT\r\n", feed=feed) == ((b"", replies.LINE_TOO_LONG), b"QUIT\r\n")


def test_a_message_over_the_size_limit_is_refused_after_the_whole_data():
    body = b"0123456789\r\n" * 10
    assert _read(body + b".\r\n", size_limit=len(body))[0] == (body, None)
    assert _read(body + b".\r\nQUIT\r\n", size_limit=len(body) - 1) == (
        (b"", replies.MESSAGE_TOO_BIG),
        b"QUIT\r\n",
    )


def test_a_connection_that_ends_inside_the_data():
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"Subject: x\r\n\r\nno end")
