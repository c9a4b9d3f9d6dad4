"""A refusal holds nothing once answered: the SMTP server keeps no frame (and so no message
data) of a refused recipient or message alive."""

import gc
import smtplib
import types

from mail.services.delivery import check_local_recipient
from mail.smtp.handler import check_data


def _live_frames(code: types.CodeType) -> list[types.FrameType]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, types.FrameType) and o.f_code is code]


def test_refusals_pin_no_frames(smtp, example_com):
    """Refused recipients and refused messages leave none of the frames they passed through
    (and the message data those hold) alive once answered."""
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        assert client.mail("carol@example.net") == (250, b"2.1.0 Sender OK")
        for n in range(3):
            assert client.rcpt(f"nobody{n}@example.com") == (550, b"5.1.1 Mailbox unavailable")
            assert client.rcpt(f"someone{n}@example.org") == (554, b"5.7.1 Relaying denied")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        for _ in range(3):
            # More Received headers than the listener's max_hops (10): a loop.
            message = b"Received: from a\r\n" * 11 + b"Subject: x\r\n\r\n" + b"line\r\n" * 10_000
            assert client.data(message) == (554, b"5.4.6 Too many hops, mail loop detected")
            client.mail("carol@example.net")
            client.rcpt("bob@example.com")
    assert _live_frames(check_local_recipient.__code__) == []
    assert _live_frames(check_data.__code__) == []
