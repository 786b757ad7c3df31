"""
edge's TCP routers (Traefik's ``traefik.tcp.*``): pure parts -- rules,
ClientHello reading, PROXY headers, routing tables -- and the Twisted
protocols that splice a client to a backend.  See ``docs/tcp.md``.

Importing this package imports nothing from Twisted; :mod:`edge.snapshot`
reads the rule values from :mod:`edge.tcp.rules`.
"""
