"""
The Docker Engine API, read off the reactor thread.

The docker SDK blocks, so :class:`DockerSource` runs every call in its own
small, sized :class:`~twisted.python.threadpool.ThreadPool` (started and
stopped with the provider, never the reactor's shared pool) and the events
stream in a dedicated thread that is closed on stop.  Results come back as
Deferreds and events through ``reactor.callFromThread``.

edge only reads: ``GET /version``, ``/info``, ``/services``, ``/tasks``,
``/nodes``, ``/networks``, ``/containers`` and ``/events``
(see docs/security.md for what socket access means).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from edge.config import DockerConfig
from edge.discovery.build import DockerState, SelfFacts, read_files
from edge.discovery.poll import TaskReader
from edge.snapshot import Problem

__all__ = [
    "api_client",
    "engine_host",
    "detect_container_id",
    "read_state",
    "EventWatch",
    "DockerSource",
    "EVENT_FILTERS",
]

# What can change routes: services, task containers, nodes, networks.
EVENT_FILTERS = {
    "type": ["service", "container", "node", "network"],
    "event": [
        "create",
        "update",
        "remove",
        "start",
        "die",
        "stop",
        "kill",
        "destroy",
        "connect",
        "disconnect",
    ],
}

_CONTAINER_ID = re.compile(r"(?:/containers/|/docker/|docker-)([0-9a-f]{64})(?:[/.]|$)")


def api_client(url: str, timeout: float, environ=None, version: str | None = None):
    """
    A ``docker.APIClient`` for ``url``.

    ``tcp://`` URLs use TLS the way the docker CLI does when
    ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` are set.  The constructor
    negotiates the API version (``GET /version``), so call this off the
    reactor thread.
    """
    import docker
    from docker.utils import kwargs_from_env

    kwargs = {}
    if url.startswith(("tcp://", "https://")):
        tls = kwargs_from_env(environment=dict(environ if environ is not None else os.environ)).get("tls")
        if tls is not None:
            kwargs["tls"] = tls
    return docker.APIClient(base_url=url, timeout=timeout, version=version, **kwargs)


def engine_host(url: str) -> str:
    """Where ports published by a plain container of this engine answer."""
    if url.startswith(("tcp://", "https://", "http://")):
        host = urlsplit(url).hostname
        if host and host not in ("localhost",):
            return host
    return "127.0.0.1"


def detect_container_id(
    mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup"
) -> str:
    """
    edge's own container ID, or "" when edge does not run in a container.

    Docker bind-mounts ``/etc/hostname`` & co. from
    ``.../containers/<id>/``, which shows in mountinfo under cgroup v1 and v2;
    cgroup v1 paths also carry the ID.
    """
    for path in (mountinfo, cgroup):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        match = _CONTAINER_ID.search(text)
        if match:
            return match.group(1)
    return ""


def _self_facts(client, container_id: str, in_container: bool) -> SelfFacts:
    if not container_id and in_container:
        # /.dockerenv but no ID in /proc: the default hostname is the short ID.
        container_id = os.environ.get("HOSTNAME", "")
    if not container_id:
        return SelfFacts(in_container=in_container)
    import docker

    try:
        inspected = client.inspect_container(container_id)
    except docker.errors.NotFound:
        # Another engine's container (a remote socket proxy): not on our networks.
        return SelfFacts(in_container=True)
    networks = (inspected.get("NetworkSettings") or {}).get("Networks") or {}
    return SelfFacts(
        in_container=True,
        container_id=inspected.get("Id", container_id),
        network_ids=frozenset(v.get("NetworkID", "") for v in networks.values()) - {""},
    )


def read_state(
    client, config: DockerConfig, container_id: str = "", in_container: bool = False
) -> tuple[DockerState, SelfFacts]:
    """One full, blocking read of everything discovery needs, label files included."""
    info = client.info()
    swarm_info = info.get("Swarm") or {}
    active = swarm_info.get("LocalNodeState") == "active"
    manager = active and bool(swarm_info.get("ControlAvailable"))
    problems = []
    if config.swarm == "true":
        read_swarm = manager
        if not manager:
            problems.append(
                Problem(
                    source="docker",
                    message="docker.swarm is true but the engine is not a swarm manager;"
                    " run edge on a manager (or point it at one)",
                    level="error",
                )
            )
    elif config.swarm == "auto":
        read_swarm = manager
    else:
        read_swarm = False
    if config.containers == "true":
        read_containers = True
    elif config.containers == "auto":
        read_containers = not read_swarm
    else:
        read_containers = False

    state = DockerState(
        info=info,
        swarm=read_swarm,
        containers_read=read_containers,
        engine_host=engine_host(config.url),
        problems=tuple(problems),
    )
    state.networks = client.networks()
    if read_swarm:
        state.services = client.services()
        state.tasks = client.tasks(filters={"desired-state": "running"})
        state.nodes = client.nodes()
    if read_containers:
        state.containers = client.containers(filters={"status": "running"})
    # Here, in the pool, and not while the snapshot is built on the reactor thread.
    state.files = read_files(state)
    return state, _self_facts(client, container_id, in_container)


class EventWatch:
    """An open ``/events`` stream read by its own thread; ``ended`` fires when it stops."""

    _log = Logger()

    def __init__(self, reactor):
        self._reactor = reactor
        self._stream = None
        self._closed = False
        self._lock = threading.Lock()
        self.ended: Deferred = Deferred()

    def close(self) -> None:
        """Stop reading (from the reactor thread); ``ended`` fires soon after."""
        with self._lock:
            self._closed = True
            stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already closed underneath
                pass

    def _run(self, client_factory, opened: Deferred, on_event: Callable[[dict], None]) -> None:
        call = self._reactor.callFromThread
        try:
            stream = client_factory().events(decode=True, filters=EVENT_FILTERS)
        except Exception as e:
            call(opened.errback, Failure(e))
            return
        with self._lock:
            self._stream = stream
            closed = self._closed
        if closed:
            stream.close()
        call(opened.callback, self)
        reason: object = "the daemon closed the event stream"
        try:
            for event in stream:
                if self._closed:
                    break
                call(on_event, event)
        except Exception as e:
            reason = e
        if self._closed:
            reason = "closed"
        call(self.ended.callback, str(reason))


class DockerSource:
    """
    The Engine API behind Deferreds: a sized thread pool plus one events thread.

    ``sync()`` fires with ``(DockerState, SelfFacts)``; ``watch(on_event)``
    fires with an :class:`EventWatch` once the stream is open.
    """

    def __init__(self, config: DockerConfig, reactor, pool_size: int = 2, client_factory=None):
        self.config = config
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=pool_size, name="edge-docker")
        self._client_factory = client_factory or (lambda: api_client(config.url, config.timeout))
        self._client = None
        self._poll_client = None
        self._task_reader = TaskReader()
        self._watches: set[EventWatch] = set()
        self._container_id = detect_container_id()
        self._in_container = bool(self._container_id) or os.path.exists("/.dockerenv")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        for watch in list(self._watches):
            watch.close()
        self._pool.stop()

    def _get_client(self):
        # Built in a pool thread: cheap, but keeps even that off the reactor.
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def sync(self) -> Deferred:
        def work():
            return read_state(
                self._get_client(), self.config, self._container_id, self._in_container
            )

        return deferToThreadPool(self._reactor, self._pool, work)

    def poll(self) -> Deferred:
        """Fires with ``(tasks, nodes, digest)``: the cheap read of :mod:`edge.discovery.poll`.

        Its own client, so a poll and a full sync never share one HTTP session.
        """

        def work():
            if self._poll_client is None:
                self._poll_client = self._client_factory()
            return self._task_reader.read(self._poll_client)

        return deferToThreadPool(self._reactor, self._pool, work)

    def watch(self, on_event: Callable[[dict], None]) -> Deferred:
        # Its own client: the stream holds a connection for as long as it lives.
        watch = EventWatch(self._reactor)
        opened: Deferred = Deferred()
        self._watches.add(watch)
        watch.ended.addBoth(lambda result: (self._watches.discard(watch), result)[1])
        thread = threading.Thread(
            target=watch._run,
            args=(self._client_factory, opened, on_event),
            name="edge-docker-events",
            daemon=True,
        )
        thread.start()
        return opened
