"""Stopping the server processes tests start."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM `process` (a clean stop), SIGKILL it after `timeout` seconds; its exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
