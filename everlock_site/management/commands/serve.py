"""`everlock serve`: the selected components, in supervised child processes.

Each component is an async `start` function elsewhere (named in COMPONENTS) that binds its
sockets and returns something with `close()` (and optionally `wait_closed()`); backends
start before the frontends that need them. This command checks the options, sets up the
database and the bootstrap admin, and hands the components to everlock_site.supervisor:
the listeners run in `--processes` copies sharing their ports, the console and the delivery
worker once each.
"""

from __future__ import annotations

import importlib
import logging
import os

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.bootstrap import add_admin_arguments, check_admin_options, ensure_admin
from everlock_site.listen import parse_listen
from everlock_site.supervisor import (
    LISTENER,
    Component,
    Supervisor,
    child_specs,
    claim_ports,
    default_processes,
)

log = logging.getLogger("everlock")

# In start order: backends first. A component's process (default: the listener processes,
# one per --processes) says which child runs it; see everlock_site.supervisor.
COMPONENTS = (
    Component("backend-dns-dns", "dns_zones.server.listener:start_dns", listens=("dns",)),
    Component("backend-admin-ssh", "sshadmin.server:prepare_console", process="console"),
    Component("backend-mail-smtp", "mail.delivery.worker:start_embedded_worker", process="delivery"),
    Component(
        "frontend-ssh",
        "sshadmin.server:start_console",
        needs=("backend-admin-ssh",),
        process="console",
        listens=("ssh",),
    ),
    Component(
        "frontend-smtp",
        "mail.smtp.listeners:start_listeners",
        needs=("backend-mail-smtp",),
        listens=("smtp", "submission", "submissions"),
    ),
    Component("frontend-imap", "mail.imap.listener:start_listeners", listens=("imap", "imaps")),
    Component("frontend-http", "everlock_site.http:start_http", listens=("http",)),
    Component("frontend-https", "everlock_site.https:start_https", listens=("https",)),
)


class Command(BaseCommand):
    help = "Run the selected Everlock components (listeners, console, workers), supervised."

    def add_arguments(self, parser):
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            metavar="N",
            help="listener processes sharing each port (default: one per core)",
        )
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
        processes = opts["processes"] or default_processes()
        if processes < 1:
            raise CommandError("--processes must be 1 or more")
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
        # The addresses of the selected components, checked before any child binds them; those
        # of the listener processes are bound by every copy (SO_REUSEPORT).
        used = {key: c for c in COMPONENTS if c.name in selected for key in c.listens}
        listens.update(
            claim_ports(
                {key: listens[key] for key in used},
                shared={key for key, c in used.items() if c.process == LISTENER},
            )
        )
        Supervisor(child_specs(starts, processes=processes), listens).run()


def _load(component: Component):
    module_name, _, func = component.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CommandError(f"--{component.name} is not available in this build") from None
        raise
    return getattr(module, func)
