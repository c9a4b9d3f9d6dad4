"""IMAP4rev1 (RFC 3501, with the extensions mail clients use) for users' mail clients.

- listener: binds ports 143 (STARTTLS) and 993 (implicit TLS), connection limits, idle sweep
- server: one connection: reading commands, the session's state, the commands of any state
- parser: command arguments; responses: strings, mailbox names, sets as bytes
- mailboxes: the commands of the authenticated state; selected: those of the selected state
- fetch, search, sort: FETCH items, SEARCH keys, SORT and THREAD; mime: ENVELOPE, BODYSTRUCTURE
- session: the user's folders as one hierarchy; folders: a folder's messages as sessions see them
- store: the database side (synchronous), run in worker threads (threads)
- notify: waking sessions when other processes change a folder
"""
