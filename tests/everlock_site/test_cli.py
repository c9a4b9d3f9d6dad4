"""The `everlock` program as a newcomer meets it: its version, its help, a busy port, and
`python3 dev.py serve` with a flag of one's own."""

from __future__ import annotations

import importlib.util
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from everlock_site.management.commands.serve import Command as ServeCommand
from tests.log_lines import log_lines

ROOT = Path(__file__).resolve().parents[2]
EVERLOCK = Path(sys.executable).parent / "everlock"


def everlock(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EVERLOCK), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_version_is_everlocks():
    result = everlock("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, "everlock 0.1.0\n", "")


def test_help_lists_everlocks_commands_first():
    result = everlock("help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "Everlock 0.1.0",
        "",
        "Type 'everlock help <command>' for help on a command.",
        "",
        "Everlock commands:",
    ]
    ours = lines[5 : lines.index("Django commands:") - 1]
    assert [line.split()[0] for line in ours] == [
        "backup", "copydb", "mailconfig", "mailq", "restore", "runadminssh", "rundns", "runhttp",
        "runhttps", "runimap", "runsmtp", "serve",
    ]  # fmt: skip
    assert (
        "    serve        Run the selected Everlock components (listeners, console, workers), supervised."
        in ours
    )
    django = lines[lines.index("Django commands:") + 1 :]
    assert "    migrate" in django and "    createsuperuser" in django
    assert not any(line.startswith("[") for line in lines)  # no per-app headings


# Each listener of `everlock serve`, with the flags that start it and the one that moves it.
LISTENERS = {
    "ssh": (["--frontend-ssh", "--backend-admin-ssh"], "--frontend-ssh-listen"),
    "smtp": (["--frontend-smtp", "--backend-mail-smtp"], "--frontend-smtp-listen"),
    "submission": (
        ["--frontend-smtp-submission", "--backend-mail-smtp"],
        "--frontend-smtp-submission-listen",
    ),
    "http": (["--frontend-http"], "--frontend-http-listen"),
    "dns": ([], "--frontend-dns-listen"),
    "imap": ([], "--frontend-imap-listen"),
    "imaps": ([], "--frontend-imaps-listen"),
}


@pytest.fixture
def busy_port():
    """A TCP port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _env(tmp_path) -> dict:
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path)}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "EVERLOCK_LOG", "RUST_LOG"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("listener", sorted(LISTENERS))
def test_serve_on_a_busy_port_says_which_flag_to_change(tmp_path, busy_port, listener):
    components, option = LISTENERS[listener]
    result = everlock("serve", *components, option, f"127.0.0.1:{busy_port}", env=_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"CommandError: port {busy_port} is in use: choose another with {option}"
    )


@pytest.mark.parametrize(
    ("command", "option"),
    [("runsmtp", "--listen"), ("runsmtp", "--submission-listen"), ("runadminssh", "--listen"),
     ("runhttp", "--listen"), ("runhttps", "--listen"), ("rundns", "--listen"), ("runimap", "--listen"),
     ("runimap", "--tls-listen")],
)  # fmt: skip
def test_run_commands_on_a_busy_port_say_which_flag_to_change(tmp_path, busy_port, command, option):
    env = _env(tmp_path)
    subprocess.run([str(EVERLOCK), "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    result = everlock(command, option, f"127.0.0.1:{busy_port}", env=env)
    assert result.returncode == 1, result.stderr
    assert log_lines(result.stderr) == [
        *[line for line in log_lines(result.stderr) if line.startswith("[INFO ")],
        f"CommandError: port {busy_port} is in use: choose another with {option}",
    ]


def _dev():
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve_options(flags: list[str]) -> dict:
    return vars(ServeCommand().create_parser("everlock", "serve").parse_args(flags))


def test_dev_serve_flags_change_only_what_they_name():
    dev = _dev()
    defaults = _serve_options(dev.serve_flags([]))
    moved = _serve_options(dev.serve_flags(["--frontend-smtp-listen", "127.0.0.1:2626"]))
    assert moved == {**defaults, "frontend_smtp_listen": "127.0.0.1:2626"}
    assert defaults["frontend_smtp_listen"] == "127.0.0.1:2525"
    assert defaults["frontend_ssh"] and defaults["frontend_http"] and defaults["backend_mail_smtp"]
    # "--flag=value" names the flag too; a flag outside the defaults adds to them.
    added = _serve_options(dev.serve_flags(["--admin-password=s3cret", "--backend-dns-dns"]))
    assert added == {**defaults, "admin_password": "s3cret", "backend_dns_dns": True}


def test_readme_shows_what_dev_serve_runs():
    readme = (ROOT / "README.md").read_text()
    intro = readme[readme.index("`python3 dev.py serve` runs") :]
    block = intro[intro.index("```sh\n") + 6 :]
    block = block[: block.index("\n```")]
    assert shlex.split(block.replace("\\\n", " ")) == ["everlock", "serve", *_dev().serve_flags([])]
