"""IMAP4rev1 for users' mail clients: pymap speaks the protocol, mail.imap.backend answers
from the mail models (mail.imap.store), mail.imap.listener binds ports 143 and 993."""
