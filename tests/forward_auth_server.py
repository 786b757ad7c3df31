"""
A small forward-auth server (twisted.web) for the forward-auth tests.

``python -m tests.forward_auth_server PORT [CERT_PEM]`` listens on 127.0.0.1
(TLS when a cert+key PEM is given), prints ``ready``, and decides by the
request it is asked about, as Authelia or Authentik would:

- ``Authorization: Bearer good``: 200 with ``Remote-User``, ``Remote-Groups``,
  ``Remote-Email``, ``X-Auth-Extra`` and two cookies (``authsess``, ``other``);
- ``X-Forwarded-Uri`` under ``/redirect``: 302 to the relative ``/login?rd=...``;
- under ``/big``: 401 with a 2 MiB body;
- otherwise 401 with ``WWW-Authenticate``, ``X-Auth-Reason`` and a body.

``GET /_seen`` (asked directly, not through edge) returns the method, path,
headers and client port (one per connection) of every auth request so far,
newest last.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import endpoints, reactor
from twisted.web import resource, server

SEEN: list[dict] = []


class Auth(resource.Resource):
    isLeaf = True

    def render(self, request):
        if request.path == b"/_seen":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(SEEN).encode()
        headers = [[k.decode("latin-1"), v.decode("latin-1")]
                   for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        SEEN.append({"method": request.method.decode(), "path": request.uri.decode(), "headers": headers,
                     "port": request.getClientAddress().port})
        uri = (request.getHeader(b"x-forwarded-uri") or b"").decode("latin-1")
        if request.getHeader(b"authorization") == b"Bearer good":
            request.setResponseCode(200)
            request.responseHeaders.setRawHeaders(b"Remote-User", [b"alice"])
            request.responseHeaders.setRawHeaders(b"Remote-Groups", [b"admins", b"users"])
            request.responseHeaders.setRawHeaders(b"Remote-Email", [b"alice@example.test"])
            request.responseHeaders.setRawHeaders(b"X-Auth-Extra", [b"e1"])
            request.responseHeaders.setRawHeaders(b"Set-Cookie", [b"authsess=abc; Path=/", b"other=zzz"])
            return b"ok"
        if uri.startswith("/redirect"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/login?rd=" + uri.encode())
            return b"go log in"
        if uri.startswith("/big"):
            request.setResponseCode(401)
            return b"x" * (2 * 1024 * 1024)
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="test"')
        request.setHeader(b"x-auth-reason", b"no-token")
        request.setHeader(b"content-type", b"text/plain")
        return b"denied by auth\n"


def main(argv):
    port = int(argv[1])
    site = server.Site(Auth())
    if len(argv) > 2:
        from twisted.internet import ssl

        with open(argv[2]) as f:
            cert = ssl.PrivateCertificate.loadPEM(f.read())
        endpoint = endpoints.SSL4ServerEndpoint(reactor, port, cert.options(), interface="127.0.0.1")
    else:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def listening(_):
        print("ready", flush=True)

    endpoint.listen(site).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
