"""
TLS at the edge: certificates by SNI from a directory and a built-in CA.

- :mod:`edge.tls.store`: the certificate directory, indexed by host name.
- :mod:`edge.tls.ca`, :mod:`edge.tls.issuer`: the built-in CA and the issuer interface.
- :mod:`edge.tls.sni`: the handshake (SNI, ALPN, versions, deadline).
- :mod:`edge.tls.service`: keeps it all current; what edge/tap.py builds.
"""
