"""
What a request looks like when edge forwards it to a backend over HTTP/1.1.

One set of rules for both client framings: hop-by-hop and framing headers
are dropped (and any header a ``Connection`` field names), framing is
edge's own (a validated ``Content-Length`` or chunked), and the forwarded
headers are rewritten -- from the client's own address, unless the client
is a trusted proxy, whose ``X-Forwarded-*`` values are kept and extended.
"""

from __future__ import annotations

__all__ = ["Peer", "request_head", "request_bytes", "apply_trusted_scheme", "SPECIAL_LENGTHS", "REQ_DROP"]

HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                       b"x-forwarded-port", b"x-real-ip", b"forwarded"})
REQ_DROP = HOP | FORWARDED | {b"content-length", b"expect", b"host"}
REQ_DROP_TRUSTED = HOP | {b"content-length", b"expect", b"host", b"x-forwarded-for"}
# Header names worth lower-casing: only these lengths can be special.
SPECIAL_LENGTHS = frozenset(
    len(n) for n in REQ_DROP | HOP | {b"upgrade", b"expect", b"content-length"}
)


class Peer:
    """Who sent a connection's requests, as the forwarded headers tell it (one per connection)."""

    __slots__ = ("client_ip", "trusted", "scheme", "port_bytes", "forwarded_tail", "_ip_bytes")

    def __init__(self, client_ip: str, trusted: bool, scheme: str, port: str):
        self.client_ip = client_ip
        self.trusted = trusted
        self.scheme = scheme
        ip = client_ip.encode("ascii", "replace")
        self._ip_bytes = ip
        self.port_bytes = port = port.encode("ascii")
        self.forwarded_tail = (
            b"X-Forwarded-Proto: " + scheme.encode("ascii") + b"\r\n"
            b"X-Forwarded-Port: " + port + b"\r\n"
            b"X-Real-Ip: " + ip + b"\r\n"
            b"X-Forwarded-For: " + ip + b"\r\n"
        )


def apply_trusted_scheme(req) -> None:
    """A trusted proxy's ``X-Forwarded-Proto`` is the request's scheme (redirects, cookies)."""
    for name, value in req.headers:
        if name.lower() == b"x-forwarded-proto":
            scheme = value.strip().lower()
            if scheme in (b"http", b"https"):
                req.scheme = scheme.decode("ascii")
            break


def request_head(req, peer: Peer) -> bytes:
    """The HTTP/1.1 request head for ``req`` (attributes of the exchange's request)."""
    route = req.route
    trusted = peer.trusted
    drop = REQ_DROP_TRUSTED if trusted else REQ_DROP
    tokens = req.connection_tokens
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: "]
    if route.pass_host_header and req.host:
        parts.append(req.host)
    else:
        parts.append(req.target_url.split("://", 1)[1].encode("latin-1"))
    parts.append(b"\r\n")
    xff = None
    seen = None
    special = SPECIAL_LENGTHS
    for name, value in req.headers:
        if tokens is None and len(name) not in special:
            parts += (name, b": ", value, b"\r\n")
            continue
        lower = name.lower()
        if lower in drop:
            if lower == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            continue
        if tokens is not None and lower in tokens:
            continue
        if trusted and lower in FORWARDED:
            seen = (seen or set()) | {lower}
        parts += (name, b": ", value, b"\r\n")
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % req.content_length)
    if req.upgrade:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", req.upgrade_value, b"\r\n")
    if not trusted:
        parts.append(peer.forwarded_tail)
        if req.host:
            parts += (b"X-Forwarded-Host: ", req.host, b"\r\n")
    else:
        ip = peer._ip_bytes
        parts += (b"X-Forwarded-For: ", (xff + b", " + ip) if xff else ip, b"\r\n")
        seen = seen or ()
        if b"x-forwarded-proto" not in seen:
            parts += (b"X-Forwarded-Proto: ", peer.scheme.encode("ascii"), b"\r\n")
        if b"x-real-ip" not in seen:
            parts += (b"X-Real-Ip: ", ip, b"\r\n")
        if b"x-forwarded-host" not in seen and req.host:
            parts += (b"X-Forwarded-Host: ", req.host, b"\r\n")
        if b"x-forwarded-port" not in seen:
            parts += (b"X-Forwarded-Port: ", peer.port_bytes, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def request_bytes(req, peer: Peer) -> bytes:
    """
    What goes to a backend just attached: the head, the body bytes that
    arrived meanwhile (``req.pending``, taken), framed, and the chunked
    terminator when the body is already complete.
    """
    head = request_head(req, peer)
    if req.pending:
        body = req.pending
        req.pending = []
        req.pending_bytes = 0
        if req.chunked:
            body = [b"%x\r\n%s\r\n" % (len(b), b) for b in body]
        head = head + b"".join(body)
    if req.body_done and req.chunked:
        head += b"0\r\n\r\n"
    return head
