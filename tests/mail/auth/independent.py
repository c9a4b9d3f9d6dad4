"""Independent implementations the checks are compared with: Perl's Mail::DKIM (signing
and verifying) and Mail::SPF (Debian libmail-spf-perl), asking Everlock's own DNS server.
Each runs once for a whole corpus: JSON in on stdin, JSON out."""

from __future__ import annotations

import json
import subprocess

_PERL_SIGN = r"""
use strict;
use JSON::PP;
use Mail::DKIM::Signer;
use Mail::DKIM::TextWrap;
my $jobs = decode_json(do { local $/; <STDIN> });
my @out;
foreach my $job (@$jobs) {
    my %args = (Algorithm => 'rsa-sha256', Method => $job->{canon}, Domain => $job->{domain},
                Selector => $job->{selector}, KeyFile => $job->{key_file},
                Headers => 'from:to:subject:date:message-id');
    if ($job->{expired}) { $args{Timestamp} = time() - 3 * 86400; $args{Expiration} = time() - 2 * 86400; }
    my $dkim = Mail::DKIM::Signer->new(%args);
    my $message = $job->{message};
    $dkim->PRINT($message);
    $dkim->CLOSE;
    push @out, $dkim->signature->as_string;
}
print encode_json(\@out);
"""

_PERL_VERIFY = r"""
use strict;
use JSON::PP;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
my $res = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0, udp_timeout => 5);
Mail::DKIM::DNS::resolver($res);
my $messages = decode_json(do { local $/; <STDIN> });
my @out;
foreach my $message (@$messages) {
    my $dkim = Mail::DKIM::Verifier->new();
    $dkim->PRINT($message);
    $dkim->CLOSE;
    push @out, [map { [$_->algorithm, $_->domain, $_->selector, $_->result] } $dkim->signatures];
}
print encode_json(\@out);
"""

_PERL_SPF = r"""
use strict;
use JSON::PP;
use Mail::SPF;
use Net::DNS::Resolver;
my $res = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1);
my $server = Mail::SPF::Server->new(dns_resolver => $res);
my $queries = decode_json(do { local $/; <STDIN> });
my @out;
foreach my $q (@$queries) {
    my $request = $q->{mail_from}
        ? Mail::SPF::Request->new(
            scope => 'mfrom', identity => $q->{mail_from}, ip_address => $q->{ip},
            helo_identity => $q->{helo})
        : Mail::SPF::Request->new(scope => 'helo', identity => $q->{helo}, ip_address => $q->{ip});
    push @out, $server->process($request)->code;
}
print encode_json(\@out);
"""


def _perl(script: str, payload, *args: str):
    out = subprocess.run(
        ["perl", "-e", script, *args], input=json.dumps(payload).encode(), capture_output=True, timeout=300
    )
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def perl_sign(jobs: list[dict]) -> list[str]:
    """Mail::DKIM::Signer RSA signatures ("DKIM-Signature: ..." without the line end), one per
    job {message, domain, selector, key_file, canon, expired}."""
    return _perl(_PERL_SIGN, jobs)


def perl_verify(dns_port: int, messages: list[bytes]) -> list[list[tuple[str, str, str, str]]]:
    """Mail::DKIM::Verifier: per message, (algorithm, domain, selector, result) per signature;
    results are pass, fail, invalid, temperror, none."""
    found = _perl(_PERL_VERIFY, [m.decode("latin-1") for m in messages], str(dns_port))
    return [[tuple(sig) for sig in sigs] for sigs in found]


def perl_spf(dns_port: int, queries: list[dict]) -> list[str]:
    """Mail::SPF results (pass fail softfail neutral none permerror temperror) for queries
    {ip, mail_from, helo}; an empty mail_from checks the HELO identity."""
    return _perl(_PERL_SPF, queries, str(dns_port))
