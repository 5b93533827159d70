"""Memoised outcomes: the keys pods share an outcome under, and the entries kept.

An outcome depends only on the pod, its namespace and the (immutable) snapshot and
policy, so it is kept on the snapshot: by the pod's template (pods that differ only in
names, owners and labels; a ReplicaSet's identical pods among them) or, for a workload
sized from its own observed usage, by the whole object. A flavour that names the
workload on the pod is decided once with a stand-in name (``ALIAS``) and each request's
own name is put into the shared patch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import ANN_STATUS, LABEL_MODE
from webhook.dataplane import FLAVOURS, flavour, others
from webhook.dataplane.base import LABEL_VALUE_MAX, Flavour
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
) -> tuple[bytes, int, WorkloadKey] | None:
    """The key under which pods that differ only in identity share one outcome, its JSON
    size, and this pod's workload; None when that cannot be shared.

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
    return data, len(data), workload


# The workload name a shared template is decided with; each request's own name replaces it.
ALIAS = "0-mesh-injector-workload-0"

ALIAS_JSON = ALIAS.encode()


def aliasable(meta: object, name: str) -> bool:
    """A first injection: the patch only adds, so putting the name into a shared patch is
    exact. A re-injection is diffed against names already in the pod, and a name too long
    for a label value is shortened where a flavour writes it: both decided per workload."""
    if len(name) > LABEL_VALUE_MAX:
        return False
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return not (isinstance(annotations, dict) and ANN_STATUS in annotations)


_Path = tuple[str | int, ...]


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
            out += _paths(op, (i,))
            left -= found
    return out


def _paths(node: object, path: _Path) -> list[_Path]:
    """A subtree is only walked when its JSON holds the name (orjson is far faster than
    walking it)."""
    if isinstance(node, str):
        return [path] if ALIAS in node else []
    if not isinstance(node, dict | list) or ALIAS_JSON not in orjson.dumps(node):
        return []
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _paths(v, (*path, k))]
    return [p for i, v in enumerate(node) for p in _paths(v, (*path, i))]


def put_name(patch: Patch, paths: tuple[_Path, ...], name: str) -> Patch:
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
        node[path[-1]] = node[path[-1]].replace(ALIAS, name)
    return root


class Entry:
    """A memoised outcome. For a flavour that names the workload, its patch holds the
    stand-in name at ``paths``; each request gets its own name put in (and the last name
    with its patch is kept: a ReplicaSet's pods arrive together)."""

    __slots__ = ("last", "light", "paths", "policy")

    def __init__(self, policy: Policy, light: Outcome, paths: tuple[_Path, ...]) -> None:
        self.policy = policy
        self.light = light
        self.paths = paths
        self.last: tuple[str, Patch] | None = None

    def serve(self, detail: Callable[[], Detail], workload: WorkloadKey | None) -> Outcome:
        if not self.paths or workload is None:
            return served(self.light, detail, workload)
        last = self.last
        if last is None or last[0] != workload.name:
            last = self.last = (workload.name, put_name(self.light.patch, self.paths, workload.name))
        return clone(self.light, detail=detail, workload=workload, patch=last[1])
