"""The one pure entry point: ``admit(request, snapshot, policy, now=...) -> Outcome``.

No I/O, no clock (``now`` is an input), no globals. The HTTPS route and every CLI verb
call this and only format what it returns.

Re-admission is strip-and-redo: whatever a previous injection wrote (the status annotation
lists its containers and volumes) is taken off, the decision is made again on the clean
pod, and the result is diffed against what the API server sent. Re-admitting an injected
pod therefore yields an empty patch, an older injection is replaced cleanly, and a second
proxy is never added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook.cluster import ClusterSnapshot, outcome_cost
from webhook.inject import (
    PREFIX,
    Plan,
    apply_plan,
    has_proxy,
    mark_skipped,
    read_status,
    shallow_pod,
    strip,
)
from webhook.interception import Choice, KernelFacts, PodTraits, choose_mode, kernel_facts
from webhook.iptables import PROXY_PORTS, PortListError, parse_ports, render_rules
from webhook.patch import Patch, diff
from webhook.policy import Policy
from webhook.reasons import OPTED_IN_SKIPS, Mode, ModeReason, ResourceSource, Skip
from webhook.scheduling import Eligibility, eligible_nodes
from webhook.sizing import (
    ProxyResources,
    annotation_overrides,
    apply_overrides,
    cpu_str,
    enough_samples,
    from_observed,
    from_profile,
)
from webhook.versions import KubeVersion, parse_kube_version
from webhook.workload import (
    WorkloadKey,
    is_batch,
    protocol_from_container_ports,
    protocol_from_services,
    workload_key,
)

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
_INJECT = PREFIX + "inject"
_ENUMS = {
    "interception": ("auto", "ebpf", "iptables", "microvm"),
    "iptables-fallback": ("true", "false"),
    "workload-protocol": ("grpc", "http", "tcp"),
    "throughput": ("high", "normal"),
    "native-sidecar": ("auto", "true", "false"),
}
_DEFAULTS = {"interception": "auto", "iptables-fallback": "true", "native-sidecar": "auto"}


@dataclass(frozen=True)
class Outcome:
    """Everything a front end needs: the patch, the warnings, and the why.

    It carries no uid: the answer is the same for every request with the same object, and
    the front ends echo the uid of the request they answer."""

    patch: Patch
    pod: Mapping[str, Any] | None  # the object after the patch (None when not a pod)
    injected: bool
    mode: Mode | None = None
    mode_reason: ModeReason | None = None
    skip: Skip | None = None
    resources: ProxyResources | None = None
    workload: WorkloadKey | None = None
    namespace: str = ""
    warnings: tuple[str, ...] = ()
    explanation: tuple[str, ...] = field(default_factory=tuple)

    @property
    def result(self) -> str:
        return "injected" if self.injected else "skipped"

    @property
    def reason(self) -> str:
        if self.skip is not None:
            return self.skip.value
        return self.mode_reason.value if self.mode_reason else ""


def _str_map(value: object) -> Mapping[str, str]:
    return value if isinstance(value, dict) else {}


@dataclass
class _Ctx:
    """What is learnt while deciding, for the explanation and the warnings."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text if text.startswith("mesh-injector:") else f"mesh-injector: {text}")


def _pod_option(annotations: Mapping[str, Any], name: str, ctx: _Ctx) -> str | None:
    raw = annotations.get(PREFIX + name)
    if raw is None:
        return _DEFAULTS.get(name)
    value = str(raw).strip().lower()
    if value not in _ENUMS[name]:
        ctx.warn(
            f"annotation {PREFIX}{name}: {raw!r} is not one of {', '.join(_ENUMS[name])}; "
            f"using {_DEFAULTS.get(name, 'detection')}"
        )
        return _DEFAULTS.get(name)
    return value


def _opt_in(
    labels: Mapping[str, Any],
    annotations: Mapping[str, Any],
    ns_labels: Mapping[str, str],
    policy: Policy,
    assume_opt_in: bool,
) -> tuple[bool, Skip | None, str]:
    """(opted in, skip reason when not, where the answer came from)."""
    for where, source in (("pod label", labels), ("pod annotation", annotations)):
        value = source.get(_INJECT)
        if value == "disabled":
            return False, Skip.POD_DISABLED, where
        if value == "enabled":
            return True, None, where
    if assume_opt_in:
        return True, None, "inject command (manifests are opted in unless they say disabled)"
    ns_value = ns_labels.get(_INJECT)
    if ns_value == "enabled":
        return True, None, "namespace label"
    if ns_value == "disabled":
        return False, Skip.NAMESPACE_DISABLED, "namespace label"
    if policy.inject_by_default:
        return True, None, "policy injectByDefault"
    return False, Skip.NOT_OPTED_IN, "nothing opted in"


def _excluded(namespace: str, policy: Policy) -> Skip | None:
    if namespace in SYSTEM_NAMESPACES:
        return Skip.SYSTEM_NAMESPACE
    if namespace == policy.injector_namespace:
        return Skip.OWN_NAMESPACE
    if namespace in policy.excluded_namespaces:
        return Skip.POLICY_NAMESPACE
    return None


def _uses_proxy_ports(spec: Mapping[str, Any]) -> bool:
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            ports = c.get("ports") if isinstance(c, dict) else None
            for p in ports if isinstance(ports, list) else ():
                if isinstance(p, dict) and p.get("containerPort") in PROXY_PORTS:
                    return True
    return False


def _protocol(
    pod: Mapping[str, Any],
    annotations: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    namespace: str,
    ctx: _Ctx,
) -> tuple[str, str]:
    explicit = _pod_option(annotations, "workload-protocol", ctx)
    if explicit is not None:
        return explicit, "annotation"
    labels = _str_map((pod.get("metadata") or {}).get("labels"))
    found = protocol_from_services(snapshot.services.get(namespace, ()), labels)
    if found is not None:
        return found[0], f"Service {found[1]}"
    spec = pod.get("spec") or {}
    by_ports = protocol_from_container_ports(spec.get("containers") or [])
    if by_ports is not None:
        return by_ports, "container port names"
    return "tcp", "no Service or port name says otherwise"


def _native(
    option: str, server: KubeVersion | None, elig: Eligibility, policy: Policy, ctx: _Ctx
) -> tuple[bool, str]:
    floor = policy.native_sidecar.min_version
    if option == "false":
        return False, "legacy placement requested by annotation"
    if option == "true":
        if server is not None and server < floor:
            ctx.warn(
                f"native sidecar requested but the cluster is {server} (< {floor}); legacy placement used"
            )
            return False, f"native sidecar requested but the cluster is {server}"
        return True, "native sidecar requested by annotation"
    if server is None:
        return False, "the API server version is unknown"
    if server < floor:
        return False, f"the cluster is {server}, below {floor}"
    if elig.count == 0:
        return False, "no eligible node is known, so kubelet versions are unknown"
    kubelets = [parse_kube_version(k) for k in elig.kubelets]
    if any(k is None for k in kubelets):
        return False, "an eligible node's kubelet version is unknown"
    lowest = min(k for k in kubelets if k is not None)
    if lowest < floor:
        return False, f"an eligible node's kubelet is {lowest}, below {floor}"
    return True, f"cluster {server} and every eligible kubelet (lowest {lowest}) are at least {floor}"


def _resources(
    annotations: Mapping[str, Any],
    key: WorkloadKey,
    snapshot: ClusterSnapshot,
    policy: Policy,
    protocol: str,
    throughput: str,
    lifecycle: str,
    ctx: _Ctx,
) -> ProxyResources:
    summary = snapshot.usage.get(key)
    if enough_samples(summary, policy):
        assert summary is not None
        base = from_observed(summary, policy)
    else:
        profile = policy.profile_for(protocol, throughput, lifecycle)
        why = (
            "no observed usage"
            if summary is None
            else f"only {summary.count} samples over {summary.span / 3600:.1f}h "
            f"(need {policy.sizing.min_samples} over {policy.sizing.min_span / 3600:g}h)"
        )
        base = from_profile(
            (profile.requests, profile.limits), profile.name, f"{protocol}/{throughput}/{lifecycle}; {why}"
        )
    overrides, problems = annotation_overrides(annotations)
    for problem in problems:
        ctx.warn(problem)
    return apply_overrides(base, overrides)


def _skip(
    original: dict[str, Any],
    pod: dict[str, Any] | None,
    skip: Skip,
    text: str,
    opted_in: bool,
    namespace: str,
    ctx: _Ctx,
    workload: WorkloadKey | None = None,
) -> Outcome:
    annotate = opted_in and skip in OPTED_IN_SKIPS and pod is not None
    if annotate:
        assert pod is not None
        mark_skipped(pod, text)
        ctx.warn(f"pod not meshed: {text}")
    patch = diff(original, pod) if pod is not None else []
    ctx.lines.insert(0, f"decision: not meshed ({skip.value}): {text}")
    return Outcome(
        patch=patch,
        pod=pod if pod is not None else original,
        injected=False,
        skip=skip,
        workload=workload,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        explanation=tuple(ctx.lines),
    )


def _kernel_line(elig: Eligibility, kf: KernelFacts) -> str:
    if kf.unknown:
        return f"kernel: unknown ({kf.unknown})"
    distinct = len(elig.kernels)
    capable = "yes" if kf.ebpf else "no"
    return f"kernel: lowest {kf.lowest_raw} among {distinct} distinct kernel(s); eBPF-capable: {capable}"


def _nodes_line(elig: Eligibility) -> str:
    excluded = ", ".join(f"{n} {why}" for why, n in elig.excluded.items())
    sample = f" (e.g. {', '.join(elig.sample)})" if elig.sample else ""
    return f"eligible nodes: {elig.count} of {elig.total}{sample} by {elig.basis}" + (
        f"; excluded: {excluded}" if excluded else ""
    )


def _outcome_key(request: Mapping[str, Any], assume_opt_in: bool) -> bytes | None:
    obj = request.get("object")
    if request.get("operation") != "CREATE" or not isinstance(obj, dict):
        return None
    kind = request.get("kind")
    parts = [
        "outcome",
        request.get("namespace"),
        kind.get("kind") if isinstance(kind, dict) else None,
        assume_opt_in,
    ]
    try:
        return orjson.dumps([*parts, obj])
    except TypeError:  # not JSON data (cannot come from the API server): decide uncached
        return None


def admit(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    assume_opt_in: bool = False,
) -> Outcome:
    """Decide for one AdmissionRequest (``review["request"]``) and build its patch.

    The outcome is a function of the object, its namespace and the (immutable) snapshot and
    policy, so it is memoised on the snapshot: identical pods, as a ReplicaSet creates them,
    are decided once.
    """
    key = _outcome_key(request, assume_opt_in)
    if key is not None:
        hit = snapshot.outcomes.get(key)
        if isinstance(hit, tuple) and hit[0] is policy:
            return hit[1]
    outcome = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    if key is not None:
        snapshot.outcomes.put(key, (policy, outcome), outcome_cost(len(key)))
    return outcome


def _admit(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    assume_opt_in: bool,
) -> Outcome:
    ctx = _Ctx()
    namespace = str(request.get("namespace") or "")
    operation = request.get("operation")
    kind = (request.get("kind") or {}).get("kind") if isinstance(request.get("kind"), dict) else None
    original = request.get("object")
    received = original if isinstance(original, dict) else {}
    if operation != "CREATE":
        return _skip(received, None, Skip.NOT_CREATE, f"operation is {operation}", False, namespace, ctx)
    if kind != "Pod" or not isinstance(original, dict):
        return _skip(received, None, Skip.NOT_POD, f"object is a {kind}", False, namespace, ctx)

    meta = _str_map(original.get("metadata"))
    namespace = namespace or str(meta.get("namespace") or "default")
    pod = shallow_pod(original)
    strip(pod, read_status(original))
    meta = pod["metadata"]
    labels, annotations = _str_map(meta.get("labels")), _str_map(meta.get("annotations"))
    spec = pod["spec"]
    ns_labels = snapshot.namespaces.get(namespace, {})
    key = workload_key(pod, namespace)
    ctx.lines.append(f"pod: {namespace}/{meta.get('name') or meta.get('generateName', '?')} (workload {key})")

    opted, opt_skip, opt_source = _opt_in(labels, annotations, ns_labels, policy, assume_opt_in)
    ctx.lines.append(f"opt-in: {'yes' if opted else 'no'} ({opt_source})")
    args = dict(original=original, pod=pod, opted_in=opted, namespace=namespace, ctx=ctx, workload=key)
    excluded = _excluded(namespace, policy)
    if excluded is not None:
        return _skip(skip=excluded, text=f"{excluded.text} ({namespace})", **args)
    if spec.get("hostNetwork") is True:
        return _skip(skip=Skip.HOST_NETWORK, text=Skip.HOST_NETWORK.text, **args)
    if has_proxy(pod):
        return _skip(skip=Skip.PROXY_PRESENT, text=Skip.PROXY_PRESENT.text, **args)
    if opt_skip is not None:
        return _skip(skip=opt_skip, text=opt_skip.text, **args)
    if _uses_proxy_ports(spec):
        return _skip(skip=Skip.PORT_CONFLICT, text=Skip.PORT_CONFLICT.text, **args)

    server = snapshot.server_version
    elig = eligible_nodes(snapshot, spec)
    kf = kernel_facts(elig, policy.interception)
    ctx.lines.append(_nodes_line(elig))
    ctx.lines.append(_kernel_line(elig, kf))
    ctx.lines.append(f"cluster: {server if server else 'version unknown'} ({snapshot.source})")

    protocol, proto_source = _protocol(pod, annotations, snapshot, namespace, ctx)
    summary = snapshot.usage.get(key)
    throughput = _pod_option(annotations, "throughput", ctx)
    if throughput is not None:
        tp_source = "annotation"
    elif enough_samples(summary, policy) and summary is not None:
        high = summary.cpu_p >= policy.interception.high_throughput_cpu
        throughput = "high" if high else "normal"
        tp_source = (
            f"observed cpu p{policy.sizing.cpu_percentile:g} {cpu_str(summary.cpu_p)} vs threshold "
            + cpu_str(policy.interception.high_throughput_cpu)
        )
    else:
        throughput, tp_source = "normal", "no annotation or observed usage"
    lifecycle = "batch" if is_batch(pod) else "service"
    ctx.lines.append(
        f"workload: protocol {protocol} ({proto_source}), throughput {throughput} ({tp_source}), "
        f"lifecycle {lifecycle}"
    )
    restricted = ns_labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    traits = PodTraits(
        requested=_pod_option(annotations, "interception", ctx) or "auto",
        iptables_fallback=_pod_option(annotations, "iptables-fallback", ctx) != "false",
        restricted=restricted,
        high_throughput_grpc=protocol == "grpc" and throughput == "high",
    )
    choice: Choice = choose_mode(kf, traits, server, policy.interception)
    if choice.mode is None:
        assert choice.skip is not None
        return _skip(skip=choice.skip, text=choice.text, **args)
    if choice.warning:
        ctx.warn(choice.warning)
    ctx.lines.append(
        f"mode: {choice.mode.value} ({choice.reason.value if choice.reason else ''}): {choice.text}"
    )

    rules = None
    if choice.mode is Mode.IPTABLES and not policy.interception.iptables.cni_installs_rules:
        skips = []
        for name in ("skip-inbound-ports", "skip-outbound-ports"):
            try:
                skips.append(parse_ports(str(annotations.get(PREFIX + name, ""))))
            except PortListError as exc:
                ctx.warn(f"annotation {PREFIX}{name}: {exc}; no ports skipped")
                skips.append(())
        rules = render_rules(skip_inbound=skips[0], skip_outbound=skips[1])

    native, native_why = _native(
        _pod_option(annotations, "native-sidecar", ctx) or "auto", server, elig, policy, ctx
    )
    placement = "native sidecar" if native else "legacy sidecar"
    ctx.lines.append(f"placement: {placement} ({native_why})")
    if not native and lifecycle == "batch":
        ctx.warn(
            "this pod runs to completion but the proxy is a regular container (no native sidecars here), "
            "so it keeps the pod running after the app exits unless the app stops the proxy "
            "(POST /shutdown on port 4191)"
        )

    resources = _resources(annotations, key, snapshot, policy, protocol, throughput, lifecycle, ctx)
    ctx.lines.append(f"resources: {resources.source.value}: {resources.detail} -> {resources.brief()}")
    if resources.source is not ResourceSource.OBSERVED and summary is None and snapshot.usage:
        ctx.lines.append(f"usage: no samples recorded for {key}")

    batch_note = (
        "; batch pod on legacy placement keeps running after the app exits"
        if (not native and lifecycle == "batch")
        else ""
    )
    decision = (
        f"mode {choice.mode.value}: {choice.text}; {placement}: {native_why}{batch_note}; "
        f"resources from {resources.source.value}: {resources.detail}"
    )
    plan = Plan(
        mode=choice.mode,
        native=native,
        protocol=protocol,
        resources=resources,
        rules=rules,
        decision=decision,
    )
    apply_plan(pod, plan, policy)
    ctx.lines.insert(0, f"decision: meshed, mode {choice.mode.value}, {placement}")
    if ctx.warnings:
        ctx.lines.append("warnings: " + " | ".join(ctx.warnings))
    return Outcome(
        patch=diff(original, pod),
        pod=pod,
        injected=True,
        mode=choice.mode,
        mode_reason=choice.reason,
        resources=resources,
        workload=key,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        explanation=tuple(ctx.lines),
    )
