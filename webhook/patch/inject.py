"""Placing a flavour's data plane in a pod, recording what was added, and taking it off again.

Mutation works on a *shallow* copy: only the dicts and lists on the way to what changes
are copied (metadata, its labels and annotations, spec and its three lists). A user
container is changed only where a flavour takes over its probes (Istio), and then as a
copy; the untouched parts (``managedFields`` included) stay the very same objects, which
keeps the diff fast and exact.

Placement is ours in every flavour: native sidecar -> the flavour's init containers, the
proxy, then the pod's own init containers; legacy -> the proxy first in ``containers`` and
the flavour's init containers after the pod's own. The status annotation lists every
container, volume, label and annotation added, the RuntimeClass set, the probes a flavour
replaced and the pod's own label and annotation values it overwrote, so re-injection (also
after a change of flavour) strips exactly those, puts the originals back and touches
nothing else of the user's. A label or annotation the pod already had with the value we
would write stays the pod's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook import __version__
from webhook.dataplane import PROXY_NAMES, Build, Flavour
from webhook.policy import Policy

PREFIX = "mesh-injector.io/"
ANN_STATUS = PREFIX + "status"
ANN_DECISION = PREFIX + "decision"
ANN_SOURCE = PREFIX + "proxy-resources-source"
ANN_SKIP = PREFIX + "skip-reason"
LABEL_MODE = PREFIX + "interception"
WRITTEN_ANNOTATIONS = (ANN_STATUS, ANN_DECISION, ANN_SOURCE, ANN_SKIP)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything the pod gains: the flavour's data plane rendered from ``build``, what the
    interception mode adds beside it (annotations its mechanism reads, the RuntimeClass),
    and the decision annotation."""

    flavour: Flavour
    build: Build
    decision: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    runtime_class: str | None = None


def shallow_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(pod)
    meta = dict(out.get("metadata") or {})
    for key in ("labels", "annotations"):
        if isinstance(meta.get(key), dict):
            meta[key] = dict(meta[key])
    out["metadata"] = meta
    spec = dict(out.get("spec") or {})
    for key in ("containers", "initContainers", "volumes"):
        if isinstance(spec.get(key), list):
            spec[key] = list(spec[key])
    out["spec"] = spec
    return out


def container_names(spec: Mapping[str, Any], key: str) -> list[str]:
    items = spec.get(key)
    return [c.get("name") for c in items if isinstance(c, dict)] if isinstance(items, list) else []


def present_proxy(pod: Mapping[str, Any]) -> str | None:
    """The name of a proxy container the pod already carries (any flavour's), if any."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for name in container_names(spec, key):
            if name in PROXY_NAMES:
                return name
    return None


def read_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANN_STATUS)
    if not isinstance(raw, str):
        return None
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return status if isinstance(status, dict) else None


def _drop_named(spec: dict[str, Any], key: str, names: object) -> None:
    if not isinstance(names, list) or not isinstance(spec.get(key), list):
        return
    kept = [c for c in spec[key] if not (isinstance(c, dict) and c.get("name") in names)]
    if len(kept) == len(spec[key]):
        return
    if kept:
        spec[key] = kept
    else:
        del spec[key]


def strip(pod: dict[str, Any], status: Mapping[str, Any] | None) -> None:
    """Take off, in place on a shallow copy, everything a previous injection wrote."""
    meta = pod["metadata"]
    added = status or {}
    for key, names in (
        ("annotations", (*WRITTEN_ANNOTATIONS, *_names(added.get("annotations")))),
        ("labels", (LABEL_MODE, *_names(added.get("labels")))),
    ):
        values = meta.get(key)
        if isinstance(values, dict) and any(n in values for n in names):
            for n in names:
                values.pop(n, None)
            if not values:
                del meta[key]
    if status is not None:
        spec = pod["spec"]
        _drop_named(spec, "containers", status.get("containers"))
        _drop_named(spec, "initContainers", status.get("initContainers"))
        _drop_named(spec, "volumes", status.get("volumes"))
        _put_back_probes(spec, status.get("probes"))
        _put_back_values(meta, status.get("replaced"))
        runtime = status.get("runtimeClassName")
        if isinstance(runtime, str) and spec.get("runtimeClassName") == runtime:
            del spec["runtimeClassName"]


def _take_probes(spec: dict[str, Any], probes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Put the flavour's probes in the pod's own containers (copies of them); the probes
    they replace, by container and field, for the status (so that they can be put back)."""
    taken: dict[str, dict[str, Any]] = {}
    if not probes:
        return taken
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            new = probes.get(c.get("name")) if isinstance(c, dict) else None
            if new:
                items[i] = {**c, **new}
                taken[c["name"]] = {field: c[field] for field in new}
    return taken


def _put_back_probes(spec: dict[str, Any], taken: object) -> None:
    """The probes a previous injection replaced, back in their containers (copies)."""
    if not isinstance(taken, dict):
        return
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            old = taken.get(c.get("name")) if isinstance(c, dict) else None
            if isinstance(old, dict):
                items[i] = {**c, **old}


def _put_back_values(meta: dict[str, Any], replaced: object) -> None:
    """The pod's own labels and annotations that an injection overwrote, back as they were."""
    if not isinstance(replaced, dict):
        return
    for key in ("labels", "annotations"):
        values = replaced.get(key)
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(name, str) and isinstance(value, str):
                    _set(meta, key, name, value)


def _names(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _set(meta: dict[str, Any], key: str, name: str, value: str) -> None:
    values = meta.get(key)
    if not isinstance(values, dict):
        values = meta[key] = {}
    values[name] = value


def mark_skipped(pod: dict[str, Any], text: str) -> None:
    _set(pod["metadata"], "annotations", ANN_SKIP, text)


def apply_plan(pod: dict[str, Any], plan: Plan, policy: Policy) -> dict[str, Any]:
    """Add the flavour's data plane to a shallow copy, with the annotations that explain it;
    the status it wrote (the names of everything added)."""
    spec = pod["spec"]
    meta = pod["metadata"]
    plane = plan.flavour.render(plan.build, pod, policy)
    proxy = plane.proxy
    init = list(plane.inits)
    inits = list(spec.get("initContainers") or [])
    containers = list(spec.get("containers") or [])
    if plan.build.native:
        spec["initContainers"] = [*init, proxy, *inits]
        added_containers: list[str] = []
        added_inits = [c["name"] for c in (*init, proxy)]
    else:
        spec["containers"] = [proxy, *containers]
        if init or inits:
            spec["initContainers"] = [*inits, *init]
        added_containers = [proxy["name"]]
        added_inits = [c["name"] for c in init]
    spec["volumes"] = [*(spec.get("volumes") or []), *plane.volumes]
    taken = _take_probes(spec, plane.probes)
    added: dict[str, list[str]] = {"labels": [], "annotations": []}
    replaced: dict[str, dict[str, str]] = {}
    for key, always, defaults in (
        ("labels", plane.labels, plane.default_labels),
        ("annotations", {**plane.annotations, **plan.annotations}, plane.default_annotations),
    ):
        present = dict(meta[key]) if isinstance(meta.get(key), dict) else {}
        for name, value in always.items():
            own = present.get(name)
            if own == value:
                continue  # the pod's own value, left as the pod's
            if isinstance(own, str):
                replaced.setdefault(key, {})[name] = own
            _set(meta, key, name, value)
            added[key].append(name)
        for name, value in defaults.items():
            if name not in present:
                _set(meta, key, name, value)
                added[key].append(name)
    runtime_class = plan.runtime_class if not spec.get("runtimeClassName") else None
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    status = {
        "version": __version__,
        "flavour": plan.flavour.name,
        "mode": plan.build.mode.value,
        "nativeSidecar": plan.build.native,
        "containers": added_containers,
        "initContainers": added_inits,
        "volumes": [v["name"] for v in plane.volumes],
        "labels": sorted(added["labels"]),
        "annotations": sorted(added["annotations"]),
    }
    if taken:
        status["probes"] = taken
    if replaced:
        status["replaced"] = replaced
    if runtime_class:
        status["runtimeClassName"] = runtime_class
    _set(meta, "annotations", ANN_STATUS, orjson.dumps(status, option=orjson.OPT_SORT_KEYS).decode())
    _set(meta, "annotations", ANN_DECISION, plan.decision)
    _set(meta, "annotations", ANN_SOURCE, plan.build.resources.source.value)
    _set(meta, "labels", LABEL_MODE, plan.build.mode.value)
    return status
