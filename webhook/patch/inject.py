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
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from webhook import __version__
from webhook.core import ANN_DECISION, ANN_SKIP, ANN_SOURCE, ANN_STATUS, LABEL_MODE, Notes
from webhook.dataplane import FLAVOURS, Build, DataPlane, Flavour
from webhook.dataplane.base import label_value
from webhook.patch.ours import OURS, Ours
from webhook.patch.prints import DEFAULTED, WORKLOAD, fingerprint, value_sum
from webhook.policy import Policy
from webhook.workload import WorkloadKey, workload_key

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
    # annotations the pod inherited from its namespace (already on the pod as decided):
    # recorded as added, so that re-injection takes them back
    inherited: tuple[str, ...] = ()
    # recorded in the status, for audit to compare with what admission would give now: the
    # iptables backend of the init container's rules (None: nothing of ours installs them)
    # and the mesh version the pod was rendered as ("": not known)
    firewall: str | None = None
    mesh_version: str = ""


def covers(got: object, want: object) -> bool:
    """``got`` is ``want`` as the API server stores it: equal, but for defaulted fields it
    may have added."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return False
        for key, value in want.items():
            if key not in got or not covers(got[key], value):
                return False
        return all(key in DEFAULTED for key in got if key not in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(covers, got, want))
    return got == want


def _is_value(recorded: object, value: object, workload: str) -> bool:
    """Whether a label or annotation value is the one recorded: as written, or naming
    this pod's workload where the recording names a workload (a template's)."""
    if not isinstance(value, str) or not isinstance(recorded, str):
        return False
    return recorded == fingerprint(value) or (
        value in (workload, label_value(workload)) and recorded == fingerprint(WORKLOAD)
    )


def shallow_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(pod)
    meta = dict(out["metadata"]) if isinstance(out.get("metadata"), dict) else {}
    for key in ("labels", "annotations"):
        if isinstance(meta.get(key), dict):
            meta[key] = dict(meta[key])
    out["metadata"] = meta
    spec = dict(out["spec"]) if isinstance(out.get("spec"), dict) else {}
    for key in ("containers", "initContainers", "volumes"):
        if isinstance(spec.get(key), list):
            spec[key] = list(spec[key])
    out["spec"] = spec
    return out


def container_names(spec: Mapping[str, Any], key: str) -> list[str]:
    items = spec.get(key)
    return [c.get("name") for c in items if isinstance(c, dict)] if isinstance(items, list) else []


def read_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANN_STATUS)
    if not isinstance(raw, str):
        return None
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return status if isinstance(status, dict) else None


def _drop_ours(
    spec: dict[str, Any],
    key: str,
    listed: tuple[str, ...],
    sums: object,
    known: frozenset[str],
) -> None:
    """Take off the items of ``spec[key]`` that the status lists, of a name we add, that are
    still as we wrote them (their fingerprints)."""
    items = spec.get(key)
    if not listed or not isinstance(items, list) or not isinstance(sums, dict):
        return

    def ours(c: object) -> bool:
        name = c.get("name") if isinstance(c, dict) else None
        return name in listed and name in known and sums.get(name) == fingerprint(c)

    kept = [c for c in items if not ours(c)]
    if len(kept) == len(items):
        return
    if kept:
        spec[key] = kept
    else:
        del spec[key]


def strip(
    pod: dict[str, Any],
    status: Mapping[str, Any] | None,
    ours: Ours,
    workload: str = "",
    take_runtime: bool = True,
) -> None:
    """Take off, in place on a shallow copy, what a previous injection wrote and is provably
    ours (see ``Ours``); the pod's own values it replaced, and its probes, go back. Our own
    annotations (``mesh-injector.io/...``) always go: they are written again."""
    meta = pod["metadata"]
    added = status or {}
    sums = added.get("sums") if isinstance(added.get("sums"), dict) else {}
    removed: dict[str, set[str]] = {}
    for key, always in (("annotations", WRITTEN_ANNOTATIONS), ("labels", (LABEL_MODE,))):
        values = meta.get(key)
        if not isinstance(values, dict):
            continue
        written = sums.get(key) if isinstance(sums.get(key), dict) else {}
        names = [
            n
            for n in _names(added.get(key))
            if ours.mark(n) and n in values and _is_value(written.get(n), values[n], workload)
        ]
        gone = {n for n in (*always, *names) if values.pop(n, None) is not None}
        if gone:
            removed[key] = gone
            if not values:
                del meta[key]
    if status is None or not sums:
        return
    spec = pod["spec"]
    for key, known in (
        ("containers", ours.containers),
        ("initContainers", ours.containers),
        ("volumes", ours.volumes),
    ):
        _drop_ours(spec, key, _names(status.get(key)), sums.get(key), known)
    _put_back_probes(spec, status.get("probes"), sums.get("probes"))
    _take_back_appended(spec, status.get("appended"), sums.get("appended"), ours.appends)
    _put_back_values(meta, status.get("replaced"), removed)
    _put_back_removed(meta, status.get("removed"))
    # runtimeClassName: its value is the one a user writes for the same sandbox
    # ("kata-qemu"), so a claim is easy to forge; admission takes it back only where the
    # decision then sets it again (see admission._admit), and keeps it otherwise
    if take_runtime and claimed_runtime(pod, status) is not None:
        del spec["runtimeClassName"]


def taken_off(
    original: Mapping[str, Any], status: Mapping[str, Any] | None, namespace: str, take_runtime: bool
) -> tuple[dict[str, Any], WorkloadKey]:
    """The pod as the user wrote it, a shallow copy of ``original`` with whatever an earlier
    injection of ours added taken off (see ``strip``), and its workload."""
    pod = shallow_pod(original)
    key = workload_key(pod, namespace)
    asked = frozenset(name for f in FLAVOURS.values() for name in f.requested_volumes(pod))
    ours = replace(OURS, volumes=OURS.volumes | asked) if asked else OURS
    strip(pod, status, ours, key.name, take_runtime=take_runtime)
    return pod, key


def claimed_runtime(pod: Mapping[str, Any], status: Mapping[str, Any] | None) -> str | None:
    """The pod's runtimeClassName where ``status`` says we set it (name and fingerprint)."""
    spec = pod.get("spec")
    runtime = spec.get("runtimeClassName") if isinstance(spec, dict) else None
    sums = (status or {}).get("sums")
    if (
        isinstance(runtime, str)
        and (status or {}).get("runtimeClassName") == runtime
        and isinstance(sums, dict)
        and sums.get("runtimeClassName") == fingerprint(runtime)
    ):
        return runtime
    return None


def _take_probes(
    spec: dict[str, Any], probes: Mapping[str, Mapping[str, Any]], had: Mapping[str, Any]
) -> dict[str, Any]:
    """Put the flavour's probes in the pod's own containers (copies of them); the probes
    they replace, by container and field, for the status (so that they can be put back).
    A probe the received pod already has as we write it (with defaults) is kept."""
    taken: dict[str, dict[str, Any]] = {}
    if not probes:
        return taken
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            new = probes.get(c.get("name")) if isinstance(c, dict) else None
            if new:
                before = had.get(c["name"]) or {}
                new = {f: before[f] if covers(before.get(f), p) else p for f, p in new.items()}
                items[i] = {**c, **new}
                taken[c["name"]] = {field: c[field] for field in new}
    return taken


PROBES = ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle")
_AGENT_PATHS = ("/app-health/", "/app-lifecycle/")


def _rewritten(probe: object) -> bool:
    """A probe an injection of ours handed to the mesh's agent (``/app-health/...``), or
    lifecycle hooks one of which it did (``/app-lifecycle/...``)."""
    if not isinstance(probe, dict):
        return False
    handlers = [probe, *(h for h in probe.values() if isinstance(h, dict))]
    return any(
        isinstance(h.get("httpGet"), dict) and str(h["httpGet"].get("path", "")).startswith(_AGENT_PATHS)
        for h in handlers
    )


def _append(
    spec: dict[str, Any], appended: Mapping[str, Mapping[str, tuple[dict[str, Any], ...]]]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Add a flavour's items to the pod's own containers' lists (copies of them), each only
    where the container has no item of that name (nor, for a mount, that path); what was
    added, by container and list."""
    added: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if not appended:
        return added
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            wanted = appended.get(c.get("name")) if isinstance(c, dict) else None
            if not wanted:
                continue
            changed = dict(c)
            for key_, new in wanted.items():
                have = changed.get(key_) if isinstance(changed.get(key_), list) else []
                names = {x.get("name") for x in have if isinstance(x, dict)}
                paths = {x.get("mountPath") for x in have if isinstance(x, dict)}
                fresh = [x for x in new if x["name"] not in names and x.get("mountPath", "") not in paths]
                if fresh:
                    changed[key_] = [*have, *fresh]
                    added.setdefault(c["name"], {})[key_] = fresh
            items[i] = changed
    return added


def _take_back_appended(
    spec: dict[str, Any], listed: object, sums: object, allowed: frozenset[tuple[str, str]]
) -> None:
    """The items an injection added to the pod's own containers' lists, taken off (copies):
    only those the status lists, of a name some flavour adds, still as we wrote them."""
    if not isinstance(listed, dict) or not isinstance(sums, dict):
        return
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            name = c.get("name") if isinstance(c, dict) else None
            fields, prints = listed.get(name), sums.get(name)
            if not isinstance(fields, dict) or not isinstance(prints, dict):
                continue
            changed = dict(c)
            for key_, names in fields.items():
                have, wrote = changed.get(key_), prints.get(key_)
                if not isinstance(have, list) or not isinstance(wrote, dict) or not isinstance(names, list):
                    continue
                kept = [x for x in have if not _appended_by_us(x, key_, names, wrote, allowed)]
                if len(kept) != len(have):
                    if kept:
                        changed[key_] = kept
                    else:
                        del changed[key_]
            items[i] = changed


def _appended_by_us(
    item: object, key: str, names: list[Any], wrote: Mapping[str, Any], allowed: frozenset[tuple[str, str]]
) -> bool:
    name = item.get("name") if isinstance(item, dict) else None
    return name in names and (key, name) in allowed and wrote.get(name) == fingerprint(item)


def _put_back_probes(spec: dict[str, Any], taken: object, sums: object) -> None:
    """The probes a previous injection replaced, back in their containers (copies): probe
    fields only, and only where the container still has the probe we wrote (one handed to
    the mesh's agent, as its fingerprint says)."""
    if not isinstance(taken, dict) or not isinstance(sums, dict):
        return
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        for i, c in enumerate(items if isinstance(items, list) else ()):
            name = c.get("name") if isinstance(c, dict) else None
            old, wrote = taken.get(name), sums.get(name)
            if isinstance(old, dict) and isinstance(wrote, dict):
                back = {
                    f: p
                    for f, p in old.items()
                    if f in PROBES and _rewritten(c.get(f)) and wrote.get(f) == fingerprint(c[f])
                }
                if back:
                    items[i] = {**c, **back}


def _put_back_values(meta: dict[str, Any], replaced: object, removed: Mapping[str, set[str]]) -> None:
    """The pod's own labels and annotations that an injection overwrote, back as they were
    (only where what it wrote over them was just taken off)."""
    if not isinstance(replaced, dict):
        return
    for key in ("labels", "annotations"):
        values = replaced.get(key)
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(name, str) and isinstance(value, str) and name in removed.get(key, ()):
                    _set(meta, key, name, value)


def _put_back_removed(meta: dict[str, Any], removed: object) -> None:
    """The pod's own annotations an injection took off (another spelling of one it set),
    back as they were, where the pod has no such annotation now."""
    values = removed.get("annotations") if isinstance(removed, dict) else None
    if not isinstance(values, dict):
        return
    for name, value in values.items():
        present = meta.get("annotations")
        if (
            isinstance(name, str)
            and isinstance(value, str)
            and not (isinstance(present, dict) and name in present)
        ):
            _set(meta, "annotations", name, value)


def _names(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _set(meta: dict[str, Any], key: str, name: str, value: str) -> None:
    values = meta.get(key)
    if not isinstance(values, dict):
        values = meta[key] = {}
    values[name] = value


def mark_skipped(pod: dict[str, Any], text: str) -> None:
    _set(pod["metadata"], "annotations", ANN_SKIP, text)


class NameCollision(ValueError):
    """The pod already has a container or volume with a name the data plane adds."""


def _collision(spec: Mapping[str, Any], plane: DataPlane) -> str | None:
    have = set(container_names(spec, "containers")) | set(container_names(spec, "initContainers"))
    for c in (*plane.inits, plane.proxy):
        if c["name"] in have:
            return f"container {c['name']}"
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for v in plane.volumes:
        if v["name"] in volumes:
            return f"volume {v['name']}"
    return None


def _as_received(rendered: dict[str, Any], received: Mapping[str, Any]) -> dict[str, Any]:
    """The received item of the same name where it is ``rendered`` as the API server stores
    it (defaults filled in): a stored pod admitted again then changes nothing."""
    got = received.get(rendered["name"])
    return got if got is not None and covers(got, rendered) else rendered


def _items(pod: Mapping[str, Any] | None, *keys: str) -> dict[str, Any]:
    spec = (pod or {}).get("spec") or {}
    return {
        c["name"]: c
        for key in keys
        for c in (spec.get(key) if isinstance(spec.get(key), list) else ())
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }


def apply_plan(
    pod: dict[str, Any],
    plan: Plan,
    policy: Policy,
    received: Mapping[str, Any] | None = None,
    ctx: Notes | None = None,
) -> dict[str, Any]:
    """Add the flavour's data plane to a shallow copy, with the annotations that explain it;
    the status it wrote (the names of everything added). ``NameCollision`` where the pod
    already has an item of a name it would add (the API server refuses duplicate names, and
    the user's item must never be taken for ours). Where ``received`` (the pod as sent)
    already holds an item as we render it, with the API server's defaults, that one is kept."""
    spec = pod["spec"]
    meta = pod["metadata"]
    plane = plan.flavour.render(plan.build, pod, policy)
    clash = _collision(spec, plane)
    if clash is not None:
        raise NameCollision(clash)
    had = _items(received, "containers", "initContainers")
    proxy = _as_received(plane.proxy, had)
    init = [_as_received(c, had) for c in plane.inits]
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
    had_volumes = _items(received, "volumes")
    spec["volumes"] = [*(spec.get("volumes") or []), *(_as_received(v, had_volumes) for v in plane.volumes)]
    taken = _take_probes(spec, plane.probes, had)
    appended = _append(spec, plane.appended)
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
            if isinstance(own, str) and not (key == "annotations" and name in plan.inherited):
                # the pod's own value, put back when it is stripped (one inherited from the
                # namespace is not the pod's: it is inherited again, as the namespace says then)
                replaced.setdefault(key, {})[name] = own
            _set(meta, key, name, value)
            added[key].append(name)
        for name, value in defaults.items():
            if name not in present:
                _set(meta, key, name, value)
                added[key].append(name)
    added["annotations"] += [n for n in plan.inherited if n not in added["annotations"]]
    removed: dict[str, str] = {}
    for name in plane.removed_annotations:
        value = meta.get("annotations", {}).get(name)
        if isinstance(value, str):
            removed[name] = value
            del meta["annotations"][name]
    runtime_class = plan.runtime_class if not spec.get("runtimeClassName") else None
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    elif received is not None and spec.get("runtimeClassName"):
        # set by an earlier injection and kept (see strip): recorded as it was
        runtime_class = claimed_runtime(received, read_status(received))
    sums: dict[str, Any] = {
        "containers": {} if plan.build.native else {proxy["name"]: fingerprint(proxy)},
        "initContainers": {
            c["name"]: fingerprint(c) for c in (*init, *((proxy,) if plan.build.native else ()))
        },
        "volumes": {v["name"]: fingerprint(v) for v in plane.volumes},
        "labels": {n: value_sum(meta["labels"][n], n in plane.named) for n in added["labels"]},
        "annotations": {n: value_sum(meta["annotations"][n], n in plane.named) for n in added["annotations"]},
    }
    if taken:
        sums["probes"] = {
            c["name"]: {f: fingerprint(c[f]) for f in taken[c["name"]]}
            for key in ("initContainers", "containers")
            for c in spec.get(key) or ()
            if isinstance(c, dict) and c.get("name") in taken
        }
    if appended:
        sums["appended"] = {
            c: {f: {x["name"]: fingerprint(x) for x in items} for f, items in fields.items()}
            for c, fields in appended.items()
        }
    if runtime_class:
        sums["runtimeClassName"] = fingerprint(runtime_class)
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
    if appended:
        status["appended"] = {
            c: {f: [x["name"] for x in items] for f, items in fields.items()}
            for c, fields in appended.items()
        }
    if replaced:
        status["replaced"] = replaced
    if removed:
        status["removed"] = {"annotations": removed}
    if runtime_class:
        status["runtimeClassName"] = runtime_class
    if plan.firewall:
        status["firewall"] = plan.firewall
    if plan.mesh_version:
        status["meshVersion"] = plan.mesh_version
    status["sums"] = {k: v for k, v in sums.items() if v}
    _set(meta, "annotations", ANN_STATUS, orjson.dumps(status, option=orjson.OPT_SORT_KEYS).decode())
    _set(meta, "annotations", ANN_DECISION, plan.decision)
    _set(meta, "annotations", ANN_SOURCE, plan.build.resources.source.value)
    _set(meta, "labels", LABEL_MODE, plan.build.mode.value)
    if ctx is not None:
        ctx.lines.extend(plane.notes)
        for warning in plane.warnings:
            ctx.warn(warning)
    return status
