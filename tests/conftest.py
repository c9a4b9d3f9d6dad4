"""Fixtures shared by every test module.

Each test session gets its own data dir (set before Django reads its settings), so host keys,
TLS pairs, stored messages and config files never touch ./var.
"""

import os
import tempfile

_data_dir = tempfile.mkdtemp(prefix="everlock-test-")
os.environ.setdefault("EVERLOCK_DATA_DIR", _data_dir)
os.environ.setdefault("EVERLOCK_LOG", "warning")
