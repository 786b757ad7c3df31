"""
edge's UDP routers (Traefik's ``traefik.udp.*``): per-client sessions to a
backend on UDP entry points.  See ``docs/tcp.md``.
"""
