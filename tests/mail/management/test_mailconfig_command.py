"""`manage.py mailconfig import`: edited domain files are read back; bad files change nothing."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from mail.models import MailDomain
from mail.services.domains import domain_create

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def data_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_DNS = False
    return tmp_path


def test_import_one_and_all(data_dir):
    domain_create(name="example.com")
    domain_create(name="example.net")
    directory = data_dir / "everlock-mail/domains"
    com = directory / "example.com.toml"
    com.write_text(com.read_text().replace('auth = "authenticated"', 'auth = "none"'))
    out = io.StringIO()
    call_command("mailconfig", "import", "--domain", "example.com", stdout=out)
    assert out.getvalue() == (
        f"mail domain example.com imported from {com}\nmail domain example.com: auth=off\n"
    )
    assert MailDomain.objects.get(name="example.com").submission_auth == "none"

    out = io.StringIO()
    call_command("mailconfig", "import", stdout=out)
    assert out.getvalue() == (
        f"mail domain example.com imported from {com} (unchanged)\n"
        f"mail domain example.net imported from {directory / 'example.net.toml'} (unchanged)\n"
    )


def test_bad_file_names_the_field(data_dir):
    domain_create(name="example.com")
    path = data_dir / "everlock-mail/domains/example.com.toml"
    path.write_text(path.read_text().replace("[outbound.dkim]\n", "[outbound.dkim]\nselectr = 'x'\n"))
    with pytest.raises(CommandError) as exc:
        call_command("mailconfig", "import", "--domain", "example.com")
    assert str(exc.value) == f"{path}: outbound.dkim.selectr: unknown setting"


def test_as_a_process_reports_the_line(tmp_path):
    """The real command in its own process with its own data dir and SQLite database."""
    env = {"EVERLOCK_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "EVERLOCK_LOG": "warning"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT, timeout=120)
    directory = tmp_path / "everlock-mail/domains"
    directory.mkdir(parents=True)
    (directory / "example.com.toml").write_text('enabled = true\n[submission]\nauth = "none\n')
    bad = subprocess.run([*manage, "mailconfig", "import"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr == (
        f"CommandError: {directory}/example.com.toml: not valid TOML: "
        "Illegal character '\\n' (at line 3, column 13)\n"
    )
    (directory / "example.com.toml").write_text('enabled = true\n[submission]\nauth = "none"\n')
    good = subprocess.run(
        [*manage, "mailconfig", "import"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert (good.returncode, good.stdout) == (
        0,
        f"mail domain example.com imported from {directory}/example.com.toml\n",
    )


RULES = """
[[rule]]
name = "lists"
match = { header = "List-Id", glob = "*" }
fileinto = "Lists"
"""


def test_import_reads_rules_toml_too(data_dir):
    from mail.services.rules import current_text

    rules = data_dir / "everlock-mail/rules.toml"
    rules.parent.mkdir(parents=True)
    rules.write_text(RULES)
    out = io.StringIO()
    call_command("mailconfig", "import", stdout=out)
    assert out.getvalue() == (
        f"no domain files to import\nmail rules imported from {rules} (changed): version 1, 1 rules\n"
    )
    assert current_text() == RULES

    out = io.StringIO()
    call_command("mailconfig", "import", "--rules", stdout=out)
    assert out.getvalue() == f"mail rules imported from {rules} (unchanged): version 1, 1 rules\n"

    rules.write_text(RULES.replace("fileinto", "filein"))
    with pytest.raises(CommandError) as exc:
        call_command("mailconfig", "import", "--rules")
    assert "filein" in str(exc.value) and str(exc.value).endswith("; nothing changed")
    assert current_text() == RULES


def test_import_of_one_domain_leaves_rules_alone(data_dir):
    from mail.services.rules import current_text

    domain_create(name="example.com")
    rules = data_dir / "everlock-mail/rules.toml"
    rules.write_text(RULES)
    call_command("mailconfig", "import", "--domain", "example.com", stdout=io.StringIO())
    assert current_text() == ""
