"""Memoised outcomes: the keys pods share an outcome under, and the entries kept.

An outcome depends only on the pod, its namespace and the (immutable) snapshot and
policy, so it is kept on the snapshot: by the pod's template (pods that differ only in
names, owners and labels; a ReplicaSet's identical pods among them) or, for a workload
sized from its own observed usage, by the whole object. A flavour that names the
workload on the pod is decided once with a stand-in name (``ALIAS``) and each request's
own name is put into the shared patch.

For a flavour whose rendering declares it (``Flavour.shapes``), the key is the template's
*shape*: the template without the values no part of the decision reads (the containers'
images, their variables' values, the annotations of domains other than the meshes' and
Kubernetes') and without the numbers of its containers' ports but for those the decision
compares (the proxy's own, Merbridge's listener). A changed Deployment's new template (a new
image tag, a variable's value, a build annotation, a port) then shares its predecessor's
entry: the shape is decided once with a token in place of each such value (a token that
reaches the outcome keeps the shape from being shared), and each request gets what the
rendering makes of its own ports put in, with the proxy's fingerprint made again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import ANN_STATUS, LABEL_MODE
from webhook.dataplane import FLAVOURS, flavour, others
from webhook.dataplane.base import LABEL_VALUE_MAX, REDIRECTOR_PORT, Flavour
from webhook.decide import podfacts
from webhook.decide.autoscaler import autoscaler_for
from webhook.outcome import Detail, Outcome, Patch, clone
from webhook.policy import Policy
from webhook.workload import WorkloadKey, protocol_from_services, workload_key

# The labels an injection may write: ours, a flavour's marks and those named after the
# workload's kind. A patch is a diff against the pod's own values of them, so pods share a
# memoised outcome only where they agree on those values. (A mode writes annotations only,
# ``modes.base.Interception``: the key holds every annotation anyway.)
WRITTEN_LABELS = frozenset(mark for f in FLAVOURS.values() for mark in f.marks) | {LABEL_MODE}
WRITTEN_PREFIXES = tuple(prefix for f in FLAVOURS.values() for prefix in f.mark_prefixes)


def served(light: Outcome, detail: Callable[[], Detail], workload: WorkloadKey | None = None) -> Outcome:
    """A memoised outcome for the request at hand (its own workload and detail)."""
    if workload is None:
        return clone(light, detail=detail)
    return clone(light, detail=detail, workload=workload)


def exact_key(data: bytes) -> bytes:
    """A memo key as stored: the JSON itself, copied to its exact size (orjson allocates its
    output with up to 2x slack). Exact, so no collision question; a dict hashes it faster
    than a cryptographic digest could be computed, and the memo's cost counts it."""
    return bytes(memoryview(data))


def outcome_key(request: Mapping[str, Any], assume_opt_in: bool) -> tuple[bytes, int] | None:
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
IDENTITY = frozenset(
    {"name", "generateName", "uid", "labels", "ownerReferences", "managedFields", "creationTimestamp"}
)


def labels_read(plane: Flavour) -> tuple[str, ...]:
    """The pod labels whose values a decision of ``plane`` reads, as its parts declare them:
    the opt-in, the other meshes' opt-outs, and the flavour's rendering."""
    found = _LABELS_READ.get(plane.name)
    if found is None:
        found = _LABELS_READ[plane.name] = (*podfacts.LABELS_READ, *others.LABELS_READ, *plane.labels_read)
    return found


_LABELS_READ: dict[str, tuple[str, ...]] = {}


def template_key(
    request: Mapping[str, Any], snapshot: ClusterSnapshot, policy: Policy, assume_opt_in: bool
) -> tuple[bytes, int, WorkloadKey, Shape | None] | None:
    """The key under which pods that differ only in identity share one outcome, its JSON
    size, this pod's workload, and the template's shape (None where its pods cannot share
    one); None when that cannot be shared.

    Pods of different workloads built from one template (many Deployments rolling at once,
    a chart installed many times) differ in names, owners and labels. The decision reads
    those only as its parts declare (``tests/test_memo_reads.py`` runs every decider and
    renderer over a recording view of the pod and fails on a read not declared here):

    - the workload, derived in ``webhook.workload``: its kind (in the key), its name (put
      into a shared patch per request where the flavour names it, ``reads_workload``; the
      whole key otherwise), its observed usage (a workload with usage is decided on its
      own), its lifecycle (the owners' kinds), its protocol (the Services that select its
      labels) and the VerticalPodAutoscaler that targets it;
    - the labels in ``labels_read``, by value, and whether the pod has labels at all;
    - the pod's values of every label an injection may write (the patch is a diff against
      them, see ``WRITTEN_LABELS``).

    The shape's key (``Shape.key``) is these facts with the template's shape for the
    template: what ``_shaped_spec`` and ``_shaped_annotations`` leave of it
    (``tests/test_shapes.py`` decides every golden case again with those values changed
    and with them recording their readers).
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
    vpa = autoscaler_for(snapshot, workload)
    facts = [
        "template",
        (workload.kind if aliasable(meta, workload.name) else tuple(workload[1:]))
        if plane.reads_workload
        else None,
        namespace,
        assume_opt_in,
        has_labels,
        [labels.get(name) for name in labels_read(plane)],
        {k: v for k, v in labels.items() if k in WRITTEN_LABELS or k.startswith(WRITTEN_PREFIXES)},
        protocol_from_services(snapshot.services.get(namespace, ()), labels),
        [vpa.name, vpa.update_mode, vpa.mode_for(plane.proxy_name)] if vpa is not None else None,
        [[o.get("kind"), o.get("controller")] for o in owners if isinstance(o, dict)]
        if isinstance(owners, list)
        else owners,
        {k: v for k, v in meta.items() if k not in IDENTITY},
        {k: v for k, v in obj.items() if k != "metadata"},
    ]
    try:
        data = orjson.dumps(facts)
    except TypeError:
        return None
    shape = Shape(facts, plane.ports) if plane.shapes and shapeable(meta) else None
    return data, len(data), workload, shape


class Shape:
    """The key of a template's shape, made when asked: a template seen before is found by
    its own key first, and a pod of a workload or a template seen before never pays for it."""

    __slots__ = ("compared", "facts")

    def __init__(self, facts: list[Any], compared: tuple[int, ...]) -> None:
        self.facts = facts
        self.compared = compared

    def key(self) -> tuple[bytes, int] | None:
        """(the shape's key, its size); None where it cannot be serialised."""
        facts = self.facts
        own, rest = facts[-2], facts[-1]
        if "annotations" in own:
            own = {**own, "annotations": _shaped_annotations(own["annotations"])}
        if "spec" in rest:
            rest = {**rest, "spec": _shaped_spec(rest["spec"], self.compared)}
        try:
            data = orjson.dumps(["shape", *facts[1:-2], own, rest])
        except TypeError:
            return None
        return data, len(data)


# The workload name a shared template is decided with; each request's own name replaces it.
ALIAS = "0-mesh-injector-workload-0"

ALIAS_JSON = ALIAS.encode()


def aliasable(meta: object, name: str) -> bool:
    """A first injection: the patch only adds, so putting the name into a shared patch is
    exact. A re-injection is diffed against names already in the pod, and a name too long
    for a label value is shortened where a flavour writes it: both decided per workload."""
    if len(name) > LABEL_VALUE_MAX:
        return False
    return not isinstance(meta, dict) or shapeable(meta)


# What the key of a shape holds in place of a value the decision does not read, or of a
# port's number it reads only through the flavour's ``ports_text``.
SHAPED = "\x00shaped"
# The annotation domains a decision reads: the meshes', ours and Kubernetes' (Pod Security's
# AppArmor and seccomp annotations, kubectl's default container). An annotation of any other
# domain is the user's own (a build number, a config checksum) and is never read.
READ_DOMAINS = ("linkerd.io", "istio.io", "mesh-injector.io", "kubernetes.io", "k8s.io")
# A token that takes the place of one unread value while a shape is decided; one that
# reaches the outcome keeps the shape from being shared.
TOKEN = "\x00mesh-injector-shape-"
TOKEN_JSON = orjson.dumps(TOKEN)[1:-1]


def shapeable(meta: Mapping[str, Any]) -> bool:
    """A first injection (the patch only adds): a re-injection is a diff against what an
    earlier one wrote, which may be made of the pod's values."""
    annotations = meta.get("annotations")
    return not (isinstance(annotations, dict) and ANN_STATUS in annotations)


def unread_annotation(key: object) -> bool:
    """An annotation of a domain no part of the decision reads (``READ_DOMAINS``)."""
    if type(key) is not str:
        return False
    domain, slash, _ = key.rpartition("/")
    return bool(slash and domain) and not domain.endswith(READ_DOMAINS)


def _shaped_annotations(annotations: object) -> object:
    if not isinstance(annotations, dict):
        return annotations
    return {k: SHAPED if type(v) is str and unread_annotation(k) else v for k, v in annotations.items()}


def _shaped_spec(spec: object, compared: tuple[int, ...]) -> object:
    if not isinstance(spec, dict):
        return spec
    out = dict(spec)
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if isinstance(items, list):
            out[key] = [_shaped_container(c, compared) if type(c) is dict else c for c in items]
    return out


def _shaped_container(c: dict[str, Any], compared: tuple[int, ...]) -> dict[str, Any]:
    """The container without its image, its variables' values and the numbers of its ports
    (but those the decision compares: the proxy's own, and Merbridge's listener)."""
    out = dict(c)
    if type(c.get("image")) is str:
        out["image"] = SHAPED
    env = c.get("env")
    if type(env) is list:
        # a variable of a name and a value, as nearly all are, by its name alone
        out["env"] = [
            (SHAPED, e["name"])
            if type(e) is dict and len(e) == 2 and type(e.get("value")) is str and "name" in e
            else {**e, "value": SHAPED}
            if type(e) is dict and type(e.get("value")) is str
            else e
            for e in env
        ]
    ports = c.get("ports")
    if type(ports) is list:
        out["ports"] = [
            {**p, "containerPort": SHAPED}
            if type(p) is dict
            and type(p.get("containerPort")) is int
            and p["containerPort"] not in compared
            and p["containerPort"] != REDIRECTOR_PORT
            else p
            for p in ports
        ]
    return out


def tokenised(request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` with a token of its own in place of each value its shape leaves out, but
    the ports' numbers: the shape is decided with the first pod's, and what the rendering
    makes of them is put in per request."""
    obj = request["object"]
    tokens = (f"{TOKEN}{i}" for i in range(1 << 30))
    meta = dict(obj["metadata"])
    if isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {
            k: next(tokens) if type(v) is str and unread_annotation(k) else v
            for k, v in meta["annotations"].items()
        }
    out = {**obj, "metadata": meta}
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec = out["spec"] = dict(spec)
        for key in ("containers", "initContainers"):
            items = spec.get(key)
            if isinstance(items, list):
                spec[key] = [_tokened(c, tokens) if type(c) is dict else c for c in items]
    return {**request, "object": out}


def _tokened(c: dict[str, Any], tokens: Iterator[str]) -> dict[str, Any]:
    out = dict(c)
    if type(c.get("image")) is str:
        out["image"] = next(tokens)
    if type(c.get("env")) is list:
        out["env"] = [
            {**e, "value": next(tokens)} if type(e) is dict and type(e.get("value")) is str else e
            for e in c["env"]
        ]
    return out


def tokens_in(outcome: Outcome, text: bytes) -> bool:
    """Whether a token reached ``outcome`` (``text``: its patch's JSON)."""
    return TOKEN_JSON in text or any(TOKEN in w for w in outcome.warnings)


_Path = tuple[str | int, ...]
Edit = tuple[_Path, str, str]  # (path to a string, what in it, what for)


class Reprint(Protocol):
    """Where a shared patch holds what the rendering made of its first pod's ports."""

    def edits(self, obj: Mapping[str, Any]) -> list[Edit] | None:
        """What to put in for ``obj``'s ports ([] when they make the same text); None where
        they cannot be put in (the pod is decided on its own)."""
        ...


def alias_paths(patch: Patch, text: bytes) -> list[_Path]:
    """Where in a patch the stand-in name occurs (paths to the strings holding it). ``text``
    is the patch's JSON: it says how often the name occurs, so operations are looked into
    only until every occurrence is found, and only those whose JSON holds it."""
    left = text.count(ALIAS_JSON)
    out: list[_Path] = []
    for i, op in enumerate(patch):
        if left <= 0:
            break
        found = orjson.dumps(op).count(ALIAS_JSON)
        if found:
            out += holding(op, ALIAS, (i,))
            left -= found
    return out


def holding(node: object, part: str, path: _Path = ()) -> list[_Path]:
    """The paths to the strings in ``node`` that hold ``part``. A subtree is only walked when
    its JSON holds it (orjson is far faster than walking it)."""
    if isinstance(node, str):
        return [path] if part in node else []
    if not isinstance(node, dict | list) or orjson.dumps(part)[1:-1] not in orjson.dumps(node):
        return []
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in holding(v, part, (*path, k))]
    return [p for i, v in enumerate(node) for p in holding(v, part, (*path, i))]


def put_name(patch: Patch, paths: tuple[_Path, ...], name: str) -> Patch:
    """``patch`` with ``name`` for the stand-in: only the dicts and lists on the way to each
    string are copied; the rest is shared with the memo's patch (which is never modified)."""
    return put(patch, [(path, ALIAS, name) for path in paths])


def put(patch: Patch, edits: list[Edit]) -> Patch:
    """``patch`` with each edit's string replaced in the string at its path: only the dicts
    and lists on the way are copied; the rest is shared with the memo's patch."""
    root: list[Any] = list(patch)
    copies: dict[_Path, Any] = {(): root}
    for path, old, new in edits:
        node: Any = root
        for depth in range(1, len(path)):
            prefix = path[:depth]
            copied = copies.get(prefix)
            if copied is None:
                child = node[path[depth - 1]]
                copied = copies[prefix] = dict(child) if isinstance(child, dict) else list(child)
                node[path[depth - 1]] = copied
            node = copied
        node[path[-1]] = node[path[-1]].replace(old, new)
    return root


class Entry:
    """A memoised outcome. For a flavour that names the workload, its patch holds the
    stand-in name at ``paths``; each request gets its own name put in. For a shape, what the
    rendering made of the first pod's ports is put in again for each pod's (``ports``). The
    last patch made is kept: a ReplicaSet's pods arrive together."""

    __slots__ = ("last", "light", "paths", "policy", "ported", "ports")

    def __init__(
        self, policy: Policy, light: Outcome, paths: tuple[_Path, ...], ports: Reprint | None = None
    ) -> None:
        self.policy = policy
        self.light = light
        self.paths = paths
        self.ports = ports
        self.ported: tuple[list[Edit], Patch] | None = None  # the last ports' edits, made
        self.last: tuple[str, Patch, Patch] | None = None  # the last name, put into that

    def edits(self, obj: Mapping[str, Any]) -> list[Edit] | None:
        """What to put into the patch for ``obj``'s ports; None where they cannot be put in."""
        return [] if self.ports is None else self.ports.edits(obj)

    def serve(
        self,
        detail: Callable[[], Detail],
        workload: WorkloadKey | None,
        obj: Mapping[str, Any],
        edits: list[Edit] | None = None,
    ) -> Outcome | None:
        """The outcome for a pod of this entry (``edits``: its ``edits``, where known); None
        where its ports cannot be put in. A template's ports are put in once for its pods,
        and each workload's name into that."""
        if edits is None:
            edits = self.edits(obj)
            if edits is None:
                return None
        patch = self.light.patch
        if edits:
            ported = self.ported
            if ported is None or ported[0] != edits:
                ported = self.ported = (edits, put(patch, edits))
            patch = ported[1]
        if not self.paths or workload is None:
            if patch is self.light.patch:
                return served(self.light, detail, workload)
            return clone(self.light, detail=detail, workload=workload, patch=patch)
        last = self.last
        if last is None or last[0] != workload.name or last[1] is not patch:
            named = [(path, ALIAS, workload.name) for path in self.paths]
            last = self.last = (workload.name, patch, put(patch, named))
        return clone(self.light, detail=detail, workload=workload, patch=last[2])


class Unshared:
    """A shape whose decision cannot be shared (a token reached it, or its ports cannot be
    put in): its pods are keyed by their whole template."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
