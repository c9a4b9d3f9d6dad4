"""IMAP4rev1 for users' mail clients.

pymap speaks the protocol; Everlock's backend answers from the mail models:

- listener: binds ports 143 (STARTTLS) and 993 (implicit TLS), limits, runs pymap's connection
- config: pymap's settings; commands: the commands Everlock adds (NAMESPACE, ACL, QUOTA, ...)
- login: users and their sessions; session: the user's folders as one hierarchy
- folders: a folder's messages as sessions track them; messages: contents and their cache
- store: the database side (synchronous), run in worker threads (threads)
- notify: waking sessions when other processes change a folder
"""
