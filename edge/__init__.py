"""edge: DNS server and reverse proxy for Docker Swarm, in one Twisted program."""
