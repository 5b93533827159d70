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
from dataclasses import replace
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, outcome_cost
from webhook.core import Notes
from webhook.dataplane import FLAVOURS, Build, Flavour, flavour
from webhook.decide.explain import kernel_line, nodes_line, pod_security_line, redirector_line
from webhook.decide.gates import gate
from webhook.decide.memo import (
    ALIAS,
    ALIAS_JSON,
    Entry,
    alias_paths,
    aliasable,
    exact_key,
    outcome_key,
    template_key,
)
from webhook.decide.placement import native_placement, place
from webhook.decide.podfacts import (
    inherit,
    opt_in,
    pod_exclusions,
    pod_option,
    str_map,
)
from webhook.decide.resources import proxy_resources
from webhook.decide.scheduling import eligible_nodes
from webhook.decide.traits import workload_traits
from webhook.modes import MARKS, MODES
from webhook.modes.base import Setting, kernel_facts, sandbox_of
from webhook.modes.choice import Choice, PodTraits, choose_mode
from webhook.modes.microvm import nodes_spec
from webhook.outcome import Detail, Outcome, light
from webhook.patch.diff import diff
from webhook.patch.inject import (
    NameCollision,
    Ours,
    Plan,
    apply_plan,
    claimed_runtime,
    mark_skipped,
    present_proxy,
    read_status,
    shallow_pod,
    strip,
)
from webhook.podsecurity import namespace_levels, refusal
from webhook.policy import Policy
from webhook.reasons import OPTED_IN_SKIPS, ResourceSource, Skip
from webhook.workload import WorkloadKey, workload_key

__all__ = ["Outcome", "admit"]

# what any injection of ours may have added: re-injection takes off only that
OURS = Ours(
    containers=frozenset(name for f in FLAVOURS.values() for name in f.containers),
    volumes=frozenset(v["name"] for f in FLAVOURS.values() for v in f.volumes),
    marks=frozenset(mark for f in FLAVOURS.values() for mark in f.marks) | MARKS,
    mark_prefixes=tuple(prefix for f in FLAVOURS.values() for prefix in f.mark_prefixes),
)


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
    names, owners and labels, see ``template_key``; a ReplicaSet's byte-identical pods
    among them) or, for a workload sized from its own observed usage, by the whole object.
    Memos keep the patch and the decision only; the pod and the explanation are recomputed
    if asked for.
    """
    if request.get("operation") != "CREATE" or not isinstance(request.get("object"), dict):
        return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    # One key per request: the template's where the pod can share one (identical pods share
    # it too), else the whole object's. Looking the whole object up first would save an
    # identical pod a few microseconds and cost every distinct workload more (measured).
    template = template_key(request, snapshot, policy, assume_opt_in)
    if template is not None:
        key, size, workload = template
        memo = snapshot.templates
    else:
        keyed = outcome_key(request, assume_opt_in)
        if keyed is None:
            return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
        (key, size), workload, memo = keyed, None, snapshot.outcomes
    hit = memo.get(key)
    if isinstance(hit, Entry) and hit.policy is policy:
        return hit.serve(_Redo(request, snapshot, policy, assume_opt_in), workload)
    names_workload = workload is not None and flavour(policy.proxy.flavour).reads_workload
    meta = request["object"].get("metadata")
    if names_workload and ALIAS_JSON not in key and workload is not None and aliasable(meta, workload.name):
        # The flavour names the workload on the pod: decide once with a stand-in name, so
        # every workload of this template shares the entry, and put each one's name in.
        aliased = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in, alias=True)
        entry = Entry(policy, light(aliased), tuple(alias_paths(aliased.patch)))
        memo.put(exact_key(key), entry, outcome_cost(size, len(orjson.dumps(aliased.patch))))
        return entry.serve(_Redo(request, snapshot, policy, assume_opt_in), workload)
    outcome = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    cost = outcome_cost(size, len(orjson.dumps(outcome.patch)))
    memo.put(exact_key(key), Entry(policy, light(outcome), ()), cost)
    return outcome


def _skip(
    original: dict[str, Any],
    pod: dict[str, Any] | None,
    skip: Skip,
    text: str,
    opted_in: bool,
    namespace: str,
    ctx: Notes,
    workload: WorkloadKey | None = None,
) -> Outcome:
    """A pod that is not meshed is never changed, but for the skip-reason annotation on a pod
    that asked to be meshed. One that carries an earlier injection of ours keeps it as it is
    (the reason is a warning then)."""
    patch: list[dict[str, Any]] = []
    shown: Mapping[str, Any] = original
    if opted_in and skip in OPTED_IN_SKIPS and pod is not None:
        if read_status(original) is not None:
            ctx.warn(f"the pod keeps the proxy of an earlier injection, which would not be added now: {text}")
        else:
            marked = dict(original)
            marked["metadata"] = dict(original.get("metadata") or {})
            if isinstance(marked["metadata"].get("annotations"), dict):
                marked["metadata"]["annotations"] = dict(marked["metadata"]["annotations"])
            mark_skipped(marked, text)
            ctx.warn(f"pod not meshed: {text}")
            patch, shown = diff(original, marked), marked
    ctx.lines.insert(0, f"decision: not meshed ({skip.value}): {text}")
    detail = Detail(shown, tuple(ctx.lines))
    return Outcome(
        patch=patch,
        injected=False,
        skip=skip,
        workload=workload,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        detail=lambda: detail,
    )


def _admit(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    assume_opt_in: bool,
    alias: bool = False,
) -> Outcome:
    """The decision. ``alias``: render the data plane with a stand-in workload name (for a
    template memo entry; see ``admit``).

    A runtimeClassName the status claims as ours is taken back only where the decision sets
    the same one again; otherwise (a forged claim on the user's own sandbox, or a pod that
    would no longer get it) the pod is decided again with it kept as the pod's."""
    original = request.get("object")
    status = read_status(original) if isinstance(original, dict) else None
    outcome = _decide(request, snapshot, policy, status, assume_opt_in=assume_opt_in, alias=alias)
    claimed = claimed_runtime(original, status) if status is not None else None
    if claimed is None:
        return outcome
    spec = (outcome.pod or {}).get("spec") if outcome.injected else None
    if isinstance(spec, dict) and spec.get("runtimeClassName") == claimed:
        return outcome
    return _decide(
        request, snapshot, policy, status, assume_opt_in=assume_opt_in, alias=alias, take_runtime=False
    )


def _decide(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    status: Mapping[str, Any] | None,
    *,
    assume_opt_in: bool,
    alias: bool = False,
    take_runtime: bool = True,
) -> Outcome:
    """The decision table, step by step: each step either ends in a skip or adds what it
    learnt to the explanation and hands it on."""
    ctx = Notes()
    namespace = str(request.get("namespace") or "")
    operation = request.get("operation")
    kind = (request.get("kind") or {}).get("kind") if isinstance(request.get("kind"), dict) else None
    original = request.get("object")
    received = original if isinstance(original, dict) else {}
    if operation != "CREATE":
        return _skip(received, None, Skip.NOT_CREATE, f"operation is {operation}", False, namespace, ctx)
    if kind != "Pod" or not isinstance(original, dict):
        return _skip(received, None, Skip.NOT_POD, f"object is a {kind}", False, namespace, ctx)

    # the pod as the user wrote it: whatever an earlier injection of ours added taken off
    namespace = namespace or str(str_map(original.get("metadata")).get("namespace") or "default")
    pod = shallow_pod(original)
    key = workload_key(pod, namespace)
    asked = frozenset(name for f in FLAVOURS.values() for name in f.requested_volumes(pod))
    strip(
        pod,
        status,
        replace(OURS, volumes=OURS.volumes | asked) if asked else OURS,
        key.name,
        take_runtime=take_runtime,
    )
    meta = pod["metadata"]
    ctx.lines.append(f"pod: {namespace}/{meta.get('name') or meta.get('generateName', '?')} (workload {key})")

    # whether it is meshed at all
    labels, annotations = str_map(meta.get("labels")), str_map(meta.get("annotations"))
    ns_labels = snapshot.namespaces.get(namespace, {})
    opted, opt_skip, opt_source = opt_in(labels, annotations, ns_labels, policy, assume_opt_in)
    unknown_ns = opt_skip is Skip.NOT_OPTED_IN and namespace not in snapshot.namespaces
    if unknown_ns:
        opt_source = (
            f"namespace {namespace} is not in the cluster state ({snapshot.source}), "
            "so its labels are unknown"
        )
    ctx.lines.append(f"opt-in: {'yes' if opted else 'no'} ({opt_source})")
    args = dict(original=original, pod=pod, opted_in=opted, namespace=namespace, ctx=ctx, workload=key)
    plane: Flavour = flavour(policy.proxy.flavour)
    told = opt_skip is Skip.OTHER_MESH_OPT_OUT or unknown_ns
    stop = gate(
        original,
        pod,
        namespace,
        policy,
        plane,
        present=present_proxy(pod),
        earlier=status is not None,
        opt_skip=opt_skip,
        opt_told=f"{opt_skip.text} ({opt_source})" if opt_skip is not None and told else None,
        ctx=ctx,
    )
    if stop is not None:
        return _skip(skip=stop[0], text=stop[1], **args)

    # what the mesh's control plane gives the flavour
    control = plane.control_plane(snapshot.config_maps, policy)
    if control.missing is not None:
        return _skip(skip=control.missing[0], text=control.missing[1], **args)
    ctx.lines.append(control.line)
    for warning in control.warnings:
        ctx.warn(warning)
    inherited = inherit(pod, snapshot.namespace_annotations.get(namespace), plane.inherits)
    if inherited:
        annotations = str_map(pod["metadata"].get("annotations"))
        ctx.lines.append(f"namespace {namespace}: the pod inherits {', '.join(inherited)}")

    # where it may run, and what its workload is like
    spec = pod["spec"]
    server = snapshot.server_version
    elig = eligible_nodes(snapshot, nodes_spec(spec, snapshot))
    kf = kernel_facts(elig, policy.interception)
    ctx.lines.append(nodes_line(elig))
    ctx.lines.append(kernel_line(elig, kf))
    ctx.lines.append(redirector_line(elig, snapshot, policy))
    ctx.lines.append(f"cluster: {server if server else 'version unknown'} ({snapshot.source})")
    traits = workload_traits(pod, annotations, snapshot, namespace, key, policy, ctx)
    levels = namespace_levels(ns_labels, policy.pod_security.default_level)
    ctx.lines.append(pod_security_line(levels))

    # the interception mode
    requested = pod_option(annotations, "interception", ctx) or "auto"
    setting = Setting(
        elig=elig,
        kernels=kf,
        snapshot=snapshot,
        policy=policy,
        plane=plane,
        pod=pod,
        annotations=annotations,
        sandbox=sandbox_of(pod, snapshot, policy),
        level=levels.enforce,
        auto=requested == "auto",
        exclusions=pod_exclusions(annotations, policy, ctx),
    )
    native_option = pod_option(annotations, "native-sidecar", ctx) or "auto"
    choice: Choice = choose_mode(
        setting,
        PodTraits(
            requested=requested,
            iptables_fallback=pod_option(annotations, "iptables-fallback", ctx) != "false",
            high_throughput_grpc=traits.protocol == "grpc" and traits.throughput == "high",
            batch=traits.batch,
            native_possible=native_placement(native_option, server, elig, policy, Notes())[0],
        ),
    )
    if choice.mode is None:
        assert choice.skip is not None
        return _skip(skip=choice.skip, text=choice.text, **args)
    if choice.warning:
        ctx.warn(choice.warning)
    ctx.lines.append(
        f"mode: {choice.mode.value} ({choice.reason.value if choice.reason else ''}): {choice.text}"
    )
    adds = MODES[choice.mode].interception(setting)
    ctx.lines.extend(adds.notes)

    # the placement and the proxy's resources
    placed = place(
        native_option,
        adds.legacy_only,
        choice.mode,
        server,
        elig,
        policy,
        ctx,
        batch=traits.batch,
        stop_hint=plane.admin,
    )
    resources = proxy_resources(
        annotations,
        key,
        snapshot,
        policy,
        traits.protocol,
        traits.throughput,
        traits.lifecycle,
        ctx,
        native=placed.native,
        received=original,
    )
    ctx.lines.append(f"resources: {resources.detail} -> {resources.brief()}")
    if resources.source is not ResourceSource.OBSERVED and traits.usage is None and snapshot.usage:
        ctx.lines.append(f"usage: no samples recorded for {key}")

    # the flavour renders it onto the pod, which must pass the namespace's Pod Security
    decision = (
        f"{plane.name} proxy; mode {choice.mode.value}: {choice.text}; "
        f"{placed.text}: {placed.why}{placed.batch_note}; resources: {resources.detail}"
    )
    excl = setting.exclusions
    build = Build(
        mode=choice.mode,
        native=placed.native,
        protocol=traits.protocol,
        resources=resources,
        init=adds.init,
        runtime_class=adds.runtime_class or (setting.sandbox.name if setting.sandbox else None),
        skip_inbound=excl.inbound,
        skip_outbound=excl.outbound,
        skip_cidrs=excl.cidrs,
        workload=WorkloadKey(key.namespace, key.kind, ALIAS) if alias else key,
        batch=traits.batch,
        control=control.config,
    )
    plan = Plan(
        flavour=plane,
        build=build,
        decision=decision,
        annotations=adds.annotations,
        runtime_class=adds.runtime_class,
        inherited=inherited,
    )
    meshed = shallow_pod(pod)
    try:
        added = apply_plan(meshed, plan, policy, received=original, ctx=ctx)
    except NameCollision as clash:
        text = f"{Skip.NAME_COLLISION.text}: the pod's own {clash} would be duplicated"
        return _skip(skip=Skip.NAME_COLLISION, text=text, **args)
    if added.get("probes"):
        taken = "; ".join(f"{c}: {', '.join(fields)}" for c, fields in added["probes"].items())
        ctx.lines.append(f"probes: the {plane.name} agent runs them on the pod's behalf ({taken})")
    refused = refusal(meshed, [*added["containers"], *added["initContainers"]], added["volumes"], levels, ctx)
    if refused is not None:
        return _skip(skip=Skip.POD_SECURITY, text=refused, **args)

    ctx.lines.insert(0, f"decision: meshed, {plane.name} proxy, mode {choice.mode.value}, {placed.text}")
    if ctx.warnings:
        ctx.lines.append("warnings: " + " | ".join(ctx.warnings))
    detail = Detail(meshed, tuple(ctx.lines))
    return Outcome(
        patch=diff(original, meshed),
        injected=True,
        mode=choice.mode,
        mode_reason=choice.reason,
        resources=resources,
        workload=key,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        detail=lambda: detail,
    )
