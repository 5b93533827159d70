"""What the decision hands a data-plane flavour, and what a flavour hands back.

A flavour only renders: the decision (mode, placement, resources, skip ports) is made once,
the same for every flavour, and a flavour turns it into the containers, volumes, labels and
annotations its mesh expects. ``webhook.patch.inject`` places them in the pod and records them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_network
from typing import Any, Literal, TypeVar

from webhook.core import ProxyResources
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.policy import FlavourPolicy, Policy
from webhook.reasons import Mode, Skip
from webhook.workload import WorkloadKey

Ports = tuple[tuple[int, int], ...]
# (namespace, name) -> data: the ConfigMaps in the cluster snapshot
ConfigMaps = Mapping[tuple[str, str], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class NativeDefault:
    """Where the control plane's own injector would make its proxy a native sidecar, as data
    (the placement is ours; where they differ the decision says so): always (``on`` True),
    never (False), or where every node's kubelet is at least ``min_kubelet`` (``on`` None;
    the pod's own node's, where it names one). ``annotation``: the pod annotation that
    overrides it ("true"/"false"); ``why``: how the control plane is set."""

    on: bool | None
    min_kubelet: str = ""
    annotation: str | None = None
    why: str = ""
    # (annotation, value, why) where its injector always keeps the proxy a regular container
    regular: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectRules:
    """What the control plane's own redirect rules leave alone on a pod that says nothing of
    its own, read once from its configuration: so that a mechanism that is not the mesh's
    (Merbridge) can be told the same and every mode agrees on what reaches the proxy.

    ``proxy_inbound``: the proxy's own ports, left alone whatever the pod says. The lists
    below are the control plane's settings; the pod annotation ``pod_keys`` names for a list
    replaces it on a pod that carries one, as the mesh's injector reads it. ``sources``:
    inbound connections from these ranges are left alone (a rule on the source, not the
    destination). ``only_*``: where the rules redirect only some ports or destinations (None:
    every one). ``problems``: settings that could not be read as ports or ranges."""

    proxy_inbound: Ports = ()
    inbound: Ports = ()
    outbound: Ports = ()
    destinations: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    only_inbound: Ports | None = None
    only_outbound: Ports | None = None
    only_destinations: tuple[str, ...] | None = None
    # "inbound", "outbound", "destinations", "sources", "only_inbound", ... -> pod annotation
    pod_keys: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def for_pod(self, annotations: Mapping[str, Any]) -> RedirectRules:
        """The rules as they hold for a pod: each list the pod's own annotation replaces is
        that annotation's value (one that does not parse leaves the control plane's, as the
        mesh's injector falls back to it; the exclusions step named it), and each ``only_*``
        list it replaces is dropped (the pod's own list holds, read from the pod itself)."""
        own = {name: annotations[key] for name, key in self.pod_keys.items() if key in annotations}
        if not own:
            return self
        changes: dict[str, Any] = {}
        for name, raw in own.items():
            text = str(raw)
            if name.startswith("only_"):
                changes[name] = None
            elif name in ("inbound", "outbound"):
                try:
                    changes[name] = parse_ports(text.replace(":", "-"))
                except PortListError:
                    pass
            else:
                try:
                    nets = [str(ip_network(p.strip(), strict=False)) for p in text.split(",") if p.strip()]
                except ValueError:
                    continue
                changes[name] = tuple(nets)
        return replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPlane:
    """What a flavour read of its control plane's configuration in the cluster (or took from
    the policy), for one decision: handed to its renderer as ``Build.control``."""

    config: Any = None
    # the decision's "data plane:" line: the proxy, and where its configuration came from
    line: str
    # the mesh version the pod is rendered as (e.g. "2.20", "1.28"), and whether it was read
    # from the control plane's own objects (False: the policy's default version)
    version: str = ""
    found: bool = False
    # the firewall backend the control plane's setting asks the init container to use, and
    # every backend this version's init container can be told to use
    firewall: Literal["legacy", "nft"] = "legacy"
    firewalls: tuple[Literal["legacy", "nft"], ...] = ("legacy",)
    # where its own injector would place the proxy as a native sidecar (None: not known)
    native: NativeDefault | None = None
    # what its own redirect rules leave alone (what Merbridge is told, under ebpf)
    rules: RedirectRules = field(default_factory=RedirectRules)
    # why no pod can be meshed without it (Linkerd without trust anchors)
    missing: tuple[Skip, str] | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    """What the decision hands a flavour to render, the same whichever flavour it is (the
    part Istio's ``InjectionParameters`` and Linkerd's ``ResourceConfig`` play): the mode
    and what it needs of the pod (an init container, the RuntimeClass, the ports and
    destinations its redirect leaves alone), the placement, the proxy's resources and the
    protocol it serves, the workload it belongs to, and what the flavour read of its control
    plane. ``webhook.patch.inject.Plan`` adds what the mode writes beside the flavour."""

    mode: Mode
    native: bool
    protocol: str
    resources: ProxyResources
    # the init container the mode needs: the one that installs the redirect rules, the mesh's
    # network validator (something else redirects: a CNI plugin, Merbridge), or none
    init: Literal["rules", "validator"] | None
    # the RuntimeClass the pod runs in (microvm: ours, or the sandbox it already names)
    runtime_class: str | None = None
    skip_inbound: Ports = ()
    skip_outbound: Ports = ()
    skip_cidrs: tuple[str, ...] = ()  # outbound destinations left alone
    skip_sources: tuple[str, ...] = ()  # inbound connections from these ranges left alone
    workload: WorkloadKey
    batch: bool = False
    control: Any = None  # ControlPlane.config: what the flavour read of its control plane
    # the backend the init container installs the redirect rules with (iptables legacy or
    # nft): the control plane's setting, unless an eligible node is known to lack it
    firewall: Literal["legacy", "nft"] = "legacy"

    @property
    def init_rules(self) -> bool:
        return self.init == "rules"

    @property
    def validator(self) -> bool:
        return self.init == "validator"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPlane:
    """Rendered by a flavour. ``inits`` run before the proxy (native placement) or after the
    pod's own init containers (legacy placement)."""

    inits: tuple[dict[str, Any], ...]
    proxy: dict[str, Any]
    volumes: tuple[dict[str, Any], ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # set only where the pod has no value of its own (e.g. kubectl's default container)
    default_annotations: Mapping[str, str] = field(default_factory=dict)
    # the pod's own annotations taken off while it is meshed (put back when it is stripped)
    removed_annotations: tuple[str, ...] = ()
    default_labels: Mapping[str, str] = field(default_factory=dict)
    # the pod's own containers' probes the mesh takes over: container -> field -> new probe
    probes: Mapping[str, Mapping[str, dict[str, Any]]] = field(default_factory=dict)
    # items added to the pod's own containers' lists (container -> "env" or "volumeMounts"
    # -> items), each only where the container has none of that name (Istio's proxyless
    # gRPC: the bootstrap's path and the volume the agent writes it to)
    appended: Mapping[str, Mapping[str, tuple[dict[str, Any], ...]]] = field(default_factory=dict)
    # the labels and annotations whose values are the workload's name
    named: frozenset[str] = frozenset()
    # for the decision's explanation, and what the pod asked of the mesh that is not done
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


class Refused(Exception):
    """A flavour cannot render this pod as asked (an injection template it does not render):
    the pod is not meshed, for this reason."""

    def __init__(self, skip: Skip, text: str) -> None:
        super().__init__(text)
        self.skip = skip
        self.text = text


# internal/cni-server/cni-plugin.go: the listener Merbridge's CNI plugin opens in every pod it
# handles (bpf/headers/mesh.h: SOCK_IP_MARK_PORT); a pod's own use of it is read by the ebpf mode
REDIRECTOR_PORT = 39807


@dataclass(frozen=True, slots=True)
class Redirect:
    """How Merbridge knows this flavour's proxy: its ``--mode``, and the uid and ports that
    mode compiles in (``bpf/headers/mesh.h``), which the rendered proxy must match.

    ``repaired``: whether Merbridge redirects this proxy's pods again after it restarts. In
    CNI mode a pod is redirected because Merbridge's CNI plugin opened a listener in its
    network namespace when the pod was created; a restarted Merbridge has lost those, and
    its repair pass (``checkAndRepairPodPrograms``, 0.8.1) opens them again only for pods
    whose process is ``pilot-agent`` listening on 15001 (Istio's agent)."""

    mode: str
    uid: int
    outbound: int
    inbound: int
    repaired: bool = False


def _always_redirected(pod: Mapping[str, Any], control: ControlPlane) -> str | None:
    return None


def _no_config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Flavour:
    name: str
    proxy_name: str
    init_name: str | None  # the container that installs iptables rules
    ports: tuple[int, ...]  # ports the proxy listens on: a pod using one cannot be meshed
    admin: str  # how an app stops the proxy (said in the legacy batch warning)
    # pod labels whose values the rendering reads (besides the workload's name)
    labels_read: tuple[str, ...]
    # the flavour's own proxy resource annotations -> ours (the same suffixes as ours)
    resource_annotations: Mapping[str, str]
    # True when the rendering reads the workload's kind and name (then pods of different
    # workloads never share a rendering)
    reads_workload: bool
    render: Callable[[Build, Mapping[str, Any], Policy], DataPlane]
    # what the proxy is and what it needs, for ``policy check`` (given whether a CNI plugin
    # installs the iptables rules)
    describe: Callable[[Policy, bool], list[str]]
    # its section of the policy file (``proxy.<name>``) and the checks of it
    policy: FlavourPolicy = field(default_factory=FlavourPolicy)
    # what it reads of its control plane: the ConfigMaps, as (namespace, name), that serve
    # watches and the dry-run verbs read; and what it makes of them for a decision
    config_maps: Callable[[Policy], tuple[tuple[str, str], ...]] = _no_config_maps
    control_plane: Callable[[ConfigMaps, Policy], ControlPlane]
    # where the mesh runs several control planes a pod chooses by a label of its own or of
    # its namespace (Istio's revisions): the one the pod joins, given the pod's and the
    # namespace's labels (its ``missing`` says why none can be); None: ``control_plane``
    control_for: Callable[[ConfigMaps, Policy, Mapping[str, str], Mapping[str, str]], ControlPlane] | None = (
        None
    )
    # what a dry run must be given where ``control_plane`` finds its configuration missing
    dry_run_needs: str = ""
    # name prefixes of the namespace annotations its pods inherit (written on the pod, as
    # the mesh's own injector does, where the pod has none of its own)
    inherits: tuple[str, ...] = ()
    # Merbridge's mode for this proxy; None: Merbridge does not recognise it (no ebpf)
    redirect: Redirect | None = None
    # why a pod's traffic needs no redirect at all (its app talks to the proxy itself, as a
    # proxyless gRPC app does), given the control plane it joins; None for a pod whose traffic
    # the proxy must receive. Asked before the mode is chosen: such a pod gets mode "none".
    no_redirect: Callable[[Mapping[str, Any], ControlPlane], str | None] = _always_redirected
    # the mesh's own rules can leave inbound connections from given sources alone (the pod's
    # skip-subnets); where they cannot, no mode does it and the flavour says so
    skips_sources: bool = False
    # the mesh's network validator works under Merbridge (it is not redirected otherwise)
    validator_under_redirector: bool = False
    # the init container's rules use only iptables features gVisor's netstack accepts;
    # otherwise which it does not
    rules_in_gvisor: bool = False
    gvisor_gap: str = ""
    # the flavour writes sidecar.istio.io/status itself (Merbridge's CNI plugin needs it)
    writes_sidecar_status: bool = False
    # the pod annotations the mesh's CNI plugin reads where it installs the rules (then no mode
    # may write them for another reader)
    cni_reads: tuple[str, ...] = ()
    # what it may add, so that re-injection takes off only what is provably ours: the names
    # of its containers, every volume it renders, the labels and annotations it writes (and
    # name prefixes of those named after the workload's kind)
    containers: tuple[str, ...] = ()
    volumes: tuple[Mapping[str, Any], ...] = ()
    marks: tuple[str, ...] = ()
    mark_prefixes: tuple[str, ...] = ()
    # environment variables of its containers whose values name the workload
    named_env: tuple[str, ...] = ()
    # what it may add to the pod's own containers' lists: (list, item name) pairs
    appends: tuple[tuple[str, str], ...] = ()
    # volumes of names the pod itself asks the flavour to add (Istio's userVolume)
    requested_volumes: Callable[[Mapping[str, Any]], frozenset[str]] = lambda pod: frozenset()
    # the rendering reads nothing of the app's images, its variables' values or the pod's
    # annotations outside the meshes' and Kubernetes' domains, and makes of its ports' numbers
    # only ``ports_text``: pods that differ only there share one decision (``decide.memo``)
    shapes: bool = False
    # the text the rendering makes of the pod's ports, given the control plane's
    # configuration, and the proxy's variable that holds it; None: no rendered value holds them
    ports_text: Callable[[Mapping[str, Any], Any], str] | None = None
    ports_env: str = ""


T = TypeVar("T")


class Kept:
    """What a flavour derives from an object that does not change while it is in use (a
    control plane's configuration, a policy), kept by that object's identity: every pod of a
    snapshot is rendered with the same one, so its fixed parts (the proxy's variables,
    probes, volumes) are made once instead of once per pod. The object is held with its
    values, so its identity stays its own; at most ``limit`` objects, ``per`` values each
    (the oldest object goes first; an object's values are dropped together when full).

    What is kept is shared by every pod rendered with the object: it must never be changed
    (the patch and the pod are only ever read, serialised or copied)."""

    def __init__(self, limit: int = 8, per: int = 256) -> None:
        self.limit = limit
        self.per = per
        self._by_owner: OrderedDict[int, tuple[object, dict[Hashable, Any]]] = OrderedDict()

    def get(self, owner: object, key: Hashable, make: Callable[[], T]) -> T:
        slot = self._by_owner.get(id(owner))
        if slot is None or slot[0] is not owner:
            slot = (owner, {})
            self._by_owner[id(owner)] = slot
            while len(self._by_owner) > self.limit:
                try:
                    self._by_owner.popitem(last=False)
                except KeyError:  # emptied meanwhile by another thread
                    break
        values = slot[1]
        try:
            return values[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        value = make()
        if len(values) >= self.per:
            values.clear()
        values[key] = value
        return value


LABEL_VALUE_MAX = 63


def label_value(text: str) -> str:
    """``text`` as a label value the API server accepts: at most 63 characters, ending with
    an alphanumeric one (a workload name may be a 253-character DNS subdomain; neither
    mesh's injector shortens it, and the API server then refuses the pod)."""
    if len(text) <= LABEL_VALUE_MAX:
        return text
    return text[:LABEL_VALUE_MAX].rstrip("-_.")


def port_list(ports: Ports) -> str:
    """``((25, 25), (8000, 8100))`` -> ``"25,8000-8100"``."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)


def join(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def container_ports(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod's app containers' ports, in order."""
    out = []
    for c in _list((pod.get("spec") or {}).get("containers")):
        for p in _list(c.get("ports") if isinstance(c, dict) else None):
            if isinstance(p, dict) and type(p.get("containerPort")) is int:
                out.append(p)
    return out


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def image_tag(image: str) -> str:
    """``cr.l5d.io/linkerd/proxy:edge-24.8.2`` -> ``edge-24.8.2``; a digest or no tag -> ``""``."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return ""
    return last.rsplit(":", 1)[1]
