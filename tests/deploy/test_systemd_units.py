"""The systemd units in deploy/systemd: valid for systemd-analyze, their command lines
accepted by the programs they start, their settings documented, their hardening in place."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import load_command_class

from everlock_site.listen import parse_listen

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SERVE_UNITS = [UNITS / "everlock.service", UNITS / "production" / "everlock.service"]
WORKER_UNIT = UNITS / "production" / "everlock-worker.service"
INSTALLED_BIN = "/opt/everlock/venv/bin/"
VENV_BIN = Path(sys.executable).parent


def service_section(unit: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    # systemd joins lines ending in a backslash.
    parser.read_string(unit.read_text().replace("\\\n", " "))
    return dict(parser["Service"])


def exec_start(unit: Path) -> list[str]:
    return shlex.split(service_section(unit)["ExecStart"])


@pytest.mark.parametrize("unit", [*SERVE_UNITS, WORKER_UNIT], ids=lambda p: str(p.relative_to(UNITS)))
def test_systemd_analyze_verify_finds_nothing(unit, tmp_path):
    # verify checks that ExecStart's program exists: point it at this checkout's virtualenv.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BIN, f"{VENV_BIN}/"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("unit", SERVE_UNITS, ids=lambda p: str(p.relative_to(UNITS)))
def test_serve_accepts_the_units_command_line(unit):
    program, command, *flags = exec_start(unit)
    assert (program, command) == (f"{INSTALLED_BIN}everlock", "serve")
    serve = load_command_class("everlock_site", "serve")
    opts = vars(serve.create_parser("everlock", "serve").parse_args(flags))  # CommandError if unknown
    listens = {
        key: parse_listen(value, option=f"--{key.replace('_', '-')}")
        for key, value in opts.items()
        if key.endswith("_listen") and value
    }
    assert {k: v.port for k, v in listens.items()} == {
        "frontend_smtp_listen": 25,
        "frontend_smtp_submission_listen": 587,
        "frontend_smtp_submissions_listen": 465,
        "frontend_imap_listen": 143,
        "frontend_imaps_listen": 993,
        "frontend_dns_listen": 53,
        "frontend_ssh_listen": 2222,
        "frontend_http_listen": 8080,
    }
    # The console and the admin web UI stay on loopback.
    assert listens["frontend_ssh_listen"].host == listens["frontend_http_listen"].host == "127.0.0.1"
    for component in ("frontend_smtp", "frontend_smtp_submission", "backend_mail_smtp", "backend_dns_dns"):
        assert opts[component], component
    assert opts["admin_user"] == "admin" and opts["admin_password"] is None  # from the environment file


def test_the_worker_accepts_the_units_command_line():
    program, *args = exec_start(WORKER_UNIT)
    assert program == f"{INSTALLED_BIN}celery" and args[:3] == ["-A", "everlock_site", "worker"]
    usage = subprocess.run(
        [str(VENV_BIN / "celery"), "-A", "everlock_site", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert usage.returncode == 0, usage.stderr
    for flag in (a for a in args[3:] if a.startswith("--")):
        assert f"{flag} " in usage.stdout or f"{flag}\n" in usage.stdout, flag


@pytest.mark.parametrize("unit", [*SERVE_UNITS, WORKER_UNIT], ids=lambda p: str(p.relative_to(UNITS)))
def test_unprivileged_and_hardened(unit):
    service = service_section(unit)
    assert service["User"] == service["Group"] == "everlock"
    data_dir = service["Environment"].removeprefix("EVERLOCK_DATA_DIR=")
    assert data_dir == "/var/lib/everlock" == service["WorkingDirectory"]
    assert service["ReadWritePaths"] == data_dir and service["StateDirectory"] == "everlock"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "UMask": "0077",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service[key] == value, key
    if unit in SERVE_UNITS:
        # Ports below 1024 with this one capability and no other.
        assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    else:
        assert "AmbientCapabilities" not in service and service["CapabilityBoundingSet"] == ""


@pytest.mark.parametrize("env_file", [UNITS / "everlock.env", UNITS / "production" / "everlock.env"])
def test_environment_files_hold_documented_settings(env_file):
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    documented |= {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY"}
    keys = [
        line.split("=", 1)[0]
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert keys and set(keys) <= documented, set(keys) - documented
