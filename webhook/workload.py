"""What kind of workload a pod belongs to: its key, protocol, lifecycle.

The workload key is what observed usage is recorded under, so it must be the same for
every pod of a workload across rollouts: a ReplicaSet made by a Deployment (it carries
the ``pod-template-hash`` label) maps to the Deployment; a Job named ``<name>-<digits>``
maps to the CronJob that made it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

_CRONJOB_JOB = re.compile(r"^(?P<stem>.+)-\d{8,}$")
_GRPC_APP_PROTOCOLS = frozenset({"grpc", "kubernetes.io/h2c", "h2c"})
_HTTP_APP_PROTOCOLS = frozenset({"http", "https", "http2", "kubernetes.io/ws", "kubernetes.io/wss"})
_RANK = {"grpc": 2, "http": 1, "tcp": 0}


# the group/version of each kind that owns pods (and of a Pod), as manifests name them
API_VERSIONS = {
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "ReplicationController": "v1",
    "DeploymentConfig": "apps.openshift.io/v1",  # OpenShift
    "Pod": "v1",
}


class WorkloadKey(NamedTuple):
    namespace: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    app_protocol: str


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...]

    def selects(self, labels: Mapping[str, str]) -> bool:
        # A Service without a selector selects nothing (its endpoints are managed by hand).
        return bool(self.selector) and all(labels.get(k) == v for k, v in self.selector.items())


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return None
    dicts = [r for r in refs if isinstance(r, dict)]
    for ref in dicts:
        if ref.get("controller") is True:
            return ref
    return dicts[0] if dicts else None


def workload_key(pod: Mapping[str, Any], namespace: str) -> WorkloadKey:
    meta = pod.get("metadata") or {}
    owner = _controller(meta)
    labels = meta.get("labels") or {}
    if owner is not None and isinstance(owner.get("name"), str) and isinstance(owner.get("kind"), str):
        kind, name = owner["kind"], owner["name"]
        if kind == "ReplicaSet":
            pth = labels.get("pod-template-hash") if isinstance(labels, dict) else None
            if isinstance(pth, str) and pth and name.endswith("-" + pth):
                return WorkloadKey(namespace, "Deployment", name[: -len(pth) - 1])
            return WorkloadKey(namespace, "ReplicaSet", name)
        if kind == "Job":
            m = _CRONJOB_JOB.match(name)
            if m is not None:
                return WorkloadKey(namespace, "CronJob", m.group("stem"))
        return WorkloadKey(namespace, kind, name)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        stem = meta.get("generateName")
        name = stem.rstrip("-") if isinstance(stem, str) and stem.rstrip("-") else "unnamed"
    return WorkloadKey(namespace, "Pod", name)


def _port_name_protocol(name: object) -> str:
    if not isinstance(name, str):
        return "tcp"
    if name in ("grpc", "h2c") or name.startswith("grpc-"):
        return "grpc"
    if name in ("http", "http2", "https") or name.startswith("http-"):
        return "http"
    return "tcp"


def _best(protocols: Sequence[str]) -> str:
    return max(protocols, key=_RANK.__getitem__, default="tcp")


def protocol_from_services(services: Sequence[Service], labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(protocol, which Service said so) from the Services that select the pod."""
    selecting = [s for s in services if s.selects(labels)]
    if not selecting:
        return None
    by_app: list[tuple[str, str]] = []
    by_name: list[tuple[str, str]] = []
    for svc in selecting:
        for port in svc.ports:
            ap = port.app_protocol.lower()
            if ap in _GRPC_APP_PROTOCOLS:
                by_app.append(("grpc", svc.name))
            elif ap in _HTTP_APP_PROTOCOLS:
                by_app.append(("http", svc.name))
            else:
                by_name.append((_port_name_protocol(port.name), svc.name))
    for found in (by_app, [p for p in by_name if p[0] != "tcp"]):
        if found:
            proto = _best([p for p, _ in found])
            return proto, next(s for p, s in found if p == proto)
    return None


def protocol_from_container_ports(containers: Sequence[Any]) -> str | None:
    found = [
        _port_name_protocol(port.get("name"))
        for c in containers
        if isinstance(c, dict)
        if isinstance(c.get("ports"), list)
        for port in c["ports"]
        if isinstance(port, dict)
    ]
    proto = _best(found)
    return None if proto == "tcp" else proto


def is_batch(pod: Mapping[str, Any]) -> bool:
    owner = _controller(pod.get("metadata") or {})
    if owner is not None and owner.get("kind") in ("Job", "CronJob"):
        return True
    spec = pod.get("spec") or {}
    return spec.get("restartPolicy") in ("Never", "OnFailure")
