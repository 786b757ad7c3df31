"""
ACME (RFC 8555) certificates at the edge: Let's Encrypt or any ACME CA.

- :mod:`edge.acme.names`: which certificates the snapshot asks for (pure).
- :mod:`edge.acme.files`: the account and certificates under ``tls.state_dir``.
- :mod:`edge.acme.challenges`: HTTP-01 and TLS-ALPN-01 answers, read on the
  reactor thread by the HTTP and TLS front ends.
- :mod:`edge.acme.dns01`: DNS-01 records by RFC 2136 (TSIG) or a hook program.
- :mod:`edge.acme.client`: one blocking order, run in a worker thread.
- :mod:`edge.acme.schedule`: when to order, renew and retry (pure).
- :mod:`edge.acme.service`: keeps it all current; what edge/tap.py builds.
"""
