"""Manifests in, injected manifests out: the offline ``inject`` and ``check`` verbs.

Every pod template is run through the same ``admit`` as the webhook, as the pod its
controller would create: the template's metadata and spec, in the manifest's namespace,
owned by the workload (so workload keys, batch detection and observed usage line up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook import kubeschema as schema
from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot
from webhook.outcome import Outcome
from webhook.policy import Policy
from webhook.versions import parse_kube_version
from webhook.workload import API_VERSIONS

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "ReplicationController": ("spec", "template"),
    "DeploymentConfig": ("spec", "template"),  # OpenShift
}
# (apiVersion, kind) -> the Kubernetes release that stopped serving it
REMOVED = {
    **{("extensions/v1beta1", k): "1.16" for k in ("Deployment", "DaemonSet", "ReplicaSet")},
    **{("apps/v1beta1", k): "1.16" for k in ("Deployment", "StatefulSet")},
    **{("apps/v1beta2", k): "1.16" for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")},
    ("batch/v1beta1", "CronJob"): "1.25",
    ("batch/v2alpha1", "CronJob"): "1.21",
}


@dataclass(frozen=True)
class DocResult:
    kind: str
    namespace: str
    name: str
    outcome: Outcome | None  # None for kinds that carry no pod template, and invalid documents
    notes: tuple[str, ...] = ()  # about the manifest itself (an API version no longer served)
    errors: tuple[str, ...] = ()  # where the document breaks the Kubernetes schema; left as it is

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def report(self) -> str:
        o = self.outcome
        if self.errors:
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{self.ref}: unchanged, not a valid {self.kind}: {self.errors[0]}{more}"
        if o is None:
            return f"{self.ref}: unchanged (no pod template)"
        if o.injected:
            assert o.mode is not None and o.mode_reason is not None
            note = f"; {len(o.warnings)} warning(s)" if o.warnings else ""
            return f"{self.ref}: injected with mode {o.mode.value} ({o.mode_reason.value}){note}"
        assert o.skip is not None
        return f"{self.ref}: skipped because {o.skip.text} ({o.skip.value})"


def _dig(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _copy_path(doc: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of ``doc`` in which the mappings down to the pod template (returned too) are
    new objects; everything else is shared. Admission never changes what it is given, and
    the template is changed only by replacing its ``metadata`` and ``spec``."""
    top = dict(doc)
    node = top
    for key in path:
        child = dict(node[key])
        node[key] = child
        node = child
    return top, node


# What the DaemonSet controller adds to every daemon pod it creates
# (AddOrUpdateDaemonPodTolerations in Kubernetes' pkg/controller/daemon/util): its pods stay
# on nodes under pressure, cordoned (unschedulable) or not ready, and a host-network one on a
# node whose network is not set up yet.
DAEMON_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)
HOST_NETWORK_TOLERATION = {
    "key": "node.kubernetes.io/network-unavailable",
    "operator": "Exists",
    "effect": "NoSchedule",
}


def _daemon_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A DaemonSet template's pod spec as its controller creates the pods: with the daemon
    tolerations the template does not already have."""
    own = spec.get("tolerations") if isinstance(spec.get("tolerations"), list) else []
    wanted = [*DAEMON_TOLERATIONS, *((HOST_NETWORK_TOLERATION,) if spec.get("hostNetwork") is True else ())]
    return {**spec, "tolerations": [*own, *(t for t in wanted if t not in own)]}


def _as_pod(doc: dict[str, Any], template: dict[str, Any], kind: str, namespace: str) -> dict[str, Any]:
    if kind == "Pod":
        pod = dict(doc)
        pod["metadata"] = {**(doc.get("metadata") or {}), "namespace": namespace}
        return pod
    meta = dict(template.get("metadata") or {})
    name = str((doc.get("metadata") or {}).get("name", ""))
    meta["namespace"] = namespace
    meta["generateName"] = f"{name}-"
    meta["ownerReferences"] = [
        {
            "apiVersion": API_VERSIONS.get(kind, "apps/v1"),
            "kind": kind,
            "name": name,
            "uid": "",
            "controller": True,
        }
    ]
    spec = template.get("spec") or {}
    if kind == "DaemonSet" and isinstance(spec, dict):
        spec = _daemon_spec(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _write_back(doc: dict[str, Any], template: dict[str, Any], kind: str, pod: dict[str, Any]) -> None:
    if kind == "Pod":
        original_meta = doc.get("metadata") or {}
        meta = dict(pod["metadata"])
        if "namespace" not in original_meta:
            meta.pop("namespace", None)
        doc["metadata"] = meta
        doc["spec"] = pod["spec"]
        return
    original_meta = template.get("metadata") or {}
    meta = {k: v for k, v in pod["metadata"].items() if k in original_meta or k in ("labels", "annotations")}
    template["metadata"] = meta
    spec = pod["spec"]
    original = template.get("spec")
    if kind == "DaemonSet" and isinstance(original, dict):  # the controller's tolerations are its own
        spec = {k: v for k, v in spec.items() if k != "tolerations"}
        if "tolerations" in original:
            spec["tolerations"] = original["tolerations"]
    template["spec"] = spec


def process(
    doc: dict[str, Any],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    default_namespace: str,
    assume_opt_in: bool,
) -> tuple[dict[str, Any], list[DocResult]]:
    """The document with its pod templates injected (a new object), and one result per object."""
    kind = str(doc.get("kind", ""))
    if kind == "List" and isinstance(doc.get("items"), list):
        out = dict(doc)
        items, results = [], []
        for item in doc["items"]:
            if isinstance(item, dict):
                new, res = process(
                    item, snapshot, policy, default_namespace=default_namespace, assume_opt_in=assume_opt_in
                )
                items.append(new)
                results.extend(res)
            else:
                items.append(item)
        out["items"] = items
        return out, results
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    namespace = str(meta.get("namespace") or default_namespace)
    name = str(meta.get("name") or meta.get("generateName") or "?")
    path = TEMPLATE_PATHS.get(kind)
    if path is not None:
        findings = _schema_findings(doc, kind, path)
        if findings.errors:
            notes = (*findings.warnings, *_api_notes(doc, kind, snapshot))
            return doc, [DocResult(kind, namespace, name, None, notes, findings.errors)]
    else:
        findings = schema.Findings()
    template = _dig(doc, path) if path is not None else None
    if path is None or template is None:
        ns = namespace if path is not None or meta.get("namespace") else ""
        return doc, [DocResult(kind or "?", ns, name, None)]
    doc, template = _copy_path(doc, path)
    pod = _as_pod(doc, template, kind, namespace)
    request = {
        "uid": f"offline-{kind}-{namespace}-{name}",
        "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": namespace,
        "object": pod,
    }
    outcome = admit(request, snapshot, policy, assume_opt_in=assume_opt_in)
    # a manifest changes only where its workload is meshed: a skip's annotation is for the
    # pods the webhook admits, not a line in the user's source
    if outcome.injected and outcome.patch and outcome.pod is not None:
        _write_back(doc, template, kind, dict(outcome.pod))
    notes = (*findings.warnings, *_api_notes(doc, kind, snapshot))
    return doc, [DocResult(kind, namespace, name, outcome, notes)]


def _schema_findings(doc: dict[str, Any], kind: str, path: tuple[str, ...]) -> schema.Findings:
    """The document against its kind's schema; where the schema has no such API version
    (``extensions/v1beta1``, OpenShift), its pod template, which is what admission reads."""
    root = schema.root_for(str(doc.get("apiVersion", "")), kind)
    if root is None and kind == "Pod":
        root = schema.root_for("v1", "Pod")
    if root is not None:
        return schema.check(doc, root)
    template = _dig(doc, path[:-1]) if path else None
    if template is None or path[-1] not in template:
        return schema.Findings()
    return schema.check(template[path[-1]], schema.TEMPLATE, ".".join(path))


def _api_notes(doc: dict[str, Any], kind: str, snapshot: ClusterSnapshot) -> tuple[str, ...]:
    api = str(doc.get("apiVersion", ""))
    removed = REMOVED.get((api, kind))
    if removed is None:
        return ()
    server = snapshot.server_version
    gone = parse_kube_version(removed)
    if server is not None and gone is not None and server < gone:
        return ()
    target = f"a {server} cluster" if server is not None else f"a cluster at {removed} or later"
    return (f"{api} {kind} is no longer served since Kubernetes {removed}: {target} refuses it",)
