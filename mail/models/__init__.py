from mail.models.domains import DkimRotation, MailDomain
from mail.models.mailboxes import Folder, Mailbox
from mail.models.messages import Message, MessageContent
from mail.models.outbound import OutboundDelivery, OutboundRecipient
from mail.models.rules import RedirectRecord, RuleSet, VacationReply
from mail.models.tls import MtaStsPolicy, TlsResult

__all__ = [
    "DkimRotation",
    "Folder",
    "MailDomain",
    "Mailbox",
    "Message",
    "MessageContent",
    "MtaStsPolicy",
    "OutboundDelivery",
    "OutboundRecipient",
    "RedirectRecord",
    "RuleSet",
    "TlsResult",
    "VacationReply",
]
