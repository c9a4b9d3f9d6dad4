"""The admin web login's authentication backend: the password check every listener uses.

Django's login form (the admin's) calls django.contrib.auth.authenticate(), which asks this
backend; it checks through accounts.authentication, so the web login shares the SMTP and
SSH listeners' throttle, their equal cost for unknown and known logins, and their log lines.
Permissions are ModelBackend's.
"""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend

from accounts.authentication import authenticate


class ThrottledModelBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        """The active user for (username, password), or None. Raises
        accounts.throttle.Throttled for a client address or login that failed too often
        (the admin login form answers it with a form error)."""
        if username is None or password is None:
            return None
        address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
        user = authenticate(username, password, client_address=address, service="admin")
        if user is None or not self.user_can_authenticate(user):
            return None
        return user
