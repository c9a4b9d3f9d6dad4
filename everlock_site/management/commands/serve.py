"""`everlock serve`: every selected component in one process.

Backends start before the frontends that need them. Each component is an async `start`
function elsewhere (named in COMPONENTS) that binds its sockets and returns something with
`close()` (and optionally `wait_closed()`); this command only wires them together.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from dataclasses import dataclass

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.bootstrap import add_admin_arguments, check_admin_options, ensure_admin
from everlock_site.listen import parse_listen, stop_on_signals

log = logging.getLogger("everlock")


@dataclass(frozen=True)
class Component:
    name: str
    target: str  # "module:function"
    needs: tuple[str, ...] = ()


# In start order: backends first.
COMPONENTS = (
    Component("backend-dns-dns", "dns_zones.server.listener:start_dns"),
    Component("backend-admin-ssh", "sshadmin.server:prepare_console"),
    Component("backend-mail-smtp", "mail.delivery.worker:start_embedded_worker"),
    Component("frontend-ssh", "sshadmin.server:start_console", needs=("backend-admin-ssh",)),
    Component("frontend-smtp", "mail.smtp.server:start_listeners", needs=("backend-mail-smtp",)),
    Component("frontend-imap", "mail.imap.listener:start_listeners"),
    Component("frontend-http", "everlock_site.http:start_http"),
    Component("frontend-https", "everlock_site.https:start_https"),
)


class Command(BaseCommand):
    help = "Run the selected Everlock components (listeners, console, workers) in one process."

    def add_arguments(self, parser):
        parser.add_argument("--frontend-ssh", action="store_true", help="the SSH listener")
        parser.add_argument("--frontend-ssh-listen", default="0.0.0.0:2222", metavar="ADDR")
        parser.add_argument("--backend-admin-ssh", action="store_true", help="the admin console behind SSH")
        parser.add_argument("--frontend-smtp", action="store_true", help="the inbound SMTP listener")
        parser.add_argument("--frontend-smtp-listen", default="0.0.0.0:25", metavar="ADDR")
        parser.add_argument(
            "--frontend-smtp-submission", action="store_true", help="the authenticated submission listener"
        )
        parser.add_argument("--frontend-smtp-submission-listen", default="0.0.0.0:587", metavar="ADDR")
        parser.add_argument(
            "--frontend-smtp-submissions",
            action="store_true",
            help="submission over implicit TLS (RFC 8314)",
        )
        parser.add_argument("--frontend-smtp-submissions-listen", default="0.0.0.0:465", metavar="ADDR")
        parser.add_argument(
            "--backend-mail-smtp",
            action="store_true",
            help="mail delivery: local delivery and the outbound workers",
        )
        parser.add_argument(
            "--frontend-imap", action="store_true", help="the IMAP listeners (STARTTLS and implicit TLS)"
        )
        parser.add_argument(
            "--frontend-imap-listen",
            default=None,
            metavar="ADDR",
            help="IMAP with STARTTLS (default 0.0.0.0:143)",
        )
        parser.add_argument(
            "--frontend-imaps-listen",
            default=None,
            metavar="ADDR",
            help="IMAP over implicit TLS, RFC 8314 (default 0.0.0.0:993)",
        )
        parser.add_argument("--backend-dns-dns", action="store_true", help="the hosted DNS backend")
        parser.add_argument(
            "--frontend-dns-listen",
            default=None,
            metavar="ADDR",
            help="where the DNS server listens (default 0.0.0.0:53; implies --backend-dns-dns)",
        )
        parser.add_argument("--frontend-http", action="store_true", help="the admin web UI (Django admin)")
        parser.add_argument(
            "--frontend-http-listen",
            default="127.0.0.1:8080",
            metavar="ADDR",
            help="where the admin web UI listens (default 127.0.0.1:8080: keep it on the admin network)",
        )
        parser.add_argument(
            "--frontend-https",
            action="store_true",
            help="the HTTPS listener: MTA-STS policies, mail client autoconfiguration, the admin web UI",
        )
        parser.add_argument(
            "--frontend-https-listen",
            default=None,
            metavar="ADDR",
            help="where the HTTPS listener listens (default 0.0.0.0:443; implies --frontend-https)",
        )
        add_admin_arguments(parser)

    def handle(self, *args, **opts):
        if opts["frontend_dns_listen"]:
            opts["backend_dns_dns"] = True
        if opts["frontend_https_listen"]:
            opts["frontend_https"] = True
        imap_listens = opts["frontend_imap_listen"], opts["frontend_imaps_listen"]
        if any(imap_listens):
            opts["frontend_imap"] = True
        selected = {c.name for c in COMPONENTS if opts[c.name.replace("-", "_")]}
        if opts["frontend_smtp_submission"] or opts["frontend_smtp_submissions"]:
            selected.add("frontend-smtp")
        if not selected:
            raise CommandError("no component selected (see everlock serve --help)")
        for comp in COMPONENTS:
            for need in comp.needs:
                if comp.name in selected and need not in selected:
                    raise CommandError(f"--{comp.name} needs --{need}")
        admin_password = check_admin_options(opts)
        listens = {
            "ssh": parse_listen(opts["frontend_ssh_listen"], option="--frontend-ssh-listen"),
            "smtp": parse_listen(opts["frontend_smtp_listen"], option="--frontend-smtp-listen")
            if opts["frontend_smtp"]
            else None,
            "submission": parse_listen(
                opts["frontend_smtp_submission_listen"], option="--frontend-smtp-submission-listen"
            )
            if opts["frontend_smtp_submission"]
            else None,
            "submissions": parse_listen(
                opts["frontend_smtp_submissions_listen"], option="--frontend-smtp-submissions-listen"
            )
            if opts["frontend_smtp_submissions"]
            else None,
            "dns": parse_listen(opts["frontend_dns_listen"] or "0.0.0.0:53", option="--frontend-dns-listen"),
            "http": parse_listen(opts["frontend_http_listen"], option="--frontend-http-listen"),
            "https": parse_listen(
                opts["frontend_https_listen"] or "0.0.0.0:443", option="--frontend-https-listen"
            ),
            # --frontend-imap alone starts both IMAP listeners on their defaults; either listen
            # flag alone starts that listener only.
            "imap": parse_listen(
                opts["frontend_imap_listen"] or "0.0.0.0:143", option="--frontend-imap-listen"
            )
            if opts["frontend_imap_listen"] or not any(imap_listens)
            else None,
            "imaps": parse_listen(
                opts["frontend_imaps_listen"] or "0.0.0.0:993", option="--frontend-imaps-listen"
            )
            if opts["frontend_imaps_listen"] or not any(imap_listens)
            else None,
        }
        starts = [(c, _load(c)) for c in COMPONENTS if c.name in selected]

        if "backend-dns-dns" in selected:
            # The DNS backend is active for this process and for the workers it starts.
            settings.EVERLOCK_DNS = True
            os.environ["EVERLOCK_DNS"] = "on"
        call_command("migrate", interactive=False, verbosity=0)
        call_command("createcachetable", verbosity=0)
        if "backend-dns-dns" in selected:
            # Settings the derived records follow may have changed since the last start.
            from mail.services.domains import domains_publish_dns

            domains_publish_dns()
        ensure_admin(opts, admin_password, log=log)
        asyncio.run(_run(starts, listens))


def _load(component: Component):
    module_name, _, func = component.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CommandError(f"--{component.name} is not available in this build") from None
        raise
    return getattr(module, func)


async def _run(starts, listens) -> None:
    stop = stop_on_signals()
    running = []
    try:
        for component, start in starts:
            log.info("starting %s", component.name)
            running.append(await start(listens=listens))
        await stop.wait()
    finally:
        for handle in reversed(running):
            if handle is None:
                continue
            handle.close()
            wait_closed = getattr(handle, "wait_closed", None)
            if wait_closed is not None:
                await wait_closed()
        log.info("stopped")
