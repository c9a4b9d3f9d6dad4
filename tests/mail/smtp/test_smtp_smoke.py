import smtplib

from mail.models import Message


def test_inbound_local_delivery(smtp, example_com):
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port) as client:
        client.ehlo("client.example.net")
        client.mail("carol@example.net")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        code, text = client.data(b"From: carol@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
        assert (code, text) == (250, b"2.0.0 Accepted")
    msg = Message.objects.get()
    assert msg.folder.name == "inbox"
    assert msg.subject == "hi"
