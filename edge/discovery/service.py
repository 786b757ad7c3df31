"""
The discovery service tree: the config-file provider and the Docker provider.

edge is usable with static routes alone: the Docker provider keeps retrying
in the background and says once, clearly, that the engine is unreachable.
"""

from __future__ import annotations

from twisted.application.service import IService, MultiService

from edge.discovery.docker_provider import DockerProvider

__all__ = ["make_discovery_service"]


def make_discovery_service(config, publisher, reactor, docker_source=None) -> IService:
    """A MultiService running every provider, each reporting to ``publisher``."""
    from edge.discovery.references import FileMiddlewares, file_middlewares
    from edge.discovery.static import StaticProvider

    root = MultiService()
    root.setName("discovery")
    # The config file's [middlewares], for labels' name@file; replaced on reload.
    middlewares = FileMiddlewares(file_middlewares(config)[0])
    # The static provider takes a reloaded config file (edge.tap hands it to the SIGHUP handler).
    root.static = StaticProvider(config, publisher, middlewares)
    root.static.setServiceParent(root)
    provider = DockerProvider(config.docker, publisher, reactor, source=docker_source, build=middlewares.build)
    middlewares.listen(provider.rebuild)
    provider.setServiceParent(root)
    return root
