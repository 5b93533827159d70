"""Which nodes an unscheduled pod may land on.

This mirrors the scheduler's hard filters that decide feasibility from the pod spec alone:
``spec.nodeName``; ``nodeSelector``; required node affinity (terms ORed, expressions and
fields ANDed inside a term; ``In``, ``NotIn``, ``Exists``, ``DoesNotExist``, ``Gt``,
``Lt``; ``matchFields`` on ``metadata.name``); ``NoSchedule``/``NoExecute`` taints the pod
does not tolerate; cordoned nodes, unless the pod tolerates
``node.kubernetes.io/unschedulable:NoSchedule`` (as the NodeUnschedulable filter asks; the
DaemonSet controller gives daemon pods that toleration). Resource fit and pod (anti-)affinity are not
considered: they change minute to minute, and the lowest kernel over a superset is the
safe answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, Node, NodeGroup, RedirectorState, RuntimeClass, Taint

_HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
# What the scheduler's NodeUnschedulable filter asks of a pod for a cordoned node: to
# tolerate this taint (the DaemonSet controller gives every daemon pod that toleration).
CORDON = Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")
_INT64 = re.compile(r"[+-]?[0-9]+")
_SAMPLE = 3


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str
    operator: str
    value: str
    effect: str

    def tolerates(self, taint: Taint) -> bool:
        """Kubernetes' rule (``Toleration.ToleratesTaint``): an empty effect or key matches
        any; ``Exists`` any value, ``Equal`` (the default) the same value; any other
        operator nothing."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator == "Equal" and self.value == taint.value


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt") and value is not None and len(self.values) == 1:
            have, want = _int64(value), _int64(self.values[0])
            if have is None or want is None:
                return False
            return have > want if op == "Gt" else have < want
        return False


def _int64(text: str) -> int | None:
    """A label value as Kubernetes reads it for Gt/Lt (Go's strconv.ParseInt(text, 10, 64)):
    Python's int() would also take "7_0" or " 7", which no node matches."""
    if _INT64.fullmatch(text) is None:
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


@dataclass(frozen=True, slots=True)
class Term:
    """One nodeSelectorTerm (or the pod's nodeSelector): everything inside must hold."""

    labels: tuple[Requirement, ...]
    names: tuple[Requirement, ...]  # matchFields on metadata.name, as a label "name"

    def per_node(self, identity: frozenset[str]) -> bool:
        return bool(self.names) or any(r.key in identity for r in self.labels)

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        for r in self.labels:  # a plain loop: this runs once per node group per pod
            if not r.matches(labels):
                return False
        return True

    def matches_node(self, node: Node) -> bool:
        named = {"name": node.name}
        return self.matches_labels(node.labels) and all(r.matches(named) for r in self.names)

    def candidates(self, snapshot: ClusterSnapshot) -> list[Node] | None:
        """The few nodes an ``In`` on a host name or identity label can match, else None."""
        best: list[Node] | None = None
        for r in self.names:
            if r.operator == "In":
                found = [snapshot.nodes[v] for v in r.values if v in snapshot.nodes]
                best = found if best is None or len(found) < len(best) else best
        for r in self.labels:
            if r.operator == "In" and r.key in snapshot.identity_labels:
                found = [n for v in r.values for n in snapshot.identity_index.get((r.key, v), ())]
                best = found if best is None or len(found) < len(best) else best
        return best


@dataclass(frozen=True, slots=True)
class Platform:
    """Eligible nodes that report the same OS image, kubelet and kernel: what says which
    firewall backends their kernel has."""

    os_image: str | None
    kubelet: str | None
    kernel: str | None
    count: int
    names: tuple[str, ...]  # the first few of them

    def describe(self) -> str:
        more = f" and {self.count - len(self.names)} more" if self.count > len(self.names) else ""
        what = ", ".join(
            f"{key} {value}"
            for key, value in (("osImage", self.os_image), ("kubelet", self.kubelet), ("kernel", self.kernel))
            if value
        )
        return f"{', '.join(self.names)}{more} ({what or 'no nodeInfo'})"


@dataclass(frozen=True)
class Eligibility:
    """The nodes a pod may land on, reduced to what the decisions need."""

    count: int
    total: int
    sample: tuple[str, ...]
    kernels: frozenset[str | None]
    kubelets: frozenset[str | None]
    basis: str
    excluded: Mapping[str, int] = field(default_factory=dict)
    # the redirector's states among them: (state or None for none, how many nodes, one of them)
    redirectors: tuple[tuple[RedirectorState | None, int, str], ...] = ()
    # their distinct OS images, kubelets and kernels, with how many nodes and which
    platforms: tuple[Platform, ...] = ()
    # what the decision derives from these nodes and a part of the policy, kept with them (an
    # Eligibility is memoised per scheduling constraints, so this is worked out once for all
    # the pods that share them): (what, the policy's part) -> the result
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def _requirements(exprs: object) -> tuple[Requirement, ...] | None:
    if exprs is None:
        return ()
    if not isinstance(exprs, list):
        return None
    out = []
    for e in exprs:
        if not isinstance(e, dict) or not isinstance(e.get("key"), str):
            return None
        values = e.get("values") or []
        out.append(
            Requirement(
                key=e["key"],
                operator=str(e.get("operator", "")),
                values=tuple(str(v) for v in values) if isinstance(values, list) else (),
            )
        )
    return tuple(out)


def _terms(spec: Mapping[str, Any]) -> list[Term] | None:
    """The required affinity's terms; None when the pod has no required node affinity."""
    affinity: Any = spec
    for key in ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"):
        affinity = affinity.get(key) if isinstance(affinity, dict) else None
    if not isinstance(affinity, dict):
        return None
    terms = []
    raw_terms = affinity.get("nodeSelectorTerms")
    for raw in raw_terms if isinstance(raw_terms, list) else ():
        if not isinstance(raw, dict):
            continue
        labels = _requirements(raw.get("matchExpressions"))
        fields = _requirements(raw.get("matchFields"))
        if labels is None or fields is None or not (labels or fields):
            continue  # an empty or malformed term matches no node
        if any(f.key != "metadata.name" for f in fields):
            continue  # metadata.name is the only supported field; others match nothing
        names = tuple(Requirement("name", f.operator, f.values) for f in fields)
        terms.append(Term(labels=labels, names=names))
    return terms


def _tolerations(spec: Mapping[str, Any]) -> list[Toleration]:
    out = []
    raw = spec.get("tolerations")
    for t in raw if isinstance(raw, list) else ():
        if isinstance(t, dict):
            out.append(
                Toleration(
                    key=str(t.get("key") or ""),
                    operator=str(t.get("operator") or "Equal"),
                    value=str(t.get("value") or ""),
                    effect=str(t.get("effect") or ""),
                )
            )
    return out


def _tolerated(taints: Iterable[Taint], tolerations: Sequence[Toleration]) -> bool:
    for taint in taints:
        if taint.effect in _HARD_EFFECTS and not any(t.tolerates(taint) for t in tolerations):
            return False
    return True


def _summarize(
    picked: list[tuple[NodeGroup, Sequence[Node]]], total: int, basis: str, excluded: Mapping[str, int]
) -> Eligibility:
    sample: list[str] = []
    kernels: set[str | None] = set()
    kubelets: set[str | None] = set()
    agents: dict[RedirectorState | None, list[Any]] = {}
    platforms: dict[tuple[str | None, str | None, str | None], list[Any]] = {}
    count = 0
    for group, nodes in picked:
        if not nodes:
            continue
        count += len(nodes)
        kernels.add(group.kernel)
        kubelets.add(group.kubelet)
        seen = agents.setdefault(group.redirector, [0, nodes[0].name])
        seen[0] += len(nodes)
        for n in nodes[: _SAMPLE - len(sample)]:
            sample.append(n.name)
        platform = platforms.get((group.os_image, group.kubelet, group.kernel))
        if platform is None:
            platforms[(group.os_image, group.kubelet, group.kernel)] = [len(nodes), nodes[:_SAMPLE]]
        else:
            platform[0] += len(nodes)
            if len(platform[1]) < _SAMPLE:
                platform[1] = [*platform[1], *nodes[: _SAMPLE - len(platform[1])]]
    return Eligibility(
        count=count,
        total=total,
        sample=tuple(sample),
        kernels=frozenset(kernels),
        kubelets=frozenset(kubelets),
        basis=basis,
        excluded={k: v for k, v in excluded.items() if v},
        redirectors=tuple((state, n, first) for state, (n, first) in agents.items()),
        platforms=tuple(
            Platform(image, kubelet, kernel, n, tuple(node.name for node in first))
            for (image, kubelet, kernel), (n, first) in platforms.items()
        ),
    )


def _candidates_by_group(snapshot: ClusterSnapshot, terms: Sequence[Term]) -> dict[int, list[Node]] | None:
    """Per group, the only nodes the per-node ``terms`` (ORed) can match; None to scan all."""
    seen: dict[str, Node] = {}
    for term in terms:
        found = term.candidates(snapshot)
        if found is None:
            return None
        for node in found:
            seen[node.name] = node
    by_group: dict[int, list[Node]] = {}
    for name, node in seen.items():
        by_group.setdefault(snapshot.group_of[name], []).append(node)
    return by_group


def _memo_key(spec: Mapping[str, Any]) -> bytes | None:
    parts = [
        spec.get("nodeName"),
        spec.get("nodeSelector"),
        (spec.get("affinity") or {}).get("nodeAffinity") if isinstance(spec.get("affinity"), dict) else None,
        spec.get("tolerations"),
    ]
    try:
        return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON data (cannot come from the API server); just skip the memo
        return None


def eligible_nodes(snapshot: ClusterSnapshot, spec: Mapping[str, Any]) -> Eligibility:
    """Eligibility for ``spec``, memoised on the snapshot: a workload's pods share it."""
    key = _memo_key(spec)
    if key is not None:
        hit = snapshot.memo.get(key)
        if isinstance(hit, Eligibility):
            return hit
    result = _eligible(snapshot, spec)
    if key is not None:
        # an Eligibility is well under 1 KiB, but for its platforms (a few hundred bytes each)
        snapshot.memo.put(key, result, len(key) + 1024 + 256 * len(result.platforms))
    return result


def _eligible(snapshot: ClusterSnapshot, spec: Mapping[str, Any]) -> Eligibility:
    total = len(snapshot.nodes)
    node_name = spec.get("nodeName")
    if isinstance(node_name, str) and node_name:
        node = snapshot.nodes.get(node_name)
        if node is None:
            return _summarize([], total, f"spec.nodeName {node_name} (not in the snapshot)", {})
        agent = snapshot.redirectors.get(node.name)
        group = NodeGroup(
            node.labels,
            node.taints,
            node.unschedulable,
            node.kernel,
            node.kubelet,
            (node,),
            agent[0] if agent is not None else None,
            node.os_image,
        )
        return _summarize([(group, (node,))], total, f"spec.nodeName {node_name}", {})

    selector = spec.get("nodeSelector")
    selector_term = Term(
        labels=tuple(
            Requirement(str(k), "In", (str(v),))
            for k, v in (selector if isinstance(selector, dict) else {}).items()
        ),
        names=(),
    )
    terms = _terms(spec)
    tolerations = _tolerations(spec)
    identity = snapshot.identity_labels
    sel_per_node = selector_term.per_node(identity)
    group_terms = [t for t in terms or () if not t.per_node(identity)]
    node_terms = [t for t in terms or () if t.per_node(identity)]

    node_cands = _candidates_by_group(snapshot, node_terms) if node_terms else None
    sel_cands = _candidates_by_group(snapshot, [selector_term]) if sel_per_node else None
    excluded = {"cordoned": 0, "untolerated taints": 0, "selector or affinity": 0}
    picked: list[tuple[NodeGroup, Sequence[Node]]] = []
    cordons_tolerated = any(t.tolerates(CORDON) for t in tolerations)
    for gi, group in enumerate(snapshot.groups):
        size = len(group.nodes)
        if group.unschedulable and not cordons_tolerated:
            excluded["cordoned"] += size
            continue
        if not _tolerated(group.taints, tolerations):
            excluded["untolerated taints"] += size
            continue
        if not sel_per_node and not selector_term.matches_labels(group.labels):
            excluded["selector or affinity"] += size
            continue
        if terms is None or any(t.matches_labels(group.labels) for t in group_terms):
            members: Sequence[Node] = group.nodes
        elif not node_terms:
            members = []
        else:
            pool = group.nodes if node_cands is None else node_cands.get(gi, ())
            members = [n for n in pool if any(t.matches_node(n) for t in node_terms)]
        if sel_per_node:
            if sel_cands is not None and members is group.nodes:
                members = sel_cands.get(gi, [])
            members = [n for n in members if selector_term.matches_labels(n.labels)]
        excluded["selector or affinity"] += size - len(members)
        picked.append((group, members))

    constraints = [
        name
        for name, present in (
            ("nodeSelector", bool(selector_term.labels)),
            ("required node affinity", terms is not None),
            ("tolerations", bool(tolerations)),
        )
        if present
    ]
    basis = "taints and cordons" + ("" if not constraints else ", " + ", ".join(constraints))
    if cordons_tolerated and any(g.unschedulable for g in snapshot.groups):
        basis += " (cordoned nodes too: the pod tolerates node.kubernetes.io/unschedulable)"
    return _summarize(picked, total, basis, excluded)


# --- the RuntimeClass a pod names -----------------------------------------------------


def merged_spec(spec: Mapping[str, Any], rc: RuntimeClass) -> tuple[dict[str, Any] | None, str | None]:
    """``spec`` with the RuntimeClass's scheduling merged as the API server merges it, or why
    the API server would refuse the pod (a node selector that contradicts the class's)."""
    out = dict(spec)
    if rc.node_selector:
        own = spec.get("nodeSelector") if isinstance(spec.get("nodeSelector"), dict) else {}
        for key, value in rc.node_selector.items():
            if key in own and own[key] != value:
                return None, (
                    f"the pod's nodeSelector {key}={own[key]} contradicts "
                    f"RuntimeClass {rc.name}'s {key}={value}"
                )
        out["nodeSelector"] = {**own, **rc.node_selector}
    if rc.tolerations:
        own_tol = spec.get("tolerations") if isinstance(spec.get("tolerations"), list) else []
        out["tolerations"] = [*own_tol, *rc.tolerations]
    return out, None


def nodes_spec(spec: Mapping[str, Any], snapshot: ClusterSnapshot) -> Mapping[str, Any]:
    """What decides where a pod may land: its spec, with the scheduling of the RuntimeClass it
    names merged in as the API server's RuntimeClass admission does (it has already run when a
    webhook sees the pod; a manifest given to the dry-run has not been through it)."""
    name = spec.get("runtimeClassName")
    rc = snapshot.runtime_classes.get(name) if isinstance(name, str) else None
    if rc is None:
        return spec
    merged, _ = merged_spec(spec, rc)
    return merged if merged is not None else spec
