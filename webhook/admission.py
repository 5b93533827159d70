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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, outcome_cost
from webhook.dataplane import Build, Flavour, flavour, others
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.decide.interception import Choice, KernelFacts, PodTraits, choose_mode, kernel_facts
from webhook.decide.scheduling import Eligibility, eligible_nodes
from webhook.decide.sizing import (
    ProxyResources,
    annotation_overrides,
    apply_overrides,
    cpu_str,
    enough_samples,
    from_observed,
    from_profile,
)
from webhook.patch.diff import Patch, diff
from webhook.patch.inject import (
    ANN_STATUS,
    LABEL_MODE,
    PREFIX,
    Plan,
    apply_plan,
    mark_skipped,
    present_proxy,
    read_status,
    shallow_pod,
    strip,
)
from webhook.podsecurity import Levels, check_added, namespace_levels
from webhook.policy import Policy
from webhook.reasons import OPTED_IN_SKIPS, Mode, ModeReason, ResourceSource, Skip
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


@dataclass(frozen=True, slots=True)
class Detail:
    """What only a person reads: the mutated pod and the explanation."""

    pod: Mapping[str, Any] | None  # the object after the patch (the received object when skipped)
    explanation: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """Everything a front end needs: the patch, the warnings, and the why.

    It carries no uid: the answer is the same for every request with the same object, and
    the front ends echo the uid of the request they answer.

    ``pod`` and ``explanation`` come from ``detail``. An outcome decided now holds them; one
    served from a memo recomputes them on first use (the core is pure, so that is the same
    answer), which is what lets memos keep only the patch and the decision, never a pod.
    """

    patch: Patch
    injected: bool
    mode: Mode | None = None
    mode_reason: ModeReason | None = None
    skip: Skip | None = None
    resources: ProxyResources | None = None
    workload: WorkloadKey | None = None
    namespace: str = ""
    warnings: tuple[str, ...] = ()
    detail: Callable[[], Detail] = field(default=lambda: Detail(None, ()), compare=False, repr=False)

    @property
    def result(self) -> str:
        return "injected" if self.injected else "skipped"

    @property
    def reason(self) -> str:
        if self.skip is not None:
            return self.skip.value
        return self.mode_reason.value if self.mode_reason else ""

    @property
    def pod(self) -> Mapping[str, Any] | None:
        return self.detail().pod

    @property
    def explanation(self) -> tuple[str, ...]:
        return self.detail().explanation


class _Redo:
    """The detail of a memoised outcome: decided again, once, when someone asks."""

    __slots__ = ("_args", "_done")

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._done: Detail | None = None

    def __call__(self) -> Detail:
        if self._done is None:
            request, snapshot, policy, assume_opt_in = self._args
            self._done = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in).detail()
            self._args = ()
        return self._done


def _clone(outcome: Outcome, **changes: Any) -> Outcome:
    """A copy with ``changes``, without dataclasses.replace's re-validation (hot path)."""
    out = object.__new__(Outcome)
    out.__dict__.update(outcome.__dict__, **changes)
    return out


def _served(light: Outcome, detail: _Redo, workload: WorkloadKey | None = None) -> Outcome:
    """A memoised outcome for the request at hand (its own workload and detail)."""
    if workload is None:
        return _clone(light, detail=detail)
    return _clone(light, detail=detail, workload=workload)


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
    if policy.other_meshes.respect_opt_outs:
        foreign = others.opt_out(labels, annotations)
        if foreign is not None:
            return (
                False,
                Skip.OTHER_MESH_OPT_OUT,
                f"{foreign}: another mesh's opt-out, honoured by the policy",
            )
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


def _proxy_port_used(spec: Mapping[str, Any], ports: tuple[int, ...]) -> int | None:
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            declared = c.get("ports") if isinstance(c, dict) else None
            for p in declared if isinstance(declared, list) else ():
                if isinstance(p, dict) and p.get("containerPort") in ports:
                    return int(p["containerPort"])
    return None


def _trust_anchors(snapshot: ClusterSnapshot, policy: Policy) -> tuple[str | None, str]:
    """Linkerd's trust anchors and where they came from."""
    settings = policy.proxy.linkerd
    if settings.trust_anchors_pem:
        return settings.trust_anchors_pem, "policy proxy.linkerd.trustAnchorsPem"
    found = snapshot.trust_roots.get(settings.namespace)
    where = f"ConfigMap {settings.namespace}/linkerd-identity-trust-roots"
    return found, where


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
    overrides, problems = annotation_overrides(_with_flavour_overrides(annotations, policy))
    for problem in problems:
        ctx.warn(problem)
    return apply_overrides(base, overrides)


def _with_flavour_overrides(annotations: Mapping[str, Any], policy: Policy) -> Mapping[str, Any]:
    """The flavour's own proxy resource annotations (``config.linkerd.io/proxy-cpu-request``,
    ``sidecar.istio.io/proxyCPU`` ...) count as ours; ours win where both are given."""
    names = flavour(policy.proxy.flavour).resource_annotations
    if not any(name in annotations for name in names):
        return annotations
    merged = dict(annotations)
    for name, suffix in names.items():
        if name in annotations:
            merged.setdefault(PREFIX + suffix, annotations[name])
    return merged


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
    detail = Detail(pod if pod is not None else original, tuple(ctx.lines))
    return Outcome(
        patch=patch,
        injected=False,
        skip=skip,
        workload=workload,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        detail=lambda: detail,
    )


def _pod_security_line(levels: Levels) -> str:
    extra = "".join(f"; {k} {v}" for k, v in (("warn", levels.warn), ("audit", levels.audit)) if v)
    return (
        f"pod security: enforce {levels.enforce} ({levels.source}, version {levels.enforce_version}){extra}"
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


def _exact_key(data: bytes) -> bytes:
    """A memo key as stored: the JSON itself, copied to its exact size (orjson allocates its
    output with up to 2x slack). Exact, so no collision question; a dict hashes it faster
    than a cryptographic digest could be computed, and the memo's cost counts it."""
    return bytes(memoryview(data))


def _outcome_key(request: Mapping[str, Any], assume_opt_in: bool) -> tuple[bytes, int] | None:
    """(the object and what else the outcome depends on, as JSON; its size)."""
    obj = request.get("object")
    kind = request.get("kind")
    parts = [
        "outcome",
        request.get("namespace"),
        kind.get("kind") if isinstance(kind, dict) else None,
        assume_opt_in,
    ]
    try:
        data = orjson.dumps([*parts, obj])
    except TypeError:  # not JSON data (cannot come from the API server): decide uncached
        return None
    return data, len(data)


# Metadata that names one pod or its owner and is read only to find the workload (whose
# observed usage sizes the proxy) and for the explanation, never for the patch itself.
_IDENTITY = frozenset(
    {"name", "generateName", "uid", "labels", "ownerReferences", "managedFields", "creationTimestamp"}
)


def _template_key(
    request: Mapping[str, Any], snapshot: ClusterSnapshot, policy: Policy, assume_opt_in: bool
) -> tuple[bytes, int, WorkloadKey] | None:
    """The key under which pods that differ only in identity share one outcome, its JSON
    size, and this pod's workload; None when that cannot be shared.

    Pods of different workloads built from one template (many Deployments rolling at once,
    a chart installed many times) differ in names, owners and labels. The decision reads
    those only through: the workload's observed usage (so a workload with usage is decided
    on its own), the controller's kind (batch), the opt-in label, our own mode label, the
    Services that select the labels (the protocol), whether labels exist at all (the
    shape of the patch), and what the data-plane flavour renders from them (Linkerd and
    Istio name the workload and its kind on the pod: the kind is in the key and the name
    is put into the shared patch per request; Istio reads the app and version labels).
    Those facts go into the key instead of the fields. Any new reading
    of a label or an owner must be added here; tests/test_properties.py checks that an
    outcome served under this key equals a fresh decision.
    """
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod":
        return None
    obj = request["object"]
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    namespace = str(request.get("namespace") or meta.get("namespace") or "default")
    workload = workload_key(obj, namespace)
    if workload in snapshot.usage:
        return None
    has_labels = "labels" in meta
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return None
    owners = meta.get("ownerReferences")
    plane = flavour(policy.proxy.flavour)
    facts = [
        "template",
        (workload.kind if _aliasable(meta) else tuple(workload[1:])) if plane.reads_workload else None,
        [labels.get(name) for name in plane.labels_read],
        namespace,
        assume_opt_in,
        has_labels,
        labels.get(_INJECT),
        labels.get(LABEL_MODE),
        [labels.get(name) for name in others.LABELS_READ],
        protocol_from_services(snapshot.services.get(namespace, ()), labels),
        [[o.get("kind"), o.get("controller")] for o in owners if isinstance(o, dict)]
        if isinstance(owners, list)
        else owners,
        {k: v for k, v in meta.items() if k not in _IDENTITY},
        {k: v for k, v in obj.items() if k != "metadata"},
    ]
    try:
        data = orjson.dumps(facts)
    except TypeError:
        return None
    return data, len(data), workload


def admit(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    assume_opt_in: bool = False,
) -> Outcome:
    """Decide for one AdmissionRequest (``review["request"]``) and build its patch.

    The outcome is a function of the object, its namespace and the (immutable) snapshot and
    policy, so it is memoised on the snapshot: by its template (pods that differ only in
    names, owners and labels, see ``_template_key``; a ReplicaSet's byte-identical pods
    among them) or, for a workload sized from its own observed usage, by the whole object.
    Memos keep the patch and the decision only; the pod and the explanation are recomputed
    if asked for.
    """
    if request.get("operation") != "CREATE" or not isinstance(request.get("object"), dict):
        return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    # One key per request: the template's where the pod can share one (identical pods share
    # it too), else the whole object's. Looking the whole object up first would save an
    # identical pod a few microseconds and cost every distinct workload more (measured).
    template = _template_key(request, snapshot, policy, assume_opt_in)
    if template is not None:
        key, size, workload = template
        memo = snapshot.templates
    else:
        keyed = _outcome_key(request, assume_opt_in)
        if keyed is None:
            return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
        (key, size), workload, memo = keyed, None, snapshot.outcomes
    hit = memo.get(key)
    if isinstance(hit, _Entry) and hit.policy is policy:
        return hit.serve(_Redo(request, snapshot, policy, assume_opt_in), workload)
    aliasable = workload is not None and flavour(policy.proxy.flavour).reads_workload
    if aliasable and _ALIAS_JSON not in key and _aliasable(request["object"].get("metadata")):
        # The flavour names the workload on the pod: decide once with a stand-in name, so
        # every workload of this template shares the entry, and put each one's name in.
        aliased = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in, alias=True)
        entry = _Entry(policy, outcome_light(aliased), tuple(_alias_paths(aliased.patch)))
        memo.put(_exact_key(key), entry, outcome_cost(size, len(orjson.dumps(aliased.patch))))
        return entry.serve(_Redo(request, snapshot, policy, assume_opt_in), workload)
    outcome = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    cost = outcome_cost(size, len(orjson.dumps(outcome.patch)))
    memo.put(_exact_key(key), _Entry(policy, outcome_light(outcome), ()), cost)
    return outcome


# The workload name a shared template is decided with; each request's own name replaces it.
_ALIAS = "0-mesh-injector-workload-0"
_ALIAS_JSON = _ALIAS.encode()


def _aliasable(meta: object) -> bool:
    """A first injection: the patch only adds, so putting the name into a shared patch is
    exact. A re-injection is diffed against names already in the pod: decided per workload."""
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return not (isinstance(annotations, dict) and ANN_STATUS in annotations)


_Path = tuple[str | int, ...]


def _alias_paths(node: object, path: _Path = ()) -> list[_Path]:
    """Where in a patch the stand-in name occurs (paths to the strings holding it). A subtree
    is only walked when its JSON holds the name (orjson is far faster than walking it)."""
    if isinstance(node, str):
        return [path] if _ALIAS in node else []
    if not isinstance(node, dict | list) or _ALIAS_JSON not in orjson.dumps(node):
        return []
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _alias_paths(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _alias_paths(v, (*path, i))]
    return []


def _put_name(patch: Patch, paths: tuple[_Path, ...], name: str) -> Patch:
    """``patch`` with ``name`` for the stand-in: only the dicts and lists on the way to each
    string are copied; the rest is shared with the memo's patch (which is never modified)."""
    root: list[Any] = list(patch)
    copies: dict[_Path, Any] = {(): root}
    for path in paths:
        node: Any = root
        for depth in range(1, len(path)):
            prefix = path[:depth]
            copied = copies.get(prefix)
            if copied is None:
                child = node[path[depth - 1]]
                copied = copies[prefix] = dict(child) if isinstance(child, dict) else list(child)
                node[path[depth - 1]] = copied
            node = copied
        node[path[-1]] = node[path[-1]].replace(_ALIAS, name)
    return root


class _Entry:
    """A memoised outcome. For a flavour that names the workload, its patch holds the
    stand-in name at ``paths``; each request gets its own name put in (and the last name
    with its patch is kept: a ReplicaSet's pods arrive together)."""

    __slots__ = ("last", "light", "paths", "policy")

    def __init__(self, policy: Policy, light: Outcome, paths: tuple[_Path, ...]) -> None:
        self.policy = policy
        self.light = light
        self.paths = paths
        self.last: tuple[str, Patch] | None = None

    def serve(self, detail: _Redo, workload: WorkloadKey | None) -> Outcome:
        if not self.paths or workload is None:
            return _served(self.light, detail, workload)
        last = self.last
        if last is None or last[0] != workload.name:
            last = self.last = (workload.name, _put_name(self.light.patch, self.paths, workload.name))
        return _clone(self.light, detail=detail, workload=workload, patch=last[1])


def outcome_light(outcome: Outcome) -> Outcome:
    """``outcome`` without its detail: what a memo keeps (the patch holds only what we add)."""
    return _clone(outcome, detail=_no_detail)


def _no_detail() -> Detail:
    raise RuntimeError("a memoised outcome is served with its own detail")


def _admit(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    assume_opt_in: bool,
    alias: bool = False,
) -> Outcome:
    """The decision. ``alias``: render the data plane with a stand-in workload name (for a
    template memo entry; see ``admit``)."""
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
    plane: Flavour = flavour(policy.proxy.flavour)
    owner = others.owner(pod)
    if owner is not None:
        mesh, evidence = owner
        same = mesh.lower() == plane.name
        text = (
            f"the pod is already meshed by {mesh}'s own injector ({evidence}); it is left as it is"
            if same
            else f"{mesh} already owns the pod ({evidence}); a second proxy would fight over its traffic"
        )
        return _skip(skip=Skip.OTHER_MESH, text=text, **args)
    present = present_proxy(pod)
    if present is not None:
        return _skip(skip=Skip.PROXY_PRESENT, text=f"the pod already carries a {present} container", **args)
    if opt_skip is not None:
        text = f"{opt_skip.text} ({opt_source})" if opt_skip is Skip.OTHER_MESH_OPT_OUT else opt_skip.text
        return _skip(skip=opt_skip, text=text, **args)
    used = _proxy_port_used(spec, plane.ports)
    if used is not None:
        text = (
            f"a container of the pod already uses port {used}, which the {plane.name} proxy needs "
            f"({', '.join(map(str, plane.ports))})"
        )
        return _skip(skip=Skip.PORT_CONFLICT, text=text, **args)
    anchors: str | None = None
    if plane.name == "linkerd":
        anchors, anchors_from = _trust_anchors(snapshot, policy)
        if anchors is None:
            text = (
                f"no Linkerd trust anchors: {anchors_from} was not found and the policy sets no "
                "proxy.linkerd.trustAnchorsPem; a proxy without them cannot get an identity"
            )
            return _skip(skip=Skip.NO_TRUST_ANCHORS, text=text, **args)
        image = policy.proxy.linkerd.image
        ctx.lines.append(f"data plane: linkerd ({image}; trust anchors from {anchors_from})")
    elif plane.name == "istio":
        s = policy.proxy.istio
        ctx.lines.append(f"data plane: istio ({s.image}; istiod {s.ca_address}, revision {s.revision})")
    else:
        ctx.lines.append(f"data plane: generic ({policy.proxy.image})")

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
    levels = namespace_levels(ns_labels, policy.pod_security.default_level)
    ctx.lines.append(_pod_security_line(levels))
    traits = PodTraits(
        requested=_pod_option(annotations, "interception", ctx) or "auto",
        iptables_fallback=_pod_option(annotations, "iptables-fallback", ctx) != "false",
        level=levels.enforce,
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

    init_rules = choice.mode is Mode.IPTABLES and not policy.interception.iptables.cni_installs_rules
    skips: list[tuple[tuple[int, int], ...]] = [(), ()]
    cidrs: tuple[str, ...] = ()
    if init_rules:
        for i, name in enumerate(("skip-inbound-ports", "skip-outbound-ports")):
            try:
                skips[i] = parse_ports(str(annotations.get(PREFIX + name, "")))
            except PortListError as exc:
                ctx.warn(f"annotation {PREFIX}{name}: {exc}; no ports skipped")
        if policy.other_meshes.translate_exclusions:
            found = others.exclusions(annotations)
            for problem in found.problems:
                ctx.warn(problem)
            if found.used:
                skips = [
                    tuple(sorted({*skips[0], *found.inbound})),
                    tuple(sorted({*skips[1], *found.outbound})),
                ]
                cidrs = found.cidrs
                ctx.lines.append(f"exclusions: translated {', '.join(found.used)} into the redirect rules")

    native, native_why = _native(
        _pod_option(annotations, "native-sidecar", ctx) or "auto", server, elig, policy, ctx
    )
    placement = "native sidecar" if native else "legacy sidecar"
    ctx.lines.append(f"placement: {placement} ({native_why})")
    if not native and lifecycle == "batch":
        ctx.warn(
            "this pod runs to completion but the proxy is a regular container (no native sidecars here), "
            "so it keeps the pod running after the app exits unless the app stops the proxy "
            f"({plane.admin})"
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
        f"{plane.name} proxy; mode {choice.mode.value}: {choice.text}; "
        f"{placement}: {native_why}{batch_note}; resources from {resources.source.value}: {resources.detail}"
    )
    build = Build(
        mode=choice.mode,
        native=native,
        protocol=protocol,
        resources=resources,
        init_rules=init_rules,
        skip_inbound=skips[0],
        skip_outbound=skips[1],
        skip_cidrs=cidrs,
        workload=WorkloadKey(key.namespace, key.kind, _ALIAS) if alias else key,
        batch=lifecycle == "batch",
        trust_anchors=anchors,
    )
    plan = Plan(flavour=plane, build=build, decision=decision)
    meshed = shallow_pod(pod)
    added = apply_plan(meshed, plan, policy)
    parts = ([*added["containers"], *added["initContainers"]], added["volumes"])
    violations = check_added(meshed, *parts, levels.enforce)
    if violations:
        text = f"{Skip.POD_SECURITY.text} ({levels.enforce}, {levels.source}): " + "; ".join(
            map(str, violations[:3])
        )
        return _skip(skip=Skip.POD_SECURITY, text=text, **args)
    for label, level in (("warn", levels.warn), ("audit", levels.audit)):
        flagged = check_added(meshed, *parts, level) if level else []
        if flagged:
            ctx.warn(
                f"what is injected would violate the namespace's {label} level {level}: "
                + "; ".join(map(str, flagged[:3]))
            )
    pod = meshed
    ctx.lines.insert(0, f"decision: meshed, {plane.name} proxy, mode {choice.mode.value}, {placement}")
    if ctx.warnings:
        ctx.lines.append("warnings: " + " | ".join(ctx.warnings))
    detail = Detail(pod, tuple(ctx.lines))
    return Outcome(
        patch=diff(original, pod),
        injected=True,
        mode=choice.mode,
        mode_reason=choice.reason,
        resources=resources,
        workload=key,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        detail=lambda: detail,
    )
