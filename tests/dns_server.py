"""Everlock's DNS server on 127.0.0.1 (ephemeral port) in a thread of the test process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import dns.message
import dns.query
import dns.rdatatype

from dns_zones.server.listener import start_dns
from everlock_site.listen import ListenAddress

# Perl's Mail::DKIM (an independent implementation) verifying a message read from stdin with
# keys from the DNS server at 127.0.0.1 port ARGV[0]; one line per signature.
PERL_VERIFY = r"""
use strict;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
my $res = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0, udp_timeout => 5);
Mail::DKIM::DNS::resolver($res);
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (<STDIN>) { s/\015?\012/\015\012/; $dkim->PRINT($_); }
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) { print $sig->algorithm, " ", $sig->selector, " ", $sig->result, "\n"; }
"""


class RunningDNS:
    """start_dns() on its own event loop in a thread; `port` is the bound UDP and TCP port."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_dns(listens={"dns": ListenAddress("127.0.0.1", 0)}, poll_interval=0.2), self.loop
        )
        self.server = future.result(timeout=30)
        self.port = self.server.port

    def stop(self):
        async def shutdown():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def udp(self, qname, qtype="A", **kw) -> dns.message.Message:
        query = dns.message.make_query(qname, qtype, **kw)
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=5)

    def tcp(self, qname, qtype="A", **kw) -> dns.message.Message:
        query = dns.message.make_query(qname, qtype, **kw)
        return dns.query.tcp(query, "127.0.0.1", port=self.port, timeout=5)

    def raw_udp(self, wire: bytes, timeout: float = 1.0) -> bytes | None:
        """Send `wire` as one datagram; the reply's bytes, or None when nothing came back."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(wire, ("127.0.0.1", self.port))
            try:
                return sock.recv(65535)
            except TimeoutError:
                return None

    def dig(self, *args: str) -> str:
        out = subprocess.run(
            ["dig", "-p", str(self.port), "@127.0.0.1", "+time=3", "+tries=1", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout

    def wait_for(self, predicate, timeout: float = 5.0):
        """Poll `predicate()` until it returns a true value (returned) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's key lookup, answered by the server over UDP (TCP when truncated)."""
        query = dns.message.make_query(name.decode("ascii"), "TXT")
        response, _ = dns.query.udp_with_fallback(query, "127.0.0.1", port=self.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    def mail_dkim_verdicts(self, message: bytes) -> list[str]:
        """Perl Mail::DKIM's verdict per signature: "ALGORITHM SELECTOR RESULT" lines."""
        out = subprocess.run(
            ["perl", "-e", PERL_VERIFY, str(self.port)], input=message, capture_output=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().splitlines()
