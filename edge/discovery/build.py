"""
Turn what the Docker Engine API returned into a complete :class:`Snapshot`.

Everything here is a pure function of the raw API dicts (as the docker SDK's
``APIClient`` returns them), the ``[docker]`` config and a few facts about
edge itself, so it is tested with small literal dicts and every sync builds
the whole view again (Traefik's way: never a delta).

Backend addressing, in short: when edge is attached to the network a
service's tasks are on, targets are task IPs on that network; otherwise they
are published ports on node addresses (host mode: the task's own node and
port, read from the task's ``Status.PortStatus``).  The ``ingress`` network
and its virtual IPs are never used.  A routed service edge cannot reach gets a
warning :class:`Problem` instead of silently having no targets.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from edge.config import DockerConfig
from edge.snapshot import (
    BackendService,
    Node,
    Problem,
    PublishedPort,
    Router,
    Snapshot,
    SwarmService,
    Target,
)

__all__ = [
    "SelfFacts",
    "DockerState",
    "build_snapshot",
    "labelled_sources",
    "read_files",
    "converging",
    "node_address",
    "running_tasks",
    "published_ports",
]

STACK_LABEL = "com.docker.stack.namespace"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
SWARM_TASK_LABEL = "com.docker.swarm.task.id"

_UPDATING = ("updating", "rollback_started")
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class SelfFacts:
    """Where edge itself runs, which decides how backends are reachable."""

    in_container: bool = False
    container_id: str = ""
    # IDs of the Docker networks edge's own container is attached to.
    network_ids: frozenset[str] = frozenset()


@dataclass
class DockerState:
    """One full read of the Engine API: raw dicts, as the docker SDK returns them."""

    info: dict = field(default_factory=dict)
    swarm: bool = False  # services/tasks/nodes were read
    containers_read: bool = False  # plain containers were read
    services: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    networks: list = field(default_factory=list)
    containers: list = field(default_factory=list)
    # Where published ports of plain containers answer when edge is outside
    # their network: 127.0.0.1 for a local socket, the host of a tcp:// URL.
    engine_host: str = "127.0.0.1"
    problems: tuple[Problem, ...] = ()
    # The files labels name (users files, PEM files), read with the rest in
    # the discovery thread pool (read_state).  None: not read ahead, so the
    # build reads them itself (tools and tests that build from literal dicts).
    files: Any = None


LabelReader = Callable[..., Any]


def _default_reader() -> LabelReader:
    from edge.discovery.labels import read_labels

    return read_labels


def _compose_source(labels: dict, fallback: str) -> str:
    from edge.discovery.labels import compose_source as name

    return name(labels, fallback)


def _conflict():
    from edge.discovery.labels import CONFLICT

    return CONFLICT


def container_health(raw: dict) -> str:
    """
    A listed container's health: "" (no health check), "healthy", "unhealthy"
    or "starting", from ``Health.Status`` or else the ``Status`` text
    (``Up 5 minutes (unhealthy)``, ``Up 2 seconds (health: starting)``).
    """
    status = _get(raw, "Health", "Status", default="")
    if isinstance(status, str) and status and status != "none":
        return status
    text = raw.get("Status") or ""
    if not isinstance(text, str):
        return ""
    if "(health: starting)" in text:
        return "starting"
    if "(unhealthy)" in text:
        return "unhealthy"
    if "(healthy)" in text:
        return "healthy"
    return ""


def _default_middleware_reader() -> LabelReader:
    from edge.discovery.labels import read_middlewares

    return read_middlewares


def labelled_sources(state: DockerState) -> list[tuple[str, dict]]:
    """(name, labels) of every swarm service and plain container the state holds."""
    sources = []
    if state.swarm:
        sources += [
            (_get(s, "Spec", "Name", default=""), _get(s, "Spec", "Labels", default={}))
            for s in state.services
        ]
    if state.containers_read:
        sources += [
            ((c.get("Names") or ["/"])[0].lstrip("/"), c.get("Labels") or {})
            for c in state.containers
            if SWARM_TASK_LABEL not in (c.get("Labels") or {})
        ]
    return sources


def read_files(state: DockerState):
    """The files the state's labels name (blocking: the discovery pool calls it)."""
    from edge.discovery.labels import read_label_files

    return read_label_files(labels for _name, labels in labelled_sources(state))


# -- small readers of the API shapes -----------------------------------------


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return default
        d = d.get(key)
    return default if d is None else d


def _split_host(addr: str) -> str:
    """``10.0.0.1:2377`` -> ``10.0.0.1``; ``[fd00::1]:2377`` -> ``fd00::1``."""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    if addr.count(":") == 1:
        return addr.rsplit(":", 1)[0]
    return addr


def node_address(node: dict) -> str:
    """
    The address other machines reach a node on.

    For managers ``Status.Addr`` may read ``0.0.0.0`` or ``127.0.0.1`` (it is
    the address the node connected from); ``ManagerStatus.Addr`` is the
    advertised one, without its ``:2377``.
    """
    manager_addr = _split_host(_get(node, "ManagerStatus", "Addr", default=""))
    if manager_addr not in _ANY_ADDRESS:
        return manager_addr
    return _get(node, "Status", "Addr", default="")


def running_tasks(tasks: Iterable[dict]) -> list[dict]:
    """Tasks that run now and are meant to: the only ones edge routes to."""
    return [
        t
        for t in tasks
        if _get(t, "Status", "State") == "running" and t.get("DesiredState") == "running"
    ]


def published_ports(service: dict) -> tuple[PublishedPort, ...]:
    """A service's published ports, from ``Endpoint.Ports`` or else its spec."""
    ports = _get(service, "Endpoint", "Ports") or _get(
        service, "Spec", "EndpointSpec", "Ports", default=[]
    )
    seen = set()
    for p in ports:
        if not p.get("TargetPort"):
            continue
        seen.add(
            PublishedPort(
                target_port=int(p["TargetPort"]),
                published_port=int(p.get("PublishedPort") or 0),
                protocol=p.get("Protocol", "tcp"),
                mode=p.get("PublishMode", "ingress"),
            )
        )
    return tuple(sorted(seen, key=lambda p: (p.target_port, p.protocol, p.mode, p.published_port)))


def converging(state: DockerState) -> bool:
    """True while some service is still moving towards its desired state."""
    by_service: dict[str, list[dict]] = defaultdict(list)
    for task in state.tasks:
        if task.get("DesiredState") == "running":
            by_service[task.get("ServiceID", "")].append(task)
    for service in state.services:
        if _get(service, "UpdateStatus", "State") in _UPDATING:
            return True
        tasks = by_service.get(service.get("ID", ""), [])
        if any(_get(t, "Status", "State") != "running" for t in tasks):
            return True
        replicas = _get(service, "Spec", "Mode", "Replicated", "Replicas")
        if replicas is not None and len(tasks) != replicas:
            return True
    return False


# -- the network a service is reached on -------------------------------------


@dataclass
class _Networks:
    by_id: dict[str, dict]
    ids_by_name: dict[str, str]
    ingress: frozenset[str]

    @classmethod
    def of(cls, networks: list[dict]) -> "_Networks":
        by_id = {n.get("Id", ""): n for n in networks}
        ids_by_name = {n.get("Name", ""): n.get("Id", "") for n in networks}
        ingress = frozenset(
            n.get("Id", "") for n in networks if n.get("Ingress") or n.get("Name") == "ingress"
        )
        return cls(by_id, ids_by_name, ingress)

    def name(self, network_id: str) -> str:
        return _get(self.by_id, network_id, "Name", default=network_id)

    def match(self, wanted: str, candidates: Iterable[str], stack: str) -> str | None:
        """
        The candidate network ID a label's ``network`` value means.

        Matches by ID (or an ID prefix of 12+ characters) and by name, with
        or without the stack's prefix: ``frontend`` finds ``proxy_frontend``
        in stack ``proxy`` and the other way round.
        """
        names = {wanted}
        if stack:
            names.add(f"{stack}_{wanted}")
            if wanted.startswith(stack + "_"):
                names.add(wanted[len(stack) + 1 :])
        for nid in candidates:
            if nid == wanted or (len(wanted) >= 12 and nid.startswith(wanted)):
                return nid
            if self.name(nid) in names:
                return nid
        return None


def _is_ingress_name(networks: _Networks, wanted: str) -> bool:
    nid = networks.ids_by_name.get(wanted, wanted)
    return nid in networks.ingress


# -- the builder ---------------------------------------------------------------


class _Builder:
    def __init__(
        self,
        state: DockerState,
        config: DockerConfig,
        me: SelfFacts,
        reader: LabelReader,
        middleware_reader: LabelReader | None,
        file_middlewares: dict | None = None,
    ):
        self.state = state
        self.config = config
        self.me = me
        self._read_labels = reader
        self._read_middlewares = middleware_reader
        # name@file ones (the config file's), then name@docker ones from collect_middlewares.
        self.shared_middlewares: dict = dict(file_middlewares or {})
        self.networks = _Networks.of(state.networks)
        self.routers: list[Router] = []
        self.services: dict[str, BackendService] = {}
        self.service_origin: dict[str, list[str]] = {}
        self.service_conflicts: set[str] = set()
        self.swarm_services: dict[str, SwarmService] = {}
        self.l4 = _L4Collector(self.problem)  # traefik.tcp.* / traefik.udp.*
        self.problems: list[Problem] = list(state.problems)
        self.nodes: dict[str, Node] = {}
        self.local_node_id = _get(state.info, "Swarm", "NodeID", default="")

    def problem(self, source: str, message: str, level: str = "warning", label: str = "") -> None:
        self.problems.append(Problem(source=source, message=message, level=level, label=label))

    def read_labels(self, source: str, labels: dict, **kwargs):
        if self._read_middlewares is not None:
            kwargs["shared_middlewares"] = self.shared_middlewares
        return self._read_labels(source, labels, **kwargs)

    def routing_labels(self, source: str, labels: dict):
        """The labels' routing config, its routers and problems recorded; None when disabled.

        A disabled service's problems (a bad enable value) still count.
        """
        config = self.read_labels(
            source,
            labels,
            provider="docker",
            domain=self.config.domain,
            exposed_by_default=self.config.exposed_by_default,
        )
        self.problems.extend(config.problems)
        if not config.enabled:
            return None
        return config

    def collect_middlewares(self) -> None:
        """Middlewares one service defines that other services' routers may use."""
        if self._read_middlewares is None:
            return
        seen: dict = {}
        for source, labels in sorted(labelled_sources(self.state), key=lambda pair: pair[0]):
            if not any(".middlewares." in key for key in labels):
                continue
            for name, middleware in self._read_middlewares(source, labels, provider="docker").items():
                previous = seen.setdefault(name, (middleware, source))
                if previous[0] != middleware:
                    # Traefik drops a middleware defined differently twice, and
                    # with it every router that uses it.
                    self.problem(
                        source,
                        f"middleware {name} is defined differently by {previous[1]} and {source};"
                        " it is not used",
                        level="error",
                        label="middleware",
                    )
                    self.shared_middlewares[name] = _conflict()
                else:
                    self.shared_middlewares.setdefault(name, middleware)

    # -- nodes

    def read_nodes(self) -> None:
        for raw in self.state.nodes:
            nid = raw.get("ID", "")
            self.nodes[nid] = Node(
                id=nid,
                hostname=_get(raw, "Description", "Hostname", default=""),
                role=_get(raw, "Spec", "Role", default="worker"),
                address=node_address(raw),
                state=_get(raw, "Status", "State", default="unknown"),
                availability=_get(raw, "Spec", "Availability", default="active"),
                leader=bool(_get(raw, "ManagerStatus", "Leader", default=False)),
                reachability=_get(raw, "ManagerStatus", "Reachability", default=""),
            )

    # -- swarm services

    def read_services(self) -> None:
        tasks_by_service: dict[str, list[dict]] = defaultdict(list)
        for task in running_tasks(self.state.tasks):
            node = self.nodes.get(task.get("NodeID", ""))
            if node is not None and not node.reachable:
                # Its State stays "running" because the node cannot report.
                continue
            tasks_by_service[task.get("ServiceID", "")].append(task)
        for raw in sorted(self.state.services, key=lambda s: _get(s, "Spec", "Name", default="")):
            name = _get(raw, "Spec", "Name", default="")
            sid = raw.get("ID", "")
            labels = _get(raw, "Spec", "Labels", default={})
            stack = labels.get(STACK_LABEL, "")
            tasks = sorted(tasks_by_service.get(sid, []), key=lambda t: t.get("ID", ""))
            ports = published_ports(raw)
            self.swarm_services[name] = SwarmService(
                name=name,
                id=sid,
                stack=stack,
                published_ports=ports,
                node_ids=tuple(sorted({t.get("NodeID", "") for t in tasks} - {""})),
                replicas_running=len(tasks),
            )
            config = self.routing_labels(name, labels)
            if config is None:
                continue
            self.l4.add(
                name, config.l4, lambda spec: self.target_port(name, spec, ports),
                lambda spec, _port: self.service_targets(name, raw, stack, spec, tasks, ports),
            )
            if any(self.target_port(name, spec, ports) is None for spec in config.services):
                continue  # as in Traefik: no usable port, no router (404, not 503)
            self.routers.extend(config.routers)
            for spec in config.services:
                targets = self.service_targets(name, raw, stack, spec, tasks, ports)
                self.add_service(name, spec, targets)

    def service_network(self, source: str, raw: dict, stack: str, wanted: str) -> tuple[str | None, bool]:
        """(network ID to use or None, whether a failure was already reported)."""
        attached = [
            n.get("Target", "")
            for n in (
                _get(raw, "Spec", "TaskTemplate", "Networks")
                or _get(raw, "Spec", "Networks", default=[])
            )
        ]
        # Specs may name networks; the API normally gives IDs.
        attached = [self.networks.ids_by_name.get(n, n) for n in attached]
        usable = [n for n in attached if n not in self.networks.ingress]
        if wanted:
            if _is_ingress_name(self.networks, wanted):
                self.problem(
                    source,
                    f"network {wanted!r} is the ingress network; edge never routes through it",
                    level="error",
                    label="network",
                )
                return None, True
            found = self.networks.match(wanted, usable, stack)
            if found is not None:
                return found, False
            # Traefik warns and falls back to an available network.
            on = ", ".join(sorted(self.networks.name(n) for n in usable)) or "none"
            self.problem(
                source,
                f"network {wanted!r} is not one of the service's networks ({on});"
                " falling back as if no network were named",
                label="network",
            )
        if len(usable) == 1:
            return usable[0], False
        shared = [n for n in usable if n in self.me.network_ids]
        if len(shared) == 1:
            return shared[0], False
        return None, False

    def target_port(self, source: str, spec, ports: tuple[PublishedPort, ...]) -> int | None:
        if spec.port:
            return spec.port
        protocol = getattr(spec, "protocol", "tcp")  # UDP services infer from UDP ports
        targets = sorted({p.target_port for p in ports if p.protocol == protocol})
        if len(targets) == 1:
            return targets[0]
        why = (
            "it publishes no port"
            if not targets
            else f"it publishes several ports ({', '.join(map(str, targets))})"
        )
        self.problem(
            source,
            f"no port for {spec.name}: {why}; set traefik.port or"
            " traefik.http.services.<name>.loadbalancer.server.port",
            level="error",
            label="port",
        )
        return None

    def service_targets(
        self,
        source: str,
        raw: dict,
        stack: str,
        spec,
        tasks: list[dict],
        ports: tuple[PublishedPort, ...],
    ) -> tuple[Target, ...]:
        port = self.target_port(source, spec, ports)
        if port is None:
            return ()
        wanted = spec.network or self.config.network
        network_id, reported = self.service_network(source, raw, stack, wanted)
        if reported:
            return ()
        mode = self.config.backend_addressing
        if mode == "auto":
            mode = "task" if network_id and network_id in self.me.network_ids else "published"
        if mode == "task":
            if network_id is None:
                self.problem(
                    source,
                    f"{spec.name} is on several networks and no label names the one to use"
                    " (traefik.docker.network)",
                    level="error",
                    label="network",
                )
                return ()
            return self.task_targets(source, raw, spec, tasks, network_id, port)
        return self.published_targets(source, spec, tasks, ports, port)

    def task_targets(self, source, raw, spec, tasks, network_id, port) -> tuple[Target, ...]:
        if spec.lb_swarm:
            mode = _get(raw, "Spec", "EndpointSpec", "Mode", default="vip")
            for vip in _get(raw, "Endpoint", "VirtualIPs", default=[]):
                if vip.get("NetworkID") == network_id and mode == "vip":
                    return (
                        Target(
                            id=raw.get("ID", ""),
                            host=vip.get("Addr", "").split("/")[0],
                            port=port,
                            scheme=spec.scheme,
                            weight=spec.weight,
                        ),
                    )
            self.problem(
                source,
                f"{spec.name}: no virtual IP on network {self.networks.name(network_id)!r}"
                " (endpoint mode dnsrr?); using task addresses",
                label="lb_swarm",
            )
        targets = []
        unaddressed = []
        for task in tasks:
            found = len(targets)
            for attachment in task.get("NetworksAttachments") or ():
                if _get(attachment, "Network", "ID") != network_id:
                    continue
                addresses = attachment.get("Addresses") or ()
                if addresses:
                    targets.append(
                        Target(
                            id=task.get("ID", ""),
                            host=addresses[0].split("/")[0],
                            port=port,
                            scheme=spec.scheme,
                            weight=spec.weight,
                            node_id=task.get("NodeID", ""),
                        )
                    )
            if len(targets) == found:
                unaddressed.append(task.get("ID", "")[:12])
        if unaddressed:
            self.problem(
                source,
                f"{spec.name}: task(s) {', '.join(sorted(unaddressed))} not routed: no address"
                f" on network {self.networks.name(network_id)!r}",
                label="network",
            )
        return tuple(targets)

    def published_targets(self, source, spec, tasks, ports, port) -> tuple[Target, ...]:
        protocol = getattr(spec, "protocol", "tcp")
        matching = [p for p in ports if p.target_port == port and p.protocol == protocol]
        if not matching:
            self.problem(
                source,
                f"{spec.name} is unreachable: edge is not attached to its network and it"
                f" publishes no port for {port}; attach edge to the service's network or"
                f" publish the port (mode=host works without the routing mesh)",
                label="network",
            )
            return ()
        host_mode = any(p.mode == "host" for p in matching)
        ingress = next((p for p in matching if p.mode != "host" and p.published_port), None)
        # A fixed host-mode port from the spec: the port a task listens on when its
        # PortStatus is missing (tasks re-registered after a leader election).
        fixed = {p.published_port for p in matching if p.mode == "host" and p.published_port}
        fixed_host = fixed.pop() if len(fixed) == 1 else 0
        targets = []
        missing_nodes = set()
        unaddressed = []
        for task in tasks:
            node_id = task.get("NodeID", "")
            node = self.nodes.get(node_id)
            if node is None or not node.address:
                missing_nodes.add(node_id)
                continue
            published = 0
            if host_mode:
                # With IPv6 on, the engine binds 0.0.0.0 and :: on ports that can
                # differ, and lists both here without their addresses, IPv4's
                # first: the first is the one a node's IPv4 address reaches.
                for p in _get(task, "Status", "PortStatus", "Ports", default=[]):
                    if (
                        p.get("TargetPort") == port
                        and p.get("Protocol", "tcp") == protocol
                        and p.get("PublishMode") == "host"
                        and p.get("PublishedPort")
                    ):
                        published = int(p["PublishedPort"])
                        break
            if not published and host_mode:
                published = fixed_host
            if not published and ingress is not None:
                published = ingress.published_port
            if not published:
                unaddressed.append(task.get("ID", "")[:12])
            if published:
                targets.append(
                    Target(
                        id=task.get("ID", ""),
                        host=node.address,
                        port=published,
                        scheme=spec.scheme,
                        weight=spec.weight,
                        node_id=node_id,
                    )
                )
        if missing_nodes:
            self.problem(
                source,
                f"{spec.name}: no address known for node(s) {', '.join(sorted(missing_nodes))}",
                label="network",
            )
        if unaddressed:
            self.problem(
                source,
                f"{spec.name}: task(s) {', '.join(sorted(unaddressed))} not routed: swarm reports"
                f" no published port for {port} and the service publishes no fixed host port",
                label="network",
            )
        return tuple(targets)

    # -- plain containers

    def read_containers(self) -> None:
        merged_counts: dict[str, int] = defaultdict(int)
        for raw in sorted(self.state.containers, key=lambda c: c.get("Id", "")):
            labels = raw.get("Labels") or {}
            if SWARM_TASK_LABEL in labels or raw.get("State", "running") != "running":
                continue
            if self.me.container_id and raw.get("Id") == self.me.container_id:
                continue
            names = raw.get("Names") or [raw.get("Id", "")[:12]]
            # Traefik's name for a compose container is <service>_<project>:
            # two projects' "web" services must stay two load balancers.
            source = _compose_source(labels, names[0].lstrip("/"))
            health = container_health(raw)
            if health not in ("", "healthy"):
                # Traefik routes a container with a health check only when healthy.
                self.problem(source, f"container {names[0].lstrip('/')} is {health}; not routed", label="health")
                continue
            config = self.routing_labels(source, labels)
            if config is None:
                continue
            ports = tuple(
                sorted(
                    {
                        PublishedPort(
                            target_port=int(p["PrivatePort"]),
                            published_port=int(p.get("PublicPort") or 0),
                            protocol=p.get("Type", "tcp"),
                            mode="host",
                        )
                        for p in raw.get("Ports") or ()
                        if p.get("PrivatePort")
                    },
                    key=lambda p: (p.target_port, p.protocol, p.published_port),
                )
            )
            merged_counts[source] += 1
            own_ports = ports
            previous = self.swarm_services.get(source)
            if previous is not None:
                ports = tuple(
                    sorted(
                        set(ports) | set(previous.published_ports),
                        key=lambda p: (p.target_port, p.protocol, p.published_port),
                    )
                )
            self.swarm_services[source] = SwarmService(
                name=source,
                id=previous.id if previous else raw.get("Id", ""),
                stack=labels.get(COMPOSE_PROJECT_LABEL, ""),
                published_ports=ports,
                node_ids=(self.local_node_id,) if self.local_node_id else (),
                replicas_running=merged_counts[source],
            )
            self.l4.add(
                source, config.l4, lambda spec: self.container_port(source, spec, own_ports),
                lambda spec, port: self.container_targets(source, raw, labels, spec, port),
            )
            port_of = {spec.name: self.container_port(source, spec, own_ports) for spec in config.services}
            if None in port_of.values():
                continue  # as in Traefik: no usable port, no router (404, not 503)
            self.routers.extend(config.routers)
            for spec in config.services:
                targets = self.container_targets(source, raw, labels, spec, port_of[spec.name])
                self.add_service(source, spec, targets)

    def container_port(self, source, spec, ports) -> int | None:
        """The label's port, else the lowest exposed port (Traefik's getPort)."""
        if spec.port:
            return spec.port
        protocol = getattr(spec, "protocol", None)  # TCP/UDP services: ports of their protocol
        exposed = sorted({p.target_port for p in ports if protocol in (None, p.protocol)})
        if exposed:
            return exposed[0]
        self.problem(
            source,
            f"no port for {spec.name}: the container exposes no port, so it is not routed;"
            " set traefik.port or traefik.http.services.<name>.loadbalancer.server.port",
            level="error",
            label="port",
        )
        return None

    def container_targets(self, source, raw, labels, spec, port) -> tuple[Target, ...]:
        cid = raw.get("Id", "")
        if _get(raw, "HostConfig", "NetworkMode") == "host":
            return (Target(cid, self.state.engine_host, port, spec.scheme, spec.weight, self.local_node_id),)
        attached = _get(raw, "NetworkSettings", "Networks", default={})
        by_id = {v.get("NetworkID", ""): (name, v) for name, v in attached.items()}
        stack = labels.get(COMPOSE_PROJECT_LABEL, "")
        wanted = spec.network or self.config.network
        chosen = None
        if wanted:
            nid = self.networks.match(wanted, by_id, stack)
            if nid is None:
                # Containers may sit on networks the listing does not show by ID.
                nid = next(
                    (
                        i
                        for i, (name, _) in by_id.items()
                        if name in (wanted, f"{stack}_{wanted}")
                    ),
                    None,
                )
            if nid is None:
                # Traefik warns and falls back to an available network.
                self.problem(
                    source,
                    f"network {wanted!r} is not one of the container's networks"
                    f" ({', '.join(sorted(n for n, _ in by_id.values())) or 'none'});"
                    " falling back as if no network were named",
                    label="network",
                )
            chosen = nid
        if chosen is None and len(by_id) == 1:
            chosen = next(iter(by_id))
        elif chosen is None:
            shared = sorted(n for n in by_id if n in self.me.network_ids)
            if shared:
                chosen = shared[0]
            elif by_id:
                chosen = sorted(by_id, key=lambda i: by_id[i][0])[0]
        mode = self.config.backend_addressing
        if mode == "auto":
            driver = _get(self.networks.by_id, chosen or "", "Driver", default="")
            reachable_bridge = (
                not self.me.in_container
                and driver == "bridge"
                and self.state.engine_host == "127.0.0.1"
            )
            mode = "task" if chosen and (chosen in self.me.network_ids or reachable_bridge) else "published"
        if mode == "task" and chosen:
            # An IPv6-only network leaves IPAddress empty.
            ip = by_id[chosen][1].get("IPAddress", "") or by_id[chosen][1].get("GlobalIPv6Address", "")
            if ip:
                return (Target(cid, ip, port, spec.scheme, spec.weight, self.local_node_id),)
        # IPv4 bindings first: the same port is listed once per address family.
        for p in sorted(raw.get("Ports") or (), key=lambda p: ":" in p.get("IP", "")):
            if p.get("PrivatePort") == port and p.get("PublicPort") and p.get("Type", "tcp") == getattr(spec, "protocol", "tcp"):
                host = p.get("IP", "")
                if host in _ANY_ADDRESS:
                    host = self.state.engine_host
                return (Target(cid, host, int(p["PublicPort"]), spec.scheme, spec.weight, self.local_node_id),)
        self.problem(
            source,
            f"{spec.name} is unreachable: edge is not attached to the container's network"
            f" and port {port} is not published",
            label="network",
        )
        return ()

    # -- assembling

    def add_service(self, source: str, spec, targets: tuple[Target, ...]) -> None:
        """
        Traefik's merge: definitions of one service name that agree (all but
        their servers) share one load balancer; ones that differ drop it.
        """
        service = BackendService(
            name=spec.name,
            targets=targets,
            pass_host_header=spec.pass_host_header,
            sticky=spec.sticky,
            health_check=spec.health_check,
        )
        existing = self.services.get(spec.name)
        origins = self.service_origin.setdefault(spec.name, [])
        if source not in origins:
            origins.append(source)
        if existing is None:
            self.services[spec.name] = service
        elif replace(existing, targets=()) == replace(service, targets=()):
            self.services[spec.name] = replace(existing, targets=existing.targets + targets)
        else:
            self.service_conflicts.add(spec.name)

    def unique_routers(self) -> list[Router]:
        """Traefik's merge for routers: one kept when all agree, none when they differ."""
        chosen: dict[str, Router] = {}
        sources: dict[str, list[str]] = defaultdict(list)
        conflicts: set[str] = set()
        for router in self.routers:
            sources[router.name].append(router.source)
            previous = chosen.setdefault(router.name, router)
            if replace(previous, source="") != replace(router, source=""):
                conflicts.add(router.name)
        for name in sorted(self.service_conflicts):
            self.problem(
                self.service_origin[name][-1],
                f"service {name} is defined differently by {', '.join(self.service_origin[name])};"
                " it is dropped with its routers, as Traefik does",
                level="error",
                label="service",
            )
            del self.services[name]
        for name in sorted(conflicts):
            self.problem(
                sources[name][-1] or name,
                f"router {name} is defined differently by {', '.join(dict.fromkeys(sources[name]))};"
                " it is dropped, as Traefik does",
                level="error",
                label="router",
            )
        return [
            r for name, r in chosen.items() if name not in conflicts and r.service not in self.service_conflicts
        ]

    def snapshot(self) -> Snapshot:
        self.read_nodes()
        self.collect_middlewares()
        if self.state.swarm:
            self.read_services()
        if self.state.containers_read:
            self.read_containers()
        return Snapshot.build(
            routers=self.unique_routers(),
            services=self.services.values(),
            nodes=self.nodes.values(),
            swarm_services=self.swarm_services.values(),
            problems=self.problems,
            **self.l4.snapshot_parts(),
        )


class _L4Collector:
    """TCP/UDP routers and services gathered over every Docker service, merged as Traefik does."""

    def __init__(self, problem):
        self._problem = problem
        self.routers: dict[str, tuple] = {}
        self.services: dict[tuple[str, str], tuple] = {}
        self.conflicts: set[str] = set()

    def add(self, source: str, l4, port_of, targets_of) -> None:
        """``port_of(spec)`` the container port (None: reported, not routed); ``targets_of(spec, port)``."""
        dead = set()
        for spec in l4.services:
            port = port_of(spec)
            if port is None:
                dead.add(spec.name)
                continue
            targets = targets_of(spec, port)
            key = (spec.protocol, spec.name)
            previous = self.services.get(key)
            if previous is None:
                self.services[key] = (spec, targets)
            elif previous[0] == spec:
                self.services[key] = (spec, previous[1] + targets)
            else:
                self.conflicts.add(spec.name)
                self._problem(source, f"{spec.protocol.upper()} service {spec.name} is defined differently"
                              " by several services; it is dropped with its routers, as Traefik does",
                              level="error", label="service")
        for router in l4.tcp_routers + l4.udp_routers:
            if router.service in dead:
                continue
            previous = self.routers.get(router.name)
            if previous is not None and replace(previous, source="") != replace(router, source=""):
                self.conflicts.add(router.name)
                self._problem(source, f"router {router.name} is defined differently by {previous.source}"
                              f" and {source}; it is dropped, as Traefik does", level="error", label="router")
            self.routers.setdefault(router.name, router)

    def snapshot_parts(self) -> dict:
        from edge.snapshot import TCPRouter, TCPService, UDPService

        keep = [r for n, r in self.routers.items() if n not in self.conflicts and r.service not in self.conflicts]
        services = [(spec, targets) for (_p, name), (spec, targets) in self.services.items() if name not in self.conflicts]
        return {
            "tcp_routers": [r for r in keep if isinstance(r, TCPRouter)],
            "udp_routers": [r for r in keep if not isinstance(r, TCPRouter)],
            "tcp_services": [TCPService(s.name, t, s.proxy_protocol) for s, t in services if s.protocol == "tcp"],
            "udp_services": [UDPService(s.name, t) for s, t in services if s.protocol == "udp"],
        }


def build_snapshot(
    state: DockerState,
    config: DockerConfig,
    me: SelfFacts = SelfFacts(),
    read_labels: LabelReader | None = None,
    file_middlewares: dict | None = None,
) -> Snapshot:
    """
    The complete Docker view: routers, services with targets, nodes, DNS facts.

    ``read_labels`` replaces edge's label reader (tests); with the default one,
    middlewares defined on one service are usable from every other one, and
    ``file_middlewares`` (``name@file``, edge.discovery.references) from all.
    The files labels name come from ``state.files`` (read off the reactor
    thread by :func:`~edge.discovery.docker_client.read_state`).
    """
    if read_labels is None:
        files = state.files if state.files is not None else read_files(state)
        labels, middlewares = _default_reader(), _default_middleware_reader()
        return _Builder(
            state,
            config,
            me,
            lambda *args, **kwargs: labels(*args, files=files, **kwargs),
            lambda *args, **kwargs: middlewares(*args, files=files, **kwargs),
            file_middlewares,
        ).snapshot()
    return _Builder(state, config, me, read_labels, None).snapshot()
