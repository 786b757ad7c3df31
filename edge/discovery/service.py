"""Builds the discovery service tree (placeholder until the Docker provider lands)."""

from twisted.application.service import MultiService


def make_discovery_service(config, publisher, reactor):
    return MultiService()
