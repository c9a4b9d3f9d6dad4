"""The http-01 responder (RFC 8555 section 8.3) on the plain HTTP listener.

A CA validating a name fetches http://NAME/.well-known/acme-challenge/TOKEN on port 80. The
request names a host the admin is not configured for, so the answer is given before the
middleware that checks the Host header (it is first in MIDDLEWARE); it comes from the
database, so whichever process runs the order, any HTTP listener answers.
"""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseNotFound

from tls.models import HTTPChallenge

PREFIX = "/.well-known/acme-challenge/"


def acme_challenge(get_response):
    def middleware(request):
        if not request.path.startswith(PREFIX):
            return get_response(request)
        token = request.path[len(PREFIX) :]
        answer = HTTPChallenge.objects.filter(token=token).values_list("key_authorization", flat=True).first()
        if answer is None:
            return HttpResponseNotFound(b"no such challenge\n", content_type="text/plain")
        return HttpResponse(answer.encode("ascii"), content_type="application/octet-stream")

    return middleware
