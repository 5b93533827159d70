"""``ebpf``: Merbridge's eBPF programs on the node redirect the pod's traffic to its proxy.

Merbridge (github.com/merbridge/merbridge, Apache-2.0) attaches cgroup socket programs
(connect4, sockops, getsockopt, sk_msg) on every node, and in CNI mode a tc program on each
pod's interface. What it needs, read from its source (commit 561fc00, release 0.8.1):

- **On the node**: its DaemonSet pod, Ready, started with ``--mode`` of the mesh whose proxy
  the pod runs (``linkerd``: uid 2102, outbound 4140, inbound 4143; ``istio``: uid 1337,
  15001, 15006), on a kernel that runs its programs. With ``--cni-mode`` its CNI plugin marks
  each meshed pod's network namespace, so connect() knows the pod's IP (and applies the pod's
  exclusions) and inbound connections from other nodes are redirected by tc; without it,
  neither happens (``interception.ebpf.redirector.requireCniMode``).
- **In the pod**: its controller (``internal/pods``) counts a pod as meshed only when a
  container named after the mesh's proxy is among ``spec.containers`` beside another one: a
  native sidecar (the proxy among ``initContainers``) is never redirected, so ebpf pods get
  the legacy placement. Its CNI plugin (``pkg/cniplugin``) handles a pod only when it carries
  ``sidecar.istio.io/status``, in every mode but Kuma's and OSM's; Linkerd's injector never
  writes it, so we do, and a pod with ``sidecar.istio.io/inject: "false"`` is ignored.
- **Exclusions**: only from ``traffic.sidecar.istio.io/exclude{Inbound,Outbound}Ports`` and
  ``excludeOutboundIPRanges`` (``controller/pod.go``), in every mesh mode: single ports
  (ranges are dropped), IPv4 ranges only, at most 20 entries each (the same for the pod's own
  ``include*`` lists, which it reads too: a longer one rules ebpf out), and 7 inbound entries are
  Merbridge's own (Istio's ports). It is told what the mesh's own rules would leave alone
  (``ControlPlane.rules``: the installed control plane's settings, each replaced by the pod's
  own annotation as the mesh's injector reads it), and the pod's exclusions, so ebpf and
  iptables send the same traffic to the proxy; what it cannot be told (a rule on inbound
  sources, a setting that is no list of ports or ranges) rules ebpf out. Linkerd's control and
  admin ports (4190, 4191) are not among its own, or a meshed Prometheus's scrape of 4191 and
  ``linkerd viz tap`` on 4190 would be sent to the inbound proxy.
- **Pods of other modes**: Merbridge does not look at the mode we chose. Its controller counts
  any pod with the mesh's proxy as a regular container beside another, and its CNI plugin
  takes any pod marked ``sidecar.istio.io/status`` beside two regular containers; both are
  kept off a pod that is not ebpf's (``hands_off``).

- **Pods it breaks**: in CNI mode its plugin opens a listener on 0.0.0.0:39807 in the pod's
  network namespace when the pod is created (``internal/cni-server/cni-plugin.go``), and from
  then on every connect() of another uid than the proxy's goes to the proxy's port
  (``bpf/headers/cgroup.h``, ``mb_connect.c``). A container of the pod that listens on 39807
  fails ("address in use"); the pod's own init containers run before the proxy, which is a
  regular container under ebpf, so their connections are refused and the pod never starts
  (a native sidecar would start first, but Merbridge does not redirect one). Neither gets
  ebpf, unless the policy allows init containers (``allowInitContainers``); an init
  container running as the proxy's uid, or one of the pod's own native sidecars, is fine.
- **After a restart** it has lost those listeners, and opens them again only for Istio's
  agent (``Redirect.repaired``): pods of other proxies that started before it are no longer
  redirected (``lost_on_restart``; ``audit`` says so).

The fail-safe: Linkerd's ``linkerd-network-validator`` listens on 0.0.0.0:4140 and connects
to 1.1.1.1:20001 as uid 65534; Merbridge sends that connect to the listener, so the pod
starts only where the redirect really works. Istio's ``istio-validation`` connects as uid
1337 (the proxy's, which Merbridge never redirects) to 127.0.0.6 (loopback, which it never
redirects either): it would fail on every pod, so Istio pods get none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, RedirectorState
from webhook.dataplane.base import REDIRECTOR_PORT, Flavour, Kept, Ports, RedirectRules
from webhook.dataplane.iptables import merge_ranges
from webhook.decide.podfacts import Exclusions
from webhook.modes.base import Gap, Interception, Setting, ports_text
from webhook.policy import Policy
from webhook.reasons import ModeReason

NEEDS = (
    "Merbridge's DaemonSet pod Ready on every node the pod may land on, in the flavour's mesh mode "
    "(and with --cni-mode unless the policy says otherwise), on kernels at or above ebpf.minKernel; "
    "a pod without init containers of its own and without a port on 39807"
)

EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
EXCLUDE_OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"
EXCLUDE_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
# the only inbound ports and outbound destinations Merbridge redirects, where a list is given
INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
INCLUDE_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
# the mark Merbridge's CNI plugin requires before it redirects a pod
CNI_MARK = "sidecar.istio.io/status"
# a pod annotated with it "false" is ignored by Merbridge's CNI plugin
CNI_SKIP = "sidecar.istio.io/inject"
# what ebpf mode writes on a pod, and what keeps Merbridge's hands off a pod of another mode
# (taken off again on re-injection)
MARKS = (
    EXCLUDE_INBOUND,
    EXCLUDE_OUTBOUND,
    EXCLUDE_RANGES,
    INCLUDE_INBOUND,
    INCLUDE_RANGES,
    CNI_MARK,
    CNI_SKIP,
)
# controller/pod.go: MaxItemLen, and the inbound ports it always excludes
MAX_ITEMS = 20
OWN_INBOUND = (15006, 15001, 15008, 15090, 15021, 15020, 15000)
LEGACY_ONLY = (
    "Merbridge finds the proxy only among the pod's containers, never among its init containers, "
    "so a native sidecar would not be redirected"
)


def _redirector_gap(setting: Setting) -> Gap | None:
    """Why some eligible node lacks a redirector that serves this flavour's proxy: worked out
    once per Eligibility (its nodes' redirectors) and what of the flavour and the policy it
    reads, and kept with it."""
    plane, rules = setting.plane, setting.policy.interception.ebpf.redirector
    assert plane.redirect is not None
    key = ("redirector-gap", plane.name, plane.redirect.mode, setting.redirector_namespace, rules)
    found = setting.elig.derived.get(key, _UNSET)
    if found is _UNSET:
        found = setting.elig.derived[key] = _gap(setting)
    return found  # type: ignore[return-value]


_UNSET = object()


def _gap(setting: Setting) -> Gap | None:
    plane, policy = setting.plane, setting.policy
    rules = policy.interception.ebpf.redirector
    where = f"{setting.redirector_namespace} -l {rules.selector}"
    assert plane.redirect is not None
    want = plane.redirect.mode
    problems: list[tuple[int, str]] = []
    for state, count, node in setting.elig.redirectors:
        others = f" (and {count - 1} more)" if count > 1 else ""
        if state is None:
            problems.append((0, f"node {node}{others} runs no Merbridge pod ({where})"))
            continue
        agent = _agent_name(setting, node)
        if not state.ready:
            problems.append((1, f"Merbridge on node {node}{others} ({agent}) is not Ready"))
        elif state.mode != want:
            problems.append(
                (
                    2,
                    f"Merbridge on node {node}{others} runs --mode {state.mode}; "
                    f"the {plane.name} proxy needs {want}",
                )
            )
        elif rules.require_cni_mode and not state.cni_mode:
            problems.append(
                (
                    3,
                    f"Merbridge on node {node}{others} runs without --cni-mode, so connections from other "
                    "nodes and the pod's exclusions would bypass the proxy",
                )
            )
    if not problems:
        return None
    return Gap(ModeReason.NO_REDIRECTOR, min(problems)[1])


def _agent_name(setting: Setting, node: str) -> str:
    found = setting.snapshot.redirectors.get(node)
    return found[1] if found is not None else "?"


def serves(state: RedirectorState | None, mode: str, require_cni: bool) -> bool:
    """Whether a node's redirector redirects a pod of the mesh ``mode``."""
    return state is not None and state.ready and state.mode == mode and (state.cni_mode or not require_cni)


def _width(ports: Ports) -> int:
    return sum(hi - lo + 1 for lo, hi in ports)


# Merbridge's annotations by what they are made of (the mesh's rules as they hold for the
# pod, every field but the annotation names they were read with; the pod's exclusions;
# whether the flavour's rules can leave sources alone): pods alike in these, most pods of
# a control plane, share one answer, kept per policy.
_KEPT = Kept()
_RULES_READ = tuple(f.name for f in fields(RedirectRules) if f.name != "pod_keys")


def _annotations(setting: Setting) -> tuple[dict[str, str], str | None]:
    """Merbridge's annotations for the pod: what the mesh's own rules would leave alone (the
    control plane's settings, or the pod's own annotation where it replaces one, as the
    mesh's injector reads them; ``ControlPlane.rules``) and the pod's exclusions, so that ebpf
    and iptables send the same traffic to the proxy; or why they cannot say that (a copy of
    the answer kept for pods alike)."""
    done = setting.derived.get("merbridge")  # missing() asks first, then interception()
    if done is None:
        rules = setting.control.rules.for_pod(setting.annotations)
        excl, skips_sources = setting.exclusions, setting.plane.skips_sources
        key = (tuple(getattr(rules, name) for name in _RULES_READ), excl, skips_sources)
        done = setting.derived["merbridge"] = _KEPT.get(
            setting.policy, key, lambda: _made(rules, excl, skips_sources)
        )
    found, why = done
    return dict(found), why


def _made(
    rules: RedirectRules, excl: Exclusions, skips_sources: bool
) -> tuple[Mapping[str, str], str | None]:
    if rules.problems:
        return {}, f"the control plane's {rules.problems[0]}, which Merbridge cannot be told"
    sources = tuple(dict.fromkeys((*rules.sources, *excl.sources)))
    if sources and skips_sources:
        return {}, (
            f"the mesh's rules leave inbound connections from {', '.join(sources)} alone (a rule on the "
            "source), which Merbridge cannot: it leaves inbound traffic alone by port only"
        )
    room_in = MAX_ITEMS - len(OWN_INBOUND)
    asked_in = merge_ranges((*rules.inbound, *excl.inbound))
    every_in = merge_ranges((*rules.proxy_inbound, *asked_in))
    if _width(every_in) > MAX_ITEMS + len(OWN_INBOUND):
        inbound: list[int] = []
        too_many = True
    else:
        inbound = [p for p in _expand(every_in) if p not in OWN_INBOUND]
        too_many = len(inbound) > room_in
    if too_many:
        return {}, (
            f"the pod excludes inbound ports {ports_text(excl.inbound)}; with the mesh's own "
            f"({ports_text(merge_ranges((*rules.proxy_inbound, *rules.inbound)))}) that is more than the "
            f"{room_in} single ports Merbridge holds beside its {len(OWN_INBOUND)}"
        )
    every_out = merge_ranges((*rules.outbound, *excl.outbound))
    if _width(every_out) > MAX_ITEMS:
        mesh = f" and the mesh's rules {ports_text(rules.outbound)}" if rules.outbound else ""
        return {}, (
            f"the pod excludes outbound ports {ports_text(excl.outbound)}{mesh}; Merbridge holds at most "
            f"{MAX_ITEMS} single ports"
        )
    cidrs = tuple(dict.fromkeys((*rules.destinations, *excl.cidrs)))
    v6 = [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == 6]
    if v6:
        return {}, f"the pod excludes IPv6 range {v6[0]}; Merbridge applies exclusions to IPv4 only"
    if len(cidrs) > MAX_ITEMS:
        return {}, f"the pod excludes {len(cidrs)} IP ranges; Merbridge holds at most {MAX_ITEMS}"
    out: dict[str, str] = {}
    if inbound:
        out[EXCLUDE_INBOUND] = ",".join(map(str, inbound))
    if every_out:
        out[EXCLUDE_OUTBOUND] = ",".join(map(str, _expand(every_out)))
    if cidrs:
        out[EXCLUDE_RANGES] = ",".join(cidrs)
    if rules.only_inbound is not None:
        if _width(rules.only_inbound) > MAX_ITEMS:
            return {}, (
                f"the control plane redirects inbound ports {ports_text(rules.only_inbound)} only; Merbridge "
                f"holds at most {MAX_ITEMS} single ports"
            )
        # an empty list redirects nothing inbound: a port Merbridge always leaves alone says so
        out[INCLUDE_INBOUND] = ",".join(map(str, _expand(rules.only_inbound) or [OWN_INBOUND[0]]))
    if rules.only_destinations is not None:
        only = rules.only_destinations
        v6 = [c for c in only if ipaddress.ip_network(c, strict=False).version == 6]
        if v6 or len(only) > MAX_ITEMS:
            return {}, (
                f"the control plane redirects outbound traffic to {', '.join(only)} only; Merbridge holds at "
                f"most {MAX_ITEMS} IPv4 ranges"
            )
        out[INCLUDE_RANGES] = ",".join(only)
    return out, None


def _expand(ports: Ports) -> list[int]:
    return [p for lo, hi in ports for p in range(lo, hi + 1)] if _width(ports) <= 65535 else []


def missing(setting: Setting) -> Gap | None:
    """Why ebpf cannot redirect this pod's traffic, or None when Merbridge is known to."""
    kf, rules = setting.kernels, setting.policy.interception
    if not rules.ebpf.enabled:
        return Gap(ModeReason.EBPF_DISABLED, "the policy turns ebpf off (interception.ebpf.enabled: false)")
    if setting.sandbox is not None:
        return Gap(
            ModeReason.SANDBOXED_POD,
            f"the pod runs in sandbox {setting.sandbox.describe()}, "
            "whose sockets host eBPF programs cannot see",
        )
    if kf.unknown:
        return Gap(ModeReason.KERNEL_UNKNOWN, kf.unknown)
    if not kf.ebpf:
        return Gap(
            ModeReason.KERNEL_TOO_OLD,
            f"lowest eligible kernel {kf.lowest_raw} is below {rules.ebpf.min_kernel}",
        )
    plane = setting.plane
    if plane.redirect is None:
        return Gap(
            ModeReason.REDIRECTOR_UNSUPPORTED,
            f"Merbridge does not recognise the {plane.name} proxy ({plane.proxy_name})",
        )
    gap = _redirector_gap(setting)
    if gap is not None:
        return gap
    if str(setting.annotations.get(CNI_SKIP, "")).strip().lower() == "false":
        return Gap(
            ModeReason.REDIRECTOR_UNSUPPORTED,
            f'Merbridge\'s CNI plugin ignores a pod annotated {CNI_SKIP}: "false"',
        )
    _, why = _annotations(setting)
    if why is None:
        why = _too_many_includes(setting.annotations)
    if why is not None:
        return Gap(ModeReason.REDIRECTOR_UNSUPPORTED, why)
    return _breaks(setting)


def _breaks(setting: Setting) -> Gap | None:
    """What of the pod itself would fail under Merbridge's CNI mode (with it off on every
    eligible node, nothing is opened in the pod and each container's first connect decides
    for it alone): a port on Merbridge's listener, init containers that run before the proxy."""
    if not any(state is not None and state.cni_mode for state, _, _ in setting.elig.redirectors):
        return None
    taken = on_redirector_port(setting.pod)
    if taken is not None:
        return Gap(
            ModeReason.REDIRECTOR_PORT_CONFLICT,
            f"{taken}, which Merbridge's CNI plugin listens on in every pod it redirects; "
            "the container would fail with 'address in use'",
        )
    if setting.policy.interception.ebpf.allow_init_containers:
        return None
    assert setting.plane.redirect is not None
    early = early_inits(setting.pod, setting.plane.redirect.uid)
    if early:
        return Gap(ModeReason.INIT_CONTAINERS_BEFORE_PROXY, _early_text(early))
    return None


def _early_text(names: list[str]) -> str:
    one = len(names) == 1
    return (
        f"init container{'' if one else 's'} {', '.join(names)} run{'s' if one else ''} before the proxy (a "
        "regular container under ebpf), and Merbridge's CNI mode sends every connection of the pod to the "
        f"proxy from the pod's start: {'its' if one else 'their'} connections would be refused"
    )


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def on_redirector_port(pod: Mapping[str, Any]) -> str | None:
    """Where the pod says a container of it listens on Merbridge's port: a ``containerPort``,
    or a probe that connects to it (a probe reaches the container's own port)."""
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers"):
        for c in _items(spec.get(key)):
            if not isinstance(c, dict):
                continue
            name = c.get("name")
            for p in _items(c.get("ports")):
                if isinstance(p, dict) and p.get("containerPort") == REDIRECTOR_PORT:
                    return f"container {name} declares containerPort {REDIRECTOR_PORT}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec_of = c.get(probe)
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    action = spec_of.get(kind) if isinstance(spec_of, dict) else None
                    if isinstance(action, dict) and action.get("port") == REDIRECTOR_PORT:
                        return f"container {name}'s {probe} connects to port {REDIRECTOR_PORT}"
    return None


def early_inits(pod: Mapping[str, Any], proxy_uid: int) -> list[str]:
    """The pod's own init containers whose connections Merbridge would send to a proxy that
    is not running yet: those that run to completion (a native sidecar of the pod's own,
    ``restartPolicy: Always``, keeps running and reaches the network once the proxy is up),
    unless they run as the proxy's uid (which Merbridge never redirects; an unknown uid, the
    image's own, is not the proxy's)."""
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext")
    pod_uid = pod_sc.get("runAsUser") if isinstance(pod_sc, dict) else None
    out = []
    for c in _items(spec.get("initContainers")):
        if not isinstance(c, dict) or c.get("restartPolicy") == "Always":
            continue
        sc = c.get("securityContext")
        uid = sc.get("runAsUser") if isinstance(sc, dict) else None
        if (uid if uid is not None else pod_uid) != proxy_uid:
            out.append(str(c.get("name")))
    return out


def hands_off(setting: Setting, adds: Interception, native: bool) -> tuple[Interception, str | None]:
    """For a pod given another mode than ebpf: the annotations that keep Merbridge from
    redirecting it as well, where Merbridge runs or may run (a pod of it, Ready or not, on a
    node the pod may land on), and what is said of it; with a warning where they cannot be
    written. Merbridge does not look at the mode we chose:

    - its controller counts a pod whose proxy is a regular container beside another one, in
      its own ``--mode`` (``IsIstioInjectedSidecar``); then a meshed proxy on the same node
      that connects to the pod is sent to the pod's inbound port (``mb_connect.c``) and, in CNI
      mode, so is every connection from another node (``mb_tc.c``), whatever ports the pod's
      own rules leave alone, and on a pod whose app is the server itself (proxyless gRPC), to
      a port nothing listens on. An inbound list of one port it always leaves alone
      (``includeInboundPorts``, read in ``parsePodConfigFromAnnotations``) leaves it no port to
      send there;
    - its CNI plugin takes every pod that carries ``sidecar.istio.io/status`` beside two or
      more regular containers (``ignorePodIstio``, every mesh mode but Kuma's and OSM's) and
      sends all of its connections to the proxy's outbound port from the pod's start, but
      loopback's and the proxy's own: its own init containers' are refused (the proxy is not
      up yet), the exclusions its rules hold are ignored, and an app without an outbound
      listener beside it (proxyless gRPC) reaches nothing. ``sidecar.istio.io/inject: "false"``
      makes the plugin leave the pod alone; Istio's injector reads it only on a pod it has not
      injected (ours carries its status annotation), and Istio's CNI plugin only where it
      installs the rules, when neither is written (``Flavour.cni_reads``).
    """
    plane = setting.plane
    agents = [(state, node) for state, _, node in setting.elig.redirectors if state is not None]
    if not agents or plane.redirect is None:
        return adds, None
    containers = [c for c in _items((setting.pod.get("spec") or {}).get("containers")) if isinstance(c, dict)]
    regular = len(containers) + (0 if native else 1)
    counted = [node for state, node in agents if not native and state.mode == plane.redirect.mode]
    marked = [node for state, node in agents if state.cni_mode] if plane.writes_sidecar_status else []
    if regular < 2 or str(setting.annotations.get(CNI_SKIP, "")).strip().lower() == "false":
        marked = []
    held = plane.cni_reads if adds.init == "validator" else ()
    written: dict[str, str] = {}
    said: list[str] = []
    if counted and INCLUDE_INBOUND not in held:
        written[INCLUDE_INBOUND] = str(OWN_INBOUND[0])
        said.append(
            f"{INCLUDE_INBOUND}={OWN_INBOUND[0]} (its controller counts the pod: no inbound connection to it "
            "is sent to the proxy by Merbridge)"
        )
    warning = None
    if marked and CNI_SKIP not in held:
        written[CNI_SKIP] = "false"
        said.append(f'{CNI_SKIP}="false" (its CNI plugin would take the pod: it leaves it alone)')
    elif marked and not native and not setting.policy.interception.ebpf.allow_init_containers:
        early = early_inits(setting.pod, plane.redirect.uid)
        if early:
            warning = (
                f"mesh-injector: the pod's init containers ({', '.join(early)}) run before "
                f"{plane.proxy_name}, a regular container here, and Merbridge on node {marked[0]} redirects "
                f"every pod marked {CNI_MARK} whatever its mode, which cannot be kept off while the mesh's "
                "CNI plugin installs the rules: their connections would be refused (run them as uid "
                f"{plane.redirect.uid}, exclude the ports they use, or use native sidecars, Kubernetes 1.29+)"
            )
    if not written:
        return adds, warning
    node = (counted or marked)[0]
    note = (
        f"merbridge: kept off the pod (Merbridge on node {node} does not look at its mode): {'; '.join(said)}"
    )
    return replace(adds, annotations={**adds.annotations, **written}, notes=(*adds.notes, note)), warning


def lost_on_restart(
    plane: Flavour, node: str, pod_started: datetime, snapshot: ClusterSnapshot
) -> tuple[str, str] | None:
    """Why Merbridge no longer redirects an ebpf pod of ``plane`` that started at
    ``pod_started`` on ``node``: Merbridge's container there started since (a restart, or a
    new pod), in CNI mode, and its repair pass does not take this proxy's pods back (see
    ``Redirect.repaired``). (what the pod has, what a new one gets), or None."""
    if plane.redirect is None or plane.redirect.repaired:
        return None
    found, started = snapshot.redirectors.get(node), snapshot.redirector_starts.get(node)
    if found is None or started is None or not found[0].cni_mode or pod_started > started:
        return None
    return (
        f"not redirected since Merbridge on node {node} ({found[1]}) started at {_stamp(started)}, after "
        f"the pod (started {_stamp(pod_started)}): it takes back only Istio's agent after a restart",
        "a new pod, which Merbridge's CNI plugin registers",
    )


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


INCLUDES = (
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
)


def _too_many_includes(annotations: Mapping[str, Any]) -> str | None:
    """Merbridge reads the pod's include lists itself and keeps the first 20 items of each:
    with more, the rest would silently not be redirected."""
    for key in INCLUDES:
        raw = annotations.get(key)
        items = [p for p in str(raw).split(",") if p.strip()] if raw is not None else []
        if len(items) > MAX_ITEMS:
            return (
                f"the pod's {key} lists {len(items)} items; Merbridge keeps the first {MAX_ITEMS} "
                "and would not redirect the rest"
            )
    return None


def supported_text(setting: Setting) -> str:
    kf = setting.kernels
    plane = setting.plane
    assert plane.redirect is not None
    return (
        f"Merbridge (--mode {plane.redirect.mode}) is Ready on all {setting.elig.count} eligible node(s), "
        f"lowest kernel {kf.lowest_raw}"
    )


def blocked(setting: Setting) -> None:
    """Nothing ebpf adds needs a privilege: the validator drops every capability."""
    return None


def interception(setting: Setting) -> Interception:
    annotations, _ = _annotations(setting)
    plane = setting.plane
    if not plane.writes_sidecar_status:
        annotations[CNI_MARK] = orjson.dumps({"containers": [plane.proxy_name]}).decode()
    rules = setting.policy.interception.ebpf.redirector
    validator = rules.network_validator and plane.validator_under_redirector
    notes = [f"merbridge: {', '.join(f'{k}={v}' for k, v in annotations.items() if k != CNI_MARK)}"]
    if validator:
        notes.append("fail-safe: the network validator stops the pod starting where nothing redirects")
    return Interception(
        init="validator" if validator else None,
        annotations=annotations,
        legacy_only=LEGACY_ONLY,
        notes=tuple(n for n in notes if not n.endswith(": ")),
    )


def describe(policy: Policy, plane: Flavour) -> str:
    """What the mode needs and adds, for ``policy check``."""
    rules = policy.interception
    agent = rules.ebpf.redirector
    if plane.redirect is None:
        return f"not available: Merbridge does not recognise the {plane.proxy_name} proxy"
    cni = ", --cni-mode" if agent.require_cni_mode else ""
    validator = (
        "; adds the network validator" if agent.network_validator and plane.validator_under_redirector else ""
    )
    if not rules.ebpf.enabled:
        return "off (interception.ebpf.enabled: false)"
    inits = (
        "the pod's own init containers allowed (interception.ebpf.allowInitContainers: true)"
        if rules.ebpf.allow_init_containers
        else "no init container of the pod's own but native sidecars and those running as uid "
        f"{plane.redirect.uid} (interception.ebpf.allowInitContainers: false)"
    )
    repaired = "re-registers" if plane.redirect.repaired else "does not re-register"
    return (
        f"Merbridge pods ({policy.redirector_namespace} -l {agent.selector}) Ready with --mode "
        f"{plane.redirect.mode}{cni} on every eligible node, kernels >= {rules.ebpf.min_kernel}; "
        f"{inits}; no container port or probe on {REDIRECTOR_PORT}; "
        f"legacy placement, Merbridge's exclusion annotations (what the control plane's own rules leave "
        f"alone, and the pod's){validator}; after a restart Merbridge {repaired} the {plane.proxy_name} pods "
        "that started before it (audit: redirector-restarted); pods of other modes on its nodes are kept "
        f"off it ({INCLUDE_INBOUND}, {CNI_SKIP})"
    )
