"""The store's default certificate: the configured files, read again when replaced."""

from __future__ import annotations

import os

from cryptography import x509

from tests.tls.handshake import presented
from tls.store import CertificateStore, self_signed_pair


def test_a_replaced_certificate_file_is_presented_after_a_refresh(db, tmp_path):
    cert_file, key_file = self_signed_pair(directory=tmp_path / "first", hostname="mail.example.com")
    store = CertificateStore(
        cert_file=str(cert_file), key_file=str(key_file), data_dir=tmp_path, hostname="mail.example.com"
    )
    assert store.refresh() is True
    first = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert presented(store, None) == presented(store, "mail.example.com") == first
    assert [(p.names, p.source, p.default) for p in store.presented()] == [
        (("mail.example.com",), "file", True)
    ]

    # certbot (or an admin) writes a new pair over the files.
    new_cert, new_key = self_signed_pair(directory=tmp_path / "second", hostname="mail.example.com")
    os.replace(new_key, key_file)
    os.replace(new_cert, cert_file)
    assert store.refresh() is True
    second = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert second != first
    assert presented(store, "mail.example.com") == second
    assert store.refresh() is False


def test_a_broken_replacement_keeps_the_previous_pair(db, tmp_path):
    cert_file, key_file = self_signed_pair(directory=tmp_path / "first", hostname="mail.example.com")
    store = CertificateStore(
        cert_file=str(cert_file), key_file=str(key_file), data_dir=tmp_path, hostname="mail.example.com"
    )
    store.refresh()
    first = presented(store, None)
    other_cert, _ = self_signed_pair(directory=tmp_path / "second", hostname="mail.example.com")
    os.replace(other_cert, cert_file)  # a certificate that does not match the key
    store.refresh()
    assert presented(store, None) == first


def test_a_forked_listener_process_watches_for_itself(transactional_db, tmp_path, monkeypatch):
    import threading
    import time

    import tls.store

    store = CertificateStore(cert_file="", key_file="", data_dir=tmp_path, hostname="mail.example.com")
    monkeypatch.setattr(tls.store, "_store", store)
    store.watch(3600)
    pid = os.fork()
    if pid == 0:  # the child: only the forking thread survived; a new watcher must start
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(t.name == "everlock-tls-reload" for t in threading.enumerate()):
                os._exit(0)
            time.sleep(0.05)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
