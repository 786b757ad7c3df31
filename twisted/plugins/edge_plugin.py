from twisted.application.service import ServiceMaker

edge = ServiceMaker(
    "edge",
    "edge.tap",
    "DNS server and reverse proxy for Docker Swarm",
    "edge",
)
