"""The cluster as the admission core sees it: one frozen snapshot.

A ``ClusterSnapshot`` holds nodes, namespaces' labels and annotations, Services, the API
server version, per-workload usage summaries, the interception mechanisms the cluster runs
(the eBPF redirector's pod on each node, the RuntimeClasses) and the ConfigMaps the data-plane
flavour reads (its control plane's configuration). It is
built once (from ``kubectl get nodes,namespaces,services -A -o yaml`` output, or by a live
cache in the background) and then only read, so admissions never touch the network.

Nodes are pre-grouped: nodes that share their labels (minus per-node identity labels such
as ``kubernetes.io/hostname``), taints, cordon state, kernel, kubelet, OS image and the state
of the redirector on them are one group, and scheduling constraints are evaluated per group. A
5,000-node cluster is usually a few dozen groups, which keeps admission time nearly flat in
the number of nodes.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from webhook.policy import Policy
from webhook.usage.samples import UsageSummary
from webhook.versions import KubeVersion
from webhook.workload import Service, ServicePort, WorkloadKey

# Labels that are unique per node by construction; others are detected by their spread.
WELL_KNOWN_IDENTITY_LABELS = frozenset({"kubernetes.io/hostname"})


class Memo:
    """A cache of values derived from one immutable snapshot, bounded in count and in bytes.

    Pods of one workload share their scheduling constraints, and a ReplicaSet's pods reach
    the webhook byte-identical, so eligibility and whole outcomes repeat. Entries are pure
    functions of the snapshot and their key. Each entry states its cost in bytes (what it
    keeps alive); one over ``max_entry`` is not kept at all, so a few huge pods cannot pin
    memory, and the oldest entries go until the total fits ``max_bytes`` and ``limit``: one
    at a time, so no request pays for freeing the whole cache at once (it showed in p99).
    """

    def __init__(
        self, limit: int = 4096, *, max_bytes: int = 8 << 20, max_entry: int = 64 << 10, seen: int = 4096
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        # OrderedDict, not dict: popping a plain dict's oldest key walks over the deleted slots
        # before it, which made eviction cost tens of microseconds once the memo was full.
        self._data: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._seen_limit = seen
        self._seen: OrderedDict[int, None] = OrderedDict()

    def get(self, key: Hashable) -> object:
        hit = self._data.get(key)
        return None if hit is None else hit[0]

    def again(self, key: Hashable) -> bool:
        """Whether ``key`` was asked about before (by its hash, the last ``seen`` keys): for
        a memo that keeps a value from its second request on, so that what is asked for once
        (a changed Deployment's first pod, a one-off Job) costs nothing to keep and never
        pushes out what is asked for again. A first request is remembered."""
        seen, once = self._seen, hash(key)  # a lookup has hashed the key already
        if once in seen:
            return True
        seen[once] = None
        if len(seen) > self._seen_limit:
            seen.popitem(last=False)
        return False

    def put(self, key: Hashable, value: object, cost: int) -> None:
        if cost > self.max_entry or key in self._data:
            return
        data = self._data
        while data and (len(data) >= self.limit or self.bytes + cost > self.max_bytes):
            self.bytes -= data.popitem(last=False)[1][1]  # FIFO
        data[key] = (value, cost)
        self.bytes += cost

    def clear(self) -> None:
        self._data.clear()
        self._seen.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)


# What a memoised outcome keeps alive: its key (the pod's JSON, exact size), the patch and
# the decision, never the pod itself. The patch is mostly what we add (~10 KiB), and at most
# the size of the pod beyond that (a re-injection's diff may carry the user's values), so an
# entry is costed as twice the pod's JSON plus 16 KiB; tests/test_hostile.py checks that is
# not an under-estimate.
def outcome_cost(key_json_bytes: int, patch_json_bytes: int) -> int:
    """What a memoised outcome holds: its key (kept as bytes, ~1x, plus the hash table's
    share) and its patch as Python objects (measured at ~4.4x its JSON: small dicts and
    strings), plus the outcome itself and its decision (measured by tests/test_hostile.py)."""
    return 2 * key_json_bytes + 5 * patch_json_bytes + (16 << 10)


def outcome_memo() -> Memo:
    """Outcomes by whole object or by template: 256 typical pods fit, a pod over 64 KiB of
    JSON is never kept, and the memo never holds more than ~8 MiB however large or varied
    the pods are."""  # a typical Linkerd pod: 2 x 1 KiB + 6 x 7 KiB + 16 KiB = 60 KiB, ~135 fit
    return Memo(limit=256, max_bytes=8 << 20, max_entry=outcome_cost(64 << 10, 16 << 10))


class SnapshotError(ValueError):
    """A cluster file that is not what ``kubectl get ... -o yaml`` prints."""


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    kernel: str | None = None
    kubelet: str | None = None
    # status.nodeInfo.osImage ("Amazon Linux 2023.8.20250808", "Bottlerocket OS 1.44.0
    # (aws-k8s-1.33)"): with the kubelet and kernel, which firewall backends the node has
    os_image: str | None = None


@dataclass(frozen=True, slots=True)
class RedirectorState:
    """The eBPF redirector (Merbridge's DaemonSet pod) on one node, reduced to what decides
    whether it redirects a pod's traffic; nodes in the same state share a group."""

    ready: bool  # Running, Ready, not terminating
    mode: str  # its --mode: which mesh's proxy (uid, ports, container name) it serves
    cni_mode: bool  # --cni-mode: cross-node inbound (tc) and per-pod exclusions work


class Agent(NamedTuple):
    """A redirector pod as read from the cluster: its node, its state, its name (for
    explanations) and when its container last started (None: not known)."""

    node: str
    state: RedirectorState
    name: str
    started: datetime | None = None


@dataclass(frozen=True, slots=True)
class RuntimeClass:
    """A ``node.k8s.io/v1`` RuntimeClass: what the API server's RuntimeClass admission merges
    into a pod that names it (scheduling, overhead), and its handler."""

    name: str
    handler: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    overhead: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Autoscaler:
    """A VerticalPodAutoscaler (``autoscaling.k8s.io/v1``), reduced to what decides whether it
    sizes a container of the pods its target owns."""

    namespace: str
    name: str
    target_kind: str
    target_name: str
    update_mode: str  # VPA's default when unset: Recreate
    policies: tuple[tuple[str, str], ...] = ()  # (containerName or "*", mode: Auto | Off)

    def mode_for(self, container: str) -> str:
        """The container's scaling mode, as VPA resolves it: its own policy, else the ``*``
        one, else Auto."""
        fallback = "Auto"
        for name, mode in self.policies:
            if name == container:
                return mode
            if name == "*":
                fallback = mode
        return fallback


@dataclass(frozen=True, slots=True)
class NodeGroup:
    labels: Mapping[str, str]  # the labels every member has, identity labels left out
    taints: tuple[Taint, ...]
    unschedulable: bool
    kernel: str | None
    kubelet: str | None
    nodes: tuple[Node, ...]
    redirector: RedirectorState | None = None  # None: no redirector pod on these nodes
    os_image: str | None = None


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: Mapping[str, Node] = field(default_factory=dict)
    groups: tuple[NodeGroup, ...] = ()
    identity_labels: frozenset[str] = WELL_KNOWN_IDENTITY_LABELS
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    services: Mapping[str, tuple[Service, ...]] = field(default_factory=dict)
    server_version: KubeVersion | None = None
    usage: Mapping[WorkloadKey, UsageSummary] = field(default_factory=dict)
    # namespace -> its annotations (but kubectl's last-applied copy): what a flavour's pods
    # inherit from their namespace
    namespace_annotations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # (namespace, name) -> data of the ConfigMaps the flavour reads (its control plane's
    # configuration: Linkerd's trust roots, Istio's mesh config)
    config_maps: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    # node name -> the redirector there (and its pod's name, for explanations)
    redirectors: Mapping[str, tuple[RedirectorState, str]] = field(default_factory=dict)
    # node name -> when the redirector's container there last started (not part of its
    # state, which groups nodes: pods that started before it lost their redirect, see
    # ``dataplane.base.Redirect.repaired``)
    redirector_starts: Mapping[str, datetime] = field(default_factory=dict)
    runtime_classes: Mapping[str, RuntimeClass] = field(default_factory=dict)
    # (namespace, target kind, target name) -> the VerticalPodAutoscaler of that workload
    autoscalers: Mapping[tuple[str, str, str], Autoscaler] = field(default_factory=dict)
    source: str = "embedded defaults (no cluster)"
    built_at: float = 0.0
    # (identity label, value) -> nodes, for terms that name single hosts.
    identity_index: Mapping[tuple[str, str], tuple[Node, ...]] = field(default_factory=dict)
    # Node name -> index of its group in ``groups``.
    group_of: Mapping[str, int] = field(default_factory=dict)
    # Derived results of this immutable value, never part of equality: eligibility per
    # scheduling constraints (small entries), and whole outcomes of recent pods (large
    # entries, so few: a rollout's identical pods arrive together).
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)
    outcomes: Memo = field(default_factory=outcome_memo, compare=False, repr=False)
    templates: Memo = field(default_factory=outcome_memo, compare=False, repr=False)

    def derive(self, **changes: Any) -> ClusterSnapshot:
        """A copy with ``changes``; its memos start empty (what they hold was derived from
        this snapshot's state, not the copy's)."""
        return replace(self, **changes, memo=Memo(), outcomes=outcome_memo(), templates=outcome_memo())


class ClusterView(Protocol):
    """Anything that can hand the admission path the current snapshot without I/O."""

    def snapshot(self) -> ClusterSnapshot: ...


@dataclass(frozen=True)
class StaticClusterView:
    value: ClusterSnapshot

    def snapshot(self) -> ClusterSnapshot:
        return self.value


# --- building -------------------------------------------------------------------------


def _identity_labels(nodes: Iterable[Node]) -> frozenset[str]:
    nodes = list(nodes)
    values: dict[str, set[str]] = defaultdict(set)
    for node in nodes:
        for key, value in node.labels.items():
            values[key].add(value)
    threshold = max(16, len(nodes) // 4)
    spread = {key for key, vals in values.items() if len(vals) > threshold}
    return WELL_KNOWN_IDENTITY_LABELS | spread


def group_nodes(
    nodes: Iterable[Node], redirectors: Mapping[str, tuple[RedirectorState, str]] | None = None
) -> tuple[tuple[NodeGroup, ...], frozenset[str]]:
    nodes = list(nodes)
    identity = _identity_labels(nodes)
    on_node = redirectors or {}
    buckets: dict[tuple[Any, ...], list[Node]] = defaultdict(list)
    for node in nodes:
        common = tuple(sorted((k, v) for k, v in node.labels.items() if k not in identity))
        found = on_node.get(node.name)
        state = found[0] if found is not None else None
        key = (common, node.taints, node.unschedulable, node.kernel, node.kubelet, node.os_image, state)
        buckets[key].append(node)
    groups = tuple(
        NodeGroup(
            labels=dict(common),
            taints=taints,
            unschedulable=unsched,
            kernel=kernel,
            kubelet=kubelet,
            nodes=tuple(members),
            redirector=state,
            os_image=os_image,
        )
        for (common, taints, unsched, kernel, kubelet, os_image, state), members in buckets.items()
    )
    return groups, identity


def _indexes(
    groups: tuple[NodeGroup, ...], identity: frozenset[str]
) -> tuple[dict[tuple[str, str], tuple[Node, ...]], dict[str, int]]:
    index: dict[tuple[str, str], list[Node]] = defaultdict(list)
    group_of: dict[str, int] = {}
    for gi, group in enumerate(groups):
        for node in group.nodes:
            group_of[node.name] = gi
            for key in identity:
                value = node.labels.get(key)
                if value is not None:
                    index[(key, value)].append(node)
    return {k: tuple(v) for k, v in index.items()}, group_of


def build_snapshot(
    *,
    nodes: Iterable[Node] = (),
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
    services: Iterable[Service] = (),
    server_version: KubeVersion | None = None,
    usage: Mapping[WorkloadKey, UsageSummary] | None = None,
    namespace_annotations: Mapping[str, Mapping[str, str]] | None = None,
    config_maps: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    redirectors: Mapping[str, tuple[RedirectorState, str]] | None = None,
    redirector_starts: Mapping[str, datetime] | None = None,
    runtime_classes: Iterable[RuntimeClass] = (),
    autoscalers: Iterable[Autoscaler] = (),
    source: str = "cluster",
    built_at: float | None = None,
) -> ClusterSnapshot:
    node_list = list(nodes)
    groups, identity = group_nodes(node_list, redirectors)
    index, group_of = _indexes(groups, identity)
    by_ns: dict[str, list[Service]] = defaultdict(list)
    for svc in services:
        by_ns[svc.namespace].append(svc)
    return ClusterSnapshot(
        nodes={n.name: n for n in node_list},
        groups=groups,
        identity_labels=identity,
        identity_index=index,
        group_of=group_of,
        namespaces=dict(namespaces or {}),
        services={ns: tuple(items) for ns, items in by_ns.items()},
        server_version=server_version,
        usage=dict(usage or {}),
        namespace_annotations={ns: a for ns, a in (namespace_annotations or {}).items() if a},
        config_maps=dict(config_maps or {}),
        redirectors=dict(redirectors or {}),
        redirector_starts=dict(redirector_starts or {}),
        runtime_classes={rc.name: rc for rc in runtime_classes},
        autoscalers=autoscalers_by_target(autoscalers),
        source=source,
        built_at=time.time() if built_at is None else built_at,
    )


def with_kernel(snapshot: ClusterSnapshot, kernel: str) -> ClusterSnapshot:
    """Every node reports ``kernel`` (``--kernel``); with no nodes, one assumed node does."""
    nodes = [replace(n, kernel=kernel) for n in snapshot.nodes.values()]
    if not nodes:
        kubelet = f"v{snapshot.server_version}.0" if snapshot.server_version else None
        nodes = [Node(name="assumed-node", labels={}, kernel=kernel, kubelet=kubelet)]
    groups, identity = group_nodes(nodes, snapshot.redirectors)
    index, group_of = _indexes(groups, identity)
    return snapshot.derive(
        nodes={n.name: n for n in nodes},
        groups=groups,
        identity_labels=identity,
        identity_index=index,
        group_of=group_of,
    )


# --- from Kubernetes objects ----------------------------------------------------------


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def node_from_object(obj: Mapping[str, Any]) -> Node:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    taints = tuple(
        Taint(key=str(t.get("key", "")), value=str(t.get("value") or ""), effect=str(t.get("effect", "")))
        for t in spec.get("taints") or []
        if isinstance(t, dict)
    )
    kernel, kubelet, image = info.get("kernelVersion"), info.get("kubeletVersion"), info.get("osImage")
    return Node(
        name=str(meta.get("name", "")),
        labels=_str_map(meta.get("labels")),
        taints=taints,
        unschedulable=spec.get("unschedulable") is True,
        kernel=kernel if isinstance(kernel, str) and kernel else None,
        kubelet=kubelet if isinstance(kubelet, str) and kubelet else None,
        os_image=image if isinstance(image, str) and image else None,
    )


def service_from_object(obj: Mapping[str, Any]) -> Service:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ports = tuple(
        ServicePort(name=str(p.get("name") or ""), app_protocol=str(p.get("appProtocol") or ""))
        for p in spec.get("ports") or []
        if isinstance(p, dict)
    )
    return Service(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name", "")),
        selector=_str_map(spec.get("selector")),
        ports=ports,
    )


@dataclass(frozen=True, slots=True)
class PodSelector:
    """Which pods are the redirector's: a namespace and an equality-based label selector."""

    namespace: str
    labels: Mapping[str, str]

    @property
    def text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels.items())

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        return (
            str(meta.get("namespace") or "default") == self.namespace
            and isinstance(labels, dict)
            and all(labels.get(k) == v for k, v in self.labels.items())
        )


def redirector_selector(policy: Policy) -> PodSelector:
    """The redirector's pods as the policy names them."""
    return PodSelector(policy.redirector_namespace, policy.interception.ebpf.redirector.labels())


def _flags(argv: list[str]) -> tuple[str, bool]:
    """Merbridge's ``--mode`` (``-m``; ``istio`` by default, as its own flag) and ``--cni-mode``
    (a Go bool flag: bare or ``=true``) from its command line."""
    mode, cni = "istio", False
    for i, arg in enumerate(argv):
        if arg in ("-m", "--mode") and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith(("--mode=", "-m=")):
            mode = arg.split("=", 1)[1]
        elif arg.startswith("-m") and not arg.startswith("--") and len(arg) > 2:
            mode = arg[2:]
        elif arg == "--cni-mode":
            cni = True
        elif arg.startswith("--cni-mode="):
            cni = arg.split("=", 1)[1].strip().lower() in ("1", "t", "true")
    return mode.strip().lower(), cni


def redirector_from_object(obj: Mapping[str, Any]) -> Agent | None:
    """A redirector pod as an ``Agent``; None for one not bound to a node yet."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    node = spec.get("nodeName")
    if not isinstance(node, str) or not node:
        return None
    argv: list[str] = []
    for c in spec.get("containers") or []:
        if isinstance(c, dict):
            argv += [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    mode, cni = _flags(argv)
    conditions = status.get("conditions") or []
    ready = (
        status.get("phase") == "Running"
        and not meta.get("deletionTimestamp")
        and any(
            isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
    )
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
    return Agent(node, RedirectorState(ready=ready, mode=mode, cni_mode=cni), name, _last_start(status))


def _last_start(status: Mapping[str, Any]) -> datetime | None:
    """When the latest of the pod's running containers started (``state.running.startedAt``):
    a restart of the container, or a new pod, moves it."""
    found = []
    for c in status.get("containerStatuses") or []:
        running = ((c.get("state") or {}).get("running") or {}) if isinstance(c, dict) else {}
        when = parse_time(running.get("startedAt")) if isinstance(running, dict) else None
        if when is not None:
            found.append(when)
    return max(found, default=None)


def parse_time(value: object) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, ``2026-11-27T12:00:00Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _by_node(found: Iterable[Agent]) -> dict[str, Agent]:
    """One redirector per node: a Ready one where there is one (a rolling update runs two)."""
    out: dict[str, Agent] = {}
    for agent in sorted(found, key=lambda a: (a.node, a.name)):
        held = out.get(agent.node)
        if held is None or (agent.state.ready and not held.state.ready):
            out[agent.node] = agent
    return out


def redirectors_by_node(found: Iterable[Agent]) -> dict[str, tuple[RedirectorState, str]]:
    """The redirector of each node (see ``_by_node``): its state and its pod's name."""
    return {node: (a.state, a.name) for node, a in _by_node(found).items()}


def redirector_starts(found: Iterable[Agent]) -> dict[str, datetime]:
    """When the redirector of each node (see ``_by_node``) last started, where known."""
    return {node: a.started for node, a in _by_node(found).items() if a.started is not None}


def runtime_class_from_object(obj: Mapping[str, Any]) -> RuntimeClass | None:
    meta = obj.get("metadata") or {}
    name, handler = meta.get("name"), obj.get("handler")
    if not isinstance(name, str) or not name or not isinstance(handler, str):
        return None
    scheduling = obj.get("scheduling") or {}
    overhead = (obj.get("overhead") or {}).get("podFixed")
    tolerations = scheduling.get("tolerations") if isinstance(scheduling, dict) else None
    return RuntimeClass(
        name=name,
        handler=handler,
        node_selector=_str_map(scheduling.get("nodeSelector")) if isinstance(scheduling, dict) else {},
        tolerations=tuple(t for t in tolerations or [] if isinstance(t, dict)),
        overhead=_str_map(overhead) if isinstance(overhead, dict) else None,
    )


def autoscaler_from_object(obj: Mapping[str, Any]) -> Autoscaler | None:
    """A VerticalPodAutoscaler; None for one without a target."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    target = spec.get("targetRef") if isinstance(spec, dict) else None
    if not isinstance(target, dict) or not target.get("kind") or not target.get("name"):
        return None
    update = (
        (spec.get("updatePolicy") or {}).get("updateMode")
        if isinstance(spec.get("updatePolicy"), dict)
        else None
    )
    policies = (
        (spec.get("resourcePolicy") or {}) if isinstance(spec.get("resourcePolicy"), dict) else {}
    ).get("containerPolicies")
    return Autoscaler(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name", "")),
        target_kind=str(target["kind"]),
        target_name=str(target["name"]),
        update_mode=str(update or "Recreate"),
        policies=tuple(
            (str(p.get("containerName") or ""), str(p.get("mode") or "Auto"))
            for p in policies or []
            if isinstance(p, dict)
        ),
    )


def autoscalers_by_target(found: Iterable[Autoscaler]) -> dict[tuple[str, str, str], Autoscaler]:
    """One VerticalPodAutoscaler per target (the first by name where several name one)."""
    out: dict[tuple[str, str, str], Autoscaler] = {}
    for vpa in sorted(found, key=lambda v: (v.namespace, v.name)):
        out.setdefault((vpa.namespace, vpa.target_kind, vpa.target_name), vpa)
    return out


def flatten_items(docs: Iterable[object]) -> list[dict[str, Any]]:
    """Objects from documents that may be single objects or ``kind: List``-style lists."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise SnapshotError(f"expected Kubernetes objects, found a {type(doc).__name__}")
        if isinstance(doc.get("items"), list) and ("kind" not in doc or str(doc["kind"]).endswith("List")):
            out.extend(flatten_items(doc["items"]))
        else:
            out.append(doc)
    return out


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def namespace_from_object(obj: Mapping[str, Any]) -> tuple[str, tuple[dict[str, str], dict[str, str]]]:
    """(name, (labels, annotations)) of a Namespace; kubectl's last-applied copy of the object
    is not kept."""
    meta = obj.get("metadata") or {}
    annotations = _str_map(meta.get("annotations"))
    annotations.pop(LAST_APPLIED, None)
    return str(meta.get("name", "")), (_str_map(meta.get("labels")), annotations)


def config_map_from_object(obj: Mapping[str, Any]) -> tuple[tuple[str, str], dict[str, str]] | None:
    """((namespace, name), data) of a ConfigMap."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str):
        return None
    data = obj.get("data")
    return (str(meta.get("namespace") or "default"), name), _str_map(data) if isinstance(
        data, Mapping
    ) else {}


def snapshot_from_objects(
    docs: Iterable[object],
    *,
    server_version: KubeVersion | None = None,
    usage: Mapping[WorkloadKey, UsageSummary] | None = None,
    redirector: PodSelector | None = None,
    source: str = "cluster file",
    built_at: float | None = None,
) -> ClusterSnapshot:
    """A snapshot from Kubernetes objects: Nodes, Namespaces, Services, ConfigMaps,
    RuntimeClasses, VerticalPodAutoscalers, and the redirector's Pods (those ``redirector``
    selects)."""
    nodes: list[Node] = []
    namespaces: dict[str, dict[str, str]] = {}
    ns_annotations: dict[str, dict[str, str]] = {}
    services: list[Service] = []
    config_maps: dict[tuple[str, str], dict[str, str]] = {}
    agents: list[Agent] = []
    classes: list[RuntimeClass] = []
    vpas: list[Autoscaler] = []
    for obj in flatten_items(docs):
        kind = obj.get("kind")
        if kind == "VerticalPodAutoscaler":
            vpa = autoscaler_from_object(obj)
            if vpa is not None:
                vpas.append(vpa)
            continue
        if kind == "Pod":
            if redirector is not None and redirector.matches(obj):
                agent = redirector_from_object(obj)
                if agent is not None:
                    agents.append(agent)
            continue
        if kind == "RuntimeClass":
            rc = runtime_class_from_object(obj)
            if rc is not None:
                classes.append(rc)
            continue
        if kind == "ConfigMap":
            found = config_map_from_object(obj)
            if found is not None:
                config_maps[found[0]] = found[1]
            continue
        if kind == "Node":
            nodes.append(node_from_object(obj))
        elif kind == "Namespace":
            name, (labels, annotations) = namespace_from_object(obj)
            namespaces[name], ns_annotations[name] = labels, annotations
        elif kind == "Service":
            services.append(service_from_object(obj))
    return build_snapshot(
        nodes=nodes,
        namespaces=namespaces,
        services=services,
        server_version=server_version,
        usage=usage,
        namespace_annotations=ns_annotations,
        config_maps=config_maps,
        redirectors=redirectors_by_node(agents),
        redirector_starts=redirector_starts(agents),
        runtime_classes=classes,
        autoscalers=vpas,
        source=source,
        built_at=built_at,
    )
