"""What is added to a meshed pod, and how a previous injection is taken off again.

Mutation works on a *shallow* copy: only the dicts and lists on the way to what changes
are copied (metadata, its labels and annotations, spec and its three lists). User
containers are never modified, and the untouched parts (``managedFields`` included) stay
the very same objects, which keeps the diff fast and exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from webhook import __version__
from webhook.iptables import ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID
from webhook.policy import Policy
from webhook.reasons import Mode
from webhook.sizing import ProxyResources

PREFIX = "mesh-injector.io/"
PROXY = "mesh-proxy"
INIT = "mesh-init"
PROXY_VOLUME = "mesh-proxy-run"

ANN_STATUS = PREFIX + "status"
ANN_DECISION = PREFIX + "decision"
ANN_SOURCE = PREFIX + "proxy-resources-source"
ANN_SKIP = PREFIX + "skip-reason"
LABEL_MODE = PREFIX + "interception"
WRITTEN_ANNOTATIONS = (ANN_STATUS, ANN_DECISION, ANN_SOURCE, ANN_SKIP)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    mode: Mode
    native: bool
    protocol: str
    resources: ProxyResources
    rules: str | None  # the iptables ruleset when mesh-init is added
    decision: str


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
    return [c.get("name") for c in spec.get(key) or [] if isinstance(c, dict)]


def has_proxy(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    return PROXY in container_names(spec, "containers") or PROXY in container_names(spec, "initContainers")


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
    for key, names in (("annotations", WRITTEN_ANNOTATIONS), ("labels", (LABEL_MODE,))):
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


def _set(meta: dict[str, Any], key: str, name: str, value: str) -> None:
    values = meta.get(key)
    if not isinstance(values, dict):
        values = meta[key] = {}
    values[name] = value


def mark_skipped(pod: dict[str, Any], text: str) -> None:
    _set(pod["metadata"], "annotations", ANN_SKIP, text)


def _security() -> dict[str, Any]:
    return {
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def proxy_container(plan: Plan, policy: Policy) -> dict[str, Any]:
    env = [
        {"name": "MESH_PROXY_INTERCEPTION_MODE", "value": plan.mode.value},
        {"name": "MESH_PROXY_PROTOCOL_HINT", "value": plan.protocol},
        {"name": "MESH_PROXY_CONNECTION_POOL_SIZE", "value": str(policy.proxy.connection_pool_size)},
        {"name": "MESH_PROXY_INBOUND_PORT", "value": str(INBOUND_PORT)},
        {"name": "MESH_PROXY_OUTBOUND_PORT", "value": str(OUTBOUND_PORT)},
        {"name": "MESH_PROXY_ADMIN_PORT", "value": str(ADMIN_PORT)},
        {"name": "MESH_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MESH_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if plan.mode is Mode.MICROVM:
        env.append({"name": "MESH_PROXY_SANDBOX_RUNTIME", "value": policy.interception.microvm.runtime_class})
    ready = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}}
    container: dict[str, Any] = {
        "name": PROXY,
        "image": policy.proxy.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-outbound", "containerPort": OUTBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": plan.resources.as_k8s(),
        "securityContext": _security(),
        "readinessProbe": {**ready, "periodSeconds": 2, "failureThreshold": 3},
        "volumeMounts": [{"name": PROXY_VOLUME, "mountPath": "/var/run/mesh-proxy"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if plan.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {**ready, "periodSeconds": 1, "failureThreshold": 120}
    return container


def init_container(rules: str, policy: Policy) -> dict[str, Any]:
    return {
        "name": INIT,
        "image": policy.proxy.init_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", 'printf "%s" "$MESH_IPTABLES_RULES" | iptables-restore --noflush'],
        "env": [{"name": "MESH_IPTABLES_RULES", "value": rules}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def apply_plan(pod: dict[str, Any], plan: Plan, policy: Policy) -> None:
    """Add the proxy (and mesh-init) to a shallow copy, with the annotations that explain it."""
    spec = pod["spec"]
    proxy = proxy_container(plan, policy)
    init = [init_container(plan.rules, policy)] if plan.rules is not None else []
    inits = list(spec.get("initContainers") or [])
    containers = list(spec.get("containers") or [])
    if plan.native:
        spec["initContainers"] = [*init, proxy, *inits]
        added_containers: list[str] = []
        added_inits = [c["name"] for c in (*init, proxy)]
    else:
        spec["containers"] = [proxy, *containers]
        if init or inits:
            spec["initContainers"] = [*inits, *init]
        added_containers = [PROXY]
        added_inits = [c["name"] for c in init]
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": PROXY_VOLUME, "emptyDir": {"medium": "Memory"}}]
    status = {
        "version": __version__,
        "mode": plan.mode.value,
        "nativeSidecar": plan.native,
        "containers": added_containers,
        "initContainers": added_inits,
        "volumes": [PROXY_VOLUME],
    }
    meta = pod["metadata"]
    _set(meta, "annotations", ANN_STATUS, orjson.dumps(status, option=orjson.OPT_SORT_KEYS).decode())
    _set(meta, "annotations", ANN_DECISION, plan.decision)
    _set(meta, "annotations", ANN_SOURCE, plan.resources.source.value)
    _set(meta, "labels", LABEL_MODE, plan.mode.value)
