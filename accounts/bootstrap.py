"""The first admin user, from the options of `everlock serve` and `everlock runadminssh`.

The password comes from a file (--admin-password-file, e.g. a mounted secret), the
environment (EVERLOCK_ADMIN_PASSWORD), or --admin-password; the first two show in no process
list. A password Django's validators refuse is refused with the reason, unless
--allow-weak-admin-password says to take it anyway. An existing user is left as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from accounts.services import AccountError, normalize_new_login, password_problems, user_add


def add_admin_arguments(parser) -> None:
    parser.add_argument("--admin-user", default=None, help="create this admin user when missing")
    parser.add_argument(
        "--admin-password-file",
        default=None,
        metavar="PATH",
        help="the admin user's password: the first line of this file",
    )
    parser.add_argument(
        "--admin-password",
        default=None,
        help="the admin user's password (visible to local users in ps: prefer --admin-password-file "
        "or EVERLOCK_ADMIN_PASSWORD)",
    )
    parser.add_argument(
        "--allow-weak-admin-password",
        action="store_true",
        help="create the admin user even when the password validators refuse its password",
    )


def admin_password(opts: dict) -> str | None:
    """The admin password the options (or EVERLOCK_ADMIN_PASSWORD) give, or None. Raises
    CommandError for both options at once or an unreadable file."""
    if opts["admin_password_file"] and opts["admin_password"]:
        raise CommandError("give --admin-password-file or --admin-password, not both")
    if opts["admin_password_file"]:
        path = Path(opts["admin_password_file"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--admin-password-file {path}: {exc}") from None
        if not lines or not lines[0]:
            raise CommandError(f"--admin-password-file {path}: the first line is empty")
        return lines[0]
    return opts["admin_password"] or settings.EVERLOCK_ADMIN_PASSWORD or None


def check_admin_options(opts: dict) -> str | None:
    """Check the admin options before anything starts; return the password (None without
    --admin-user). Raises CommandError saying what is wrong, a weak password included."""
    password = admin_password(opts)
    if not opts["admin_user"]:
        if opts["admin_password_file"] or opts["admin_password"]:
            raise CommandError("--admin-password and --admin-password-file need --admin-user")
        return None
    try:
        normalize_new_login(opts["admin_user"])
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    if password is None:
        raise CommandError(
            "--admin-user needs a password: --admin-password-file, EVERLOCK_ADMIN_PASSWORD "
            "or --admin-password"
        )
    problems = password_problems(name=opts["admin_user"], password=password)
    if problems and not opts["allow_weak_admin_password"]:
        raise CommandError(
            f"weak admin password: {' '.join(problems)} (--allow-weak-admin-password takes it anyway)"
        )
    return password


def ensure_admin(opts: dict, password: str | None, *, log: logging.Logger) -> None:
    """Create the --admin-user with `password` when missing (after check_admin_options),
    saying so on the command's `log`."""
    if not opts["admin_user"]:
        return
    try:
        user, created = user_add(name=opts["admin_user"], password=password, is_admin=True)
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    if created:
        log.info("admin user %s created", user.username)
