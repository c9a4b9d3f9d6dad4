"""Django admin for mail: one module per concept, imported here to register."""

from mail.admin import (
    domains,  # noqa: F401
    mailboxes,  # noqa: F401
    messages,  # noqa: F401
    outbound,  # noqa: F401
    rules,  # noqa: F401
    tls,  # noqa: F401
)
