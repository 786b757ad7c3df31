"""
edge's DNS server: the cluster's names answered from the discovery snapshot,
everything else forwarded upstream with a cache.  See ``docs/dns.md``.
"""

from edge.dns.server import DNSService, make_dns_service

__all__ = ["DNSService", "make_dns_service"]
