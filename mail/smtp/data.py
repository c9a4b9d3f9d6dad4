"""Reading the message of a DATA command (RFC 5321 section 4.1.1.4) in blocks.

aiosmtpd reads DATA a line at a time, a loop turn and a list item per line; a 100 KB
message is some 1,300 of them. Here the reader is asked for everything up to the next ".\r\n"
(or as much as its limit allows), so a message costs a few reads, each scanned by C code
for the end of the data and split once to check the length of its lines.
"""

from __future__ import annotations

import asyncio

from mail import replies
from mail.replies import Reply

_END = b".\r\n"


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> tuple[bytes, Reply | None]:
    """Read the data of a DATA command up to its lone "." line; return (the message with
    its dot-stuffing undone, None), or (b"", the reply) when a line is longer than
    `line_limit` bytes (without CRLF) or the message is larger than `size_limit`. The
    whole data is read either way (RFC 5321 section 4.2.5: the reply follows it).

    Raises asyncio.IncompleteReadError when the connection ends before the data does.
    """
    data = bytearray()
    tail = b"\r\n"  # the last two bytes before what is read next: a line starts here
    line_so_far = 0  # bytes of the current line before what is read next
    size = 0
    failure: Reply | None = None
    while True:
        try:
            piece = await reader.readuntil(_END)
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)
        at_end = piece.endswith(_END) and (piece if len(piece) >= 5 else tail + piece)[-5:-3] == b"\r\n"
        if at_end:
            piece = piece[:-3]
        size += len(piece)
        # Each line's length without its LF; the first continues the line before.
        lines = piece.split(b"\n")
        if failure is None:
            if line_so_far + len(lines[0]) > line_limit + 1 or max(map(len, lines)) > line_limit + 1:
                failure = replies.LINE_TOO_LONG
            elif size_limit and size > size_limit:
                failure = replies.MESSAGE_TOO_BIG
            if failure is not None:
                data.clear()
            else:
                data += piece
        line_so_far = line_so_far + len(piece) if len(lines) == 1 else len(lines[-1])
        if at_end:
            break
        tail = piece[-2:] if len(piece) >= 2 else (tail + piece)[-2:]
    if failure is not None:
        return b"", failure
    # RFC 5321 section 4.5.2: a line's leading dot was doubled by the client.
    if data.startswith(b"."):
        del data[0]
    return bytes(data).replace(b"\r\n.", b"\r\n"), None
