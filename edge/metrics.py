"""
Prometheus metrics, defined once so every part of edge uses the same names.

The admin endpoint serves :data:`REGISTRY` at ``/metrics``.  Updating a
metric is cheap (a lock and an add); the HTTP hot path still batches where
it can.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REGISTRY"]

REGISTRY = CollectorRegistry(auto_describe=True)

# Discovery
discovery_syncs = Counter(
    "edge_discovery_syncs", "Full syncs with a provider's source", ["provider"], registry=REGISTRY
)
discovery_errors = Counter(
    "edge_discovery_errors", "Failures talking to a provider's source", ["provider"], registry=REGISTRY
)
discovery_lag = Gauge(
    "edge_discovery_lag_seconds",
    "Seconds from the Docker event to the snapshot that reflects it",
    ["provider"],
    registry=REGISTRY,
)
snapshot_generation = Gauge(
    "edge_snapshot_generation", "Number of snapshots published", registry=REGISTRY
)
# Set by the admin service from the publisher's statuses at scrape time.
discovery_connected = Gauge(
    "edge_discovery_connected", "1 while a provider is connected to its source", ["provider"], registry=REGISTRY
)
discovery_last_sync_age = Gauge(
    "edge_discovery_last_sync_age_seconds", "Seconds since a provider's last good sync", ["provider"], registry=REGISTRY
)

# HTTP
http_requests = Counter(
    "edge_http_requests",
    "Requests answered",
    ["router", "entrypoint", "code_class"],
    registry=REGISTRY,
)
# The HTTP service counts into these buckets itself and pushes in bulk.
HTTP_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
http_request_duration = Histogram(
    "edge_http_request_duration_seconds",
    "Time from request head to response end",
    ["router"],
    buckets=HTTP_DURATION_BUCKETS,
    registry=REGISTRY,
)
http_upstream_connect_failures = Counter(
    "edge_http_upstream_connect_failures",
    "Failed connections to backend targets",
    ["service"],
    registry=REGISTRY,
)
http_open_connections = Gauge(
    "edge_http_open_connections", "Client connections open", ["entrypoint"], registry=REGISTRY
)
http_refused_connections = Counter(
    "edge_http_refused_connections",
    "Client connections closed at once: the entry point had max_client_connections open",
    ["entrypoint"],
    registry=REGISTRY,
)
target_health = Gauge(
    "edge_target_up", "1 when a target is considered healthy", ["service", "target"], registry=REGISTRY
)
router_error = Gauge(
    "edge_router_error",
    "1 when a router does not serve (does not compile, unknown entry point); see /api/problems",
    ["router"],
    registry=REGISTRY,
)

# DNS
dns_queries = Counter(
    "edge_dns_queries", "DNS queries answered", ["qtype", "rcode", "source"], registry=REGISTRY
)
dns_cache_hits = Counter("edge_dns_cache_hits", "Forwarded queries served from cache", registry=REGISTRY)
dns_bad_packets = Counter("edge_dns_bad_packets", "Malformed DNS packets dropped or answered FORMERR", registry=REGISTRY)
dns_tcp_paused = Counter(
    "edge_dns_tcp_paused", "Times a DNS TCP connection stopped being read: its client was not reading answers",
    registry=REGISTRY,
)
dns_tcp_refused = Counter(
    "edge_dns_tcp_refused", "DNS TCP connections refused: too many open", registry=REGISTRY
)

# TLS
tls_handshake_failures = Counter(
    "edge_tls_handshake_failures",
    "TLS handshakes that failed, by kind: timeout, closed (client went away), error",
    ["kind"],
    registry=REGISTRY,
)
tls_certificates_issued = Counter(
    "edge_tls_certificates_issued", "Leaf certificates issued by the internal CA", registry=REGISTRY
)

# TCP and UDP routers (edge.tcp, edge.udp)
tcp_connections = Counter(
    "edge_tcp_connections", "TCP connections given to a router", ["router", "entrypoint"], registry=REGISTRY
)
tcp_connections_refused = Counter(
    "edge_tcp_connections_refused",
    "TCP connections closed before reaching a backend (limit, allowlist, inflightconn, no backend)",
    ["entrypoint", "reason"],
    registry=REGISTRY,
)
tcp_open_connections = Gauge(
    "edge_tcp_open_connections", "TCP-routed connections open", ["entrypoint"], registry=REGISTRY
)
udp_datagrams = Counter(
    "edge_udp_datagrams", "UDP datagrams relayed", ["entrypoint", "direction"], registry=REGISTRY
)
udp_sessions = Gauge("edge_udp_sessions", "UDP client sessions open", ["entrypoint"], registry=REGISTRY)
udp_dropped = Counter(
    "edge_udp_dropped", "UDP datagrams dropped (no router, no backend, session table full)",
    ["entrypoint", "reason"], registry=REGISTRY,
)
