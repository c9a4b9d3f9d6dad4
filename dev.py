#!/usr/bin/env python3
"""Set up and run Everlock from a checkout with nothing but python3.

    python3 dev.py serve [everlock serve flags]   start the server (embedded default: SQLite);
                                                  flags change only the defaults they name
    python3 dev.py test [pytest args]             run the whole test suite
    python3 dev.py everlock ARGS...               any `everlock` command (manage.py)

It creates .venv, installs the pinned requirements (again only when they change) and, for the
tests, the Debian tools the tests drive (OpenSSH client, swaks, dig, opendkim-tools, Perl's
Mail::DKIM, chromium, mbsync, neomutt, curl, the ACME test server pebble, openssl,
systemd-analyze) when they are missing and apt-get is usable;
the IMAP compliance test builds Dovecot's imaptest with the kit in ../shared/tools/imaptest.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"

# `serve` starts what the product doc's first step starts, on loopback. Flags given to
# `python3 dev.py serve` replace only the defaults they name (a flag with its value) and add
# the rest; `python3 dev.py everlock serve FLAGS` runs exactly FLAGS.
DEFAULT_SERVE_FLAGS: dict[str, str | None] = {
    "--frontend-ssh": None,
    "--frontend-ssh-listen": "127.0.0.1:2222",
    "--backend-admin-ssh": None,
    "--frontend-smtp": None,
    "--frontend-smtp-listen": "127.0.0.1:2525",
    "--frontend-smtp-submission": None,
    "--frontend-smtp-submission-listen": "127.0.0.1:2587",
    "--frontend-smtp-submissions": None,
    "--frontend-smtp-submissions-listen": "127.0.0.1:2465",
    "--backend-mail-smtp": None,
    "--frontend-http": None,
    "--frontend-http-listen": "127.0.0.1:8080",
    "--frontend-https-listen": "127.0.0.1:8443",
    "--frontend-imap-listen": "127.0.0.1:1143",
    "--frontend-imaps-listen": "127.0.0.1:1993",
    "--admin-user": "admin",
    "--admin-password": "change-me",
}


def serve_flags(args: list[str]) -> list[str]:
    """The `everlock serve` flags for `dev.py serve ARGS`: the defaults ARGS does not name
    ("--flag value" or "--flag=value"), then ARGS."""
    named = {arg.partition("=")[0] for arg in args if arg.startswith("--")}
    flags: list[str] = []
    for flag, value in DEFAULT_SERVE_FLAGS.items():
        if flag not in named:
            flags += [flag] if value is None else [flag, value]
    return [*flags, *args]


# Debian packages the tests drive: a command on PATH (or an absolute file) -> package.
TEST_TOOLS = {
    "ssh": "openssh-client",
    "swaks": "swaks",
    "dig": "bind9-dnsutils",
    "opendkim-testmsg": "opendkim-tools",
    "/usr/share/perl5/Mail/DKIM/Verifier.pm": "libmail-dkim-perl",
    "/usr/share/perl5/Mail/SPF.pm": "libmail-spf-perl",
    "/usr/bin/chromium": "chromium",
    "mbsync": "isync",
    "neomutt": "neomutt",
    "script": "bsdutils",
    "curl": "curl",
    "postfix": "postfix",
    "msmtp": "msmtp",
    # imaptest (the IMAP compliance suite and load tool) links against Dovecot's library; the
    # IMAP benchmark runs a private Dovecot beside Everlock.
    "/usr/lib/dovecot/libdovecot.so.0": "dovecot-core",
    "/usr/include/dovecot/imap-parser.h": "dovecot-dev",
    "/usr/lib/dovecot/imap": "dovecot-imapd",
    "pebble": "pebble",
    "openssl": "openssl",
    "systemd-analyze": "systemd",
    "pg_dump": "postgresql-client",
}


def tool_present(tool: str) -> bool:
    if tool.startswith("/"):
        return Path(tool).exists()
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_venv(requirements: str) -> None:
    if not (BIN / "python").exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    stamp = VENV / f".installed-{requirements}"
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-test.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    pip = [BIN / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "-r", ROOT / requirements])
    run([*pip, "--no-deps", "-e", ROOT])
    stamp.write_text(digest.hexdigest())


def ensure_test_tools() -> None:
    missing = sorted({pkg for tool, pkg in TEST_TOOLS.items() if not tool_present(tool)})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"warning: tests need these Debian packages: {' '.join(missing)}", file=sys.stderr)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test", "everlock"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, args = argv[0], argv[1:]
    os.chdir(ROOT)
    if verb == "test":
        ensure_venv("requirements-test.txt")
        ensure_test_tools()
        return subprocess.call([BIN / "python", "-m", "pytest", *args])
    ensure_venv("requirements.txt")
    if verb == "serve":
        return subprocess.call([BIN / "everlock", "serve", *serve_flags(args)])
    return subprocess.call([BIN / "everlock", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
