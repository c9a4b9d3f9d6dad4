"""A TLS handshake with a store's context, over a socket pair."""

from __future__ import annotations

import socket
import ssl
import threading

from cryptography import x509

from tls.store import CertificateStore


def presented(store: CertificateStore, server_name: str | None) -> x509.Certificate:
    """The certificate a handshake with `server_name` (SNI) gets from the store's context."""
    server_sock, client_sock = socket.socketpair()
    with server_sock, client_sock:
        server = threading.Thread(
            target=lambda: store.context.wrap_socket(server_sock, server_side=True).close(), daemon=True
        )
        server.start()
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        with client.wrap_socket(client_sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
        server.join(10)
    return x509.load_der_x509_certificate(der)
