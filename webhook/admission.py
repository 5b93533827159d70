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
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, Memo, outcome_cost
from webhook.core import Notes
from webhook.dataplane import Flavour, flavour
from webhook.decide.control import connect
from webhook.decide.gates import admissible
from webhook.decide.memo import (
    ALIAS_JSON,
    Edit,
    Entry,
    Unshared,
    alias_paths,
    aliasable,
    exact_key,
    outcome_key,
    template_key,
    tokenised,
    tokens_in,
)
from webhook.decide.placement import place
from webhook.decide.podfacts import str_map
from webhook.decide.resources import proxy_resources
from webhook.decide.survey import survey
from webhook.modes.choice import pick
from webhook.modes.firewall import choose_firewall
from webhook.outcome import Detail, Outcome, light
from webhook.patch.diff import diff
from webhook.patch.inject import claimed_runtime, mark_skipped, read_status, taken_off
from webhook.patch.render import render
from webhook.patch.reprint import ports_in
from webhook.policy import Policy
from webhook.reasons import OPTED_IN_SKIPS, Skip, Stop
from webhook.workload import WorkloadKey

__all__ = ["Outcome", "admit"]


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
    among them), or by the template's shape where the flavour's pods share one (a changed
    Deployment's new template: ``webhook.decide.memo``), or, for a workload sized from its
    own observed usage, by the whole object; from the second request for a key on
    (``Memo.again``). Memos keep the patch and the decision only; the pod and the
    explanation are recomputed if asked for.
    """
    if request.get("operation") != "CREATE" or not isinstance(request.get("object"), dict):
        return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    # One key per request: the template's where the pod can share one (identical pods share
    # it too), else the whole object's. Looking the whole object up first would save an
    # identical pod a few microseconds and cost every distinct workload more (measured).
    template = template_key(request, snapshot, policy, assume_opt_in)
    shape, edits = None, None
    if template is not None:
        key, size, workload, shape = template
        memo = snapshot.templates
        hit = memo.get(key)
        if type(hit) is tuple:  # the template's shape, whose entry is kept under its own key,
            hit, edits = memo.get(hit[0]), hit[1]  # and what the template's ports put in
    else:
        keyed = outcome_key(request, assume_opt_in)
        if keyed is None:
            return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
        (key, size), workload, memo = keyed, None, snapshot.outcomes
        hit = memo.get(key)
    if isinstance(hit, Entry) and hit.policy is policy:
        return _served(hit, request, snapshot, policy, assume_opt_in, workload, edits)
    if shape is not None:
        # a template not seen (or kept) yet: its shape, a changed Deployment's template's
        shaped = shape.key()
        if shaped is not None:
            found = memo.get(shaped[0])
            if isinstance(found, Entry) and found.policy is policy:
                edits = found.edits(request["object"])
                if edits is not None and memo.again(key):
                    # this template comes again: its pods find the shape at once
                    memo.put(exact_key(key), (exact_key(shaped[0]), edits), 2 * size + shaped[1] + 512)
                return _served(found, request, snapshot, policy, assume_opt_in, workload, edits)
            if not (isinstance(found, Unshared) and found.policy is policy):
                if not memo.again(shaped[0]):
                    # a shape's first pod is only decided, as a template's is (below)
                    return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
                kept = _keep_shape(request, snapshot, policy, assume_opt_in, key, shaped, memo, workload)
                if kept is not None:
                    return kept
    if not memo.again(key):
        # a template's first pod is only decided: most templates seen once are never seen
        # again (a changed Deployment's first pod is followed by its siblings, but a one-off
        # Job's is not), and keeping each would push out the templates that do come again
        return _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    if _names_workload(policy, workload, key, request):
        # The flavour names the workload on the pod: decide once with a stand-in name, so
        # every workload of this template shares the entry, and put each one's name in.
        aliased = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in, alias=True)
        text = orjson.dumps(aliased.patch)
        entry = Entry(policy, light(aliased), tuple(alias_paths(aliased.patch, text)))
        memo.put(exact_key(key), entry, outcome_cost(size, len(text)))
        return _served(entry, request, snapshot, policy, assume_opt_in, workload)
    outcome = _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    cost = outcome_cost(size, len(orjson.dumps(outcome.patch)))
    memo.put(exact_key(key), Entry(policy, light(outcome), ()), cost)
    return outcome


def _names_workload(
    policy: Policy, workload: WorkloadKey | None, key: bytes, request: Mapping[str, Any]
) -> bool:
    """Whether a shared decision is made with a stand-in workload name (see ``admit``;
    ``key``: the template's, which holds every value of the pod)."""
    return (
        workload is not None
        and flavour(policy.proxy.flavour).reads_workload
        and ALIAS_JSON not in key
        and aliasable(request["object"].get("metadata"), workload.name)
    )


def _served(
    entry: Entry,
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    assume_opt_in: bool,
    workload: WorkloadKey | None,
    edits: list[Edit] | None = None,
) -> Outcome:
    redo = _Redo(request, snapshot, policy, assume_opt_in)
    out = entry.serve(redo, workload, request["object"], edits)
    # None: the pod's ports make what cannot be put into its shape's patch
    return out if out is not None else _admit(request, snapshot, policy, assume_opt_in=assume_opt_in)


def _keep_shape(
    request: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    assume_opt_in: bool,
    template: bytes,
    shaped: tuple[bytes, int],
    memo: Memo,
    workload: WorkloadKey | None,
) -> Outcome | None:
    """Decide a shape with a token for each value it leaves out, find what its first pod's
    ports made in the patch (to put in each pod's own), and keep it; None where it cannot be
    shared (a token reached the outcome, or the ports' text is not found once), which is
    then kept as ``Unshared``: its templates are keyed whole."""
    key, size = shaped
    alias = _names_workload(policy, workload, template, request)
    tokened = tokenised(request)
    decided = _admit(tokened, snapshot, policy, assume_opt_in=assume_opt_in, alias=alias)
    text = orjson.dumps(decided.patch)
    ports = ports_in(decided, tokened["object"], flavour(policy.proxy.flavour).ports_env, text)
    if ports is False or tokens_in(decided, text):
        memo.put(exact_key(key), Unshared(policy), 2 * size + 256)
        return None
    paths = tuple(alias_paths(decided.patch, text)) if alias else ()
    reprint = None if isinstance(ports, bool) else ports
    entry = Entry(policy, light(decided), paths, reprint)
    memo.put(exact_key(key), entry, outcome_cost(size, len(text)) + (reprint.size if reprint else 0))
    return _served(entry, request, snapshot, policy, assume_opt_in, workload)


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
    """The decision table, step by step: each step either ends in a ``Stop`` (the pod is not
    meshed) or adds what it learnt to the explanation and hands it on."""
    ctx = Notes()
    namespace, operation = str(request.get("namespace") or ""), request.get("operation")
    kind = (request.get("kind") or {}).get("kind") if isinstance(request.get("kind"), dict) else None
    original = request.get("object")
    if operation != "CREATE" or kind != "Pod" or not isinstance(original, dict):
        received = original if isinstance(original, dict) else {}
        skip, text = (
            (Skip.NOT_CREATE, f"operation is {operation}")
            if operation != "CREATE"
            else (Skip.NOT_POD, f"object is a {kind}")
        )
        return _skip(received, None, skip, text, False, namespace, ctx)

    # the pod as the user wrote it, and whether it is to be meshed at all
    namespace = namespace or str(str_map(original.get("metadata")).get("namespace") or "default")
    pod, key = taken_off(original, status, namespace, take_runtime)
    meta = pod["metadata"]
    ctx.lines.append(f"pod: {namespace}/{meta.get('name') or meta.get('generateName', '?')} (workload {key})")
    plane = flavour(policy.proxy.flavour)
    entry = admissible(
        original, pod, namespace, snapshot, policy, plane, earlier=status is not None,
        assume_opt_in=assume_opt_in, ctx=ctx,
    )  # fmt: skip

    def stop(end: Stop) -> Outcome:
        return _skip(original, pod, end.skip, end.text, entry.opted, namespace, ctx, key)

    if entry.stop is not None:
        return stop(entry.stop)
    # the mesh's control plane; the nodes, the workload and the namespace's levels; the mode
    connected = connect(plane, pod, namespace, entry.annotations, snapshot, policy, ctx)
    if isinstance(connected, Stop):
        return stop(connected)
    annotations = connected.annotations
    found = survey(pod, annotations, entry.ns_labels, namespace, key, snapshot, policy, ctx)
    picked = pick(pod, annotations, found, plane, connected.control, snapshot, policy, ctx)
    if isinstance(picked, Stop):
        return stop(picked)
    # the iptables backend of the init container's rules, one every eligible node has
    firewall = choose_firewall(picked, connected.control, found.elig, policy, ctx)
    if isinstance(firewall, Stop):
        return stop(firewall)
    # the placement and the proxy's resources, then the flavour renders it all onto the pod
    placed = place(
        picked.native_option, picked.adds.legacy_only, picked.mode, found.server, found.elig, policy, ctx,
        batch=found.traits.batch, stop_hint=plane.admin,
    )  # fmt: skip
    resources = proxy_resources(
        annotations, key, snapshot, policy, found.traits, ctx, native=placed.native, received=original
    )
    meshed = render(
        original, pod, key, plane, connected, found, picked, firewall, placed, resources, policy, ctx,
        alias=alias,
    )  # fmt: skip
    if isinstance(meshed, Stop):
        return stop(meshed)

    ctx.lines.insert(0, f"decision: meshed, {plane.name} proxy, mode {picked.mode.value}, {placed.text}")
    if ctx.warnings:
        ctx.lines.append("warnings: " + " | ".join(ctx.warnings))
    detail = Detail(meshed, tuple(ctx.lines))
    return Outcome(
        patch=diff(original, meshed),
        injected=True,
        mode=picked.mode,
        mode_reason=picked.choice.reason,
        firewall=firewall.firewall if firewall is not None else None,
        resources=resources,
        workload=key,
        namespace=namespace,
        warnings=tuple(ctx.warnings),
        detail=lambda: detail,
        ports_text=_ports_text(plane, connected.control.config),
    )


def _ports_text(plane: Flavour, config: object) -> Callable[[Mapping[str, Any]], str] | None:
    """What the rendering makes of a pod's ports with the control plane this one joined."""
    made = plane.ports_text
    if made is None:
        return None

    def of(pod: Mapping[str, Any]) -> str:
        return made(pod, config)

    return of
