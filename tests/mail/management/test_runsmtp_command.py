"""`manage.py runsmtp` binds both listeners and logs the product doc's startup lines."""

import os
import smtplib
import subprocess
import sys
from pathlib import Path

from tests.log_lines import without_time
from tests.ports import free_port
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[3]


def test_runsmtp_logs_and_serves(tmp_path):
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), "EVERLOCK_LOG": "warning,mail.smtp=info"}
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    inbound, submission = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runsmtp",
            "--listen",
            f"127.0.0.1:{inbound}",
            "--submission-listen",
            f"127.0.0.1:{submission}",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [without_time(process.stderr.readline()) for _ in range(4)]
        assert lines == [
            f"[INFO mail.smtp] frontend-smtp: binding inbound listener on 127.0.0.1:{inbound}",
            f"[INFO mail.smtp] SMTP inbound listener on 127.0.0.1:{inbound}",
            f"[INFO mail.smtp] frontend-smtp: binding submission listener on 127.0.0.1:{submission}",
            f"[INFO mail.smtp] SMTP submission listener on 127.0.0.1:{submission}",
        ]
        for port in (inbound, submission):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                assert client.noop() == (250, b"2.0.0 OK")
        assert (tmp_path / "tls" / "cert.pem").exists()
    finally:
        terminate(process)
    assert process.returncode == 0
