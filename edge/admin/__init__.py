"""
The admin endpoint: HTML dashboard, JSON API, Prometheus ``/metrics`` and
``/healthz``, on ``[admin] address`` (Traefik's ``--api`` equivalent).
"""

from edge.admin.service import AdminService, make_admin_service

__all__ = ["AdminService", "make_admin_service"]
