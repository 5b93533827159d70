"""Live cluster state: watched caches of Nodes, Namespaces, Services, the ConfigMaps the
data-plane flavour reads (each by namespace and field selector on its name), the eBPF
redirector's pods (Merbridge's, in its namespace, by label selector), RuntimeClasses and
VerticalPodAutoscalers, behind ClusterView.

One thread per resource lists it (paged, raw JSON, no model objects), then watches from
the list's ``resourceVersion`` with bookmarks. A dropped watch resumes from the last
version seen; ``410 Gone`` means that version is compacted away, so it relists; any other
error backs off exponentially with jitter (0.5 s doubling to 30 s) and relists. Each
change marks the view dirty; a rebuild thread turns the parsed objects into a new frozen
``ClusterSnapshot`` (at most every ``rebuild_interval``) and swaps it in with one
assignment. Admissions only ever read ``snapshot()``: they never wait on the network.

A resource that has lost its watch keeps serving its last state; ``stale_seconds`` says
for how long (exported as a metric, and logged when it is lost and regained). The view is
ready once every resource has been listed once. A resource the API server does not serve
(``node.k8s.io`` RuntimeClasses before 1.20, VerticalPodAutoscalers without their CRD)
counts as listed and empty, and is looked for
again every few minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from webhook.cluster.snapshot import (
    ClusterSnapshot,
    Node,
    PodSelector,
    autoscaler_from_object,
    build_snapshot,
    config_map_from_object,
    namespace_from_object,
    node_from_object,
    redirector_from_object,
    redirector_starts,
    redirectors_by_node,
    runtime_class_from_object,
    service_from_object,
)
from webhook.errors import ClusterAccessError, describe_error
from webhook.kubeapi import Informer, list_all, lister, request
from webhook.usage.sources import UsageSource
from webhook.versions import KubeVersion, kube_version_from_info
from webhook.workload import Service

log = logging.getLogger("mesh_injector.live")
RESOURCES = (
    "nodes",
    "namespaces",
    "services",
    "configmaps",
    "redirectors",
    "runtimeclasses",
    "verticalpodautoscalers",
)
ConfigMapNames = tuple[tuple[str, str], ...]  # (namespace, name)
RUNTIME_CLASSES = "/apis/node.k8s.io/v1/runtimeclasses"
# served only where the VPA's CRD is installed
AUTOSCALERS = "/apis/autoscaling.k8s.io/v1/verticalpodautoscalers"


def redirector_pods(selector: PodSelector) -> tuple[str, dict[str, str]]:
    """The path and query that list the redirector's pods (one namespace, by label)."""
    return f"/api/v1/namespaces/{selector.namespace}/pods", {"label_selector": selector.text}


def api_client(kubeconfig: str | None = None, *, in_cluster: bool = False) -> client.ApiClient:
    """An API client from a kubeconfig file or the in-cluster service account."""
    cfg = client.Configuration()
    if kubeconfig and not in_cluster and not Path(kubeconfig).is_file():
        # the client's own words for it are "Invalid kube-config file. No configuration found."
        why = "a directory, not a file" if Path(kubeconfig).is_dir() else "no such file"
        raise ClusterAccessError(f"{kubeconfig}: cannot load Kubernetes credentials ({why})")
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else (kubeconfig or "default kubeconfig")
        raise ClusterAccessError(f"{where}: cannot load Kubernetes credentials ({exc})") from None
    return client.ApiClient(cfg)


def config_map_lister(api: client.ApiClient, namespace: str, name: str) -> Callable[..., Any]:
    """Lists (and watches) one ConfigMap: in its namespace, by field selector on its name, so
    RBAC can grant exactly it (``resourceNames``)."""
    return lister(api, f"/api/v1/namespaces/{namespace}/configmaps", field_selector=f"metadata.name={name}")


def server_version(api: client.ApiClient) -> KubeVersion | None:
    # Raw JSON: only three fields matter, and the generated model rejects answers that
    # leave out the others (some distributions and proxies do).
    info = orjson.loads(request(api, "GET", "/version", timeout=(5, 10)).data)
    return kube_version_from_info(info.get("major"), info.get("minor"), info.get("gitVersion"))


def read_once(
    api: client.ApiClient, redirector: PodSelector | None = None, config_maps: ConfigMapNames = ()
) -> tuple[list[dict[str, Any]], KubeVersion | None]:
    """Nodes, namespaces, Services, the flavour's ConfigMaps, the redirector's pods and
    RuntimeClasses listed once, for the dry-run tools (``--kubeconfig``)."""
    docs: list[dict[str, Any]] = []
    sources = [
        ("Node", lister(api, "/api/v1/nodes")),
        ("Namespace", lister(api, "/api/v1/namespaces")),
        ("Service", lister(api, "/api/v1/services")),
        *(("ConfigMap", config_map_lister(api, ns, name)) for ns, name in config_maps),
        ("RuntimeClass", lister(api, RUNTIME_CLASSES)),
        ("VerticalPodAutoscaler", lister(api, AUTOSCALERS)),
    ]
    if redirector is not None:
        path, query = redirector_pods(redirector)
        sources.append(("Pod", lister(api, path, **query)))
    try:
        for kind, fn in sources:
            try:
                items, _ = list_all(fn)
            except ApiException as exc:
                if exc.status == 404 and kind in ("RuntimeClass", "VerticalPodAutoscaler"):
                    continue  # not served here (no node.k8s.io/v1, no VPA CRD): none of them
                raise
            docs.extend({**item, "kind": kind} for item in items)
        return docs, server_version(api)
    except (ApiException, OSError, ValueError) as exc:
        raise ClusterAccessError(f"cannot read the cluster: {exc}") from None
    except Exception as exc:  # urllib3 errors are not OSError subclasses in every version
        raise ClusterAccessError(f"cannot read the cluster: {type(exc).__name__}: {exc}") from None


class LiveClusterView:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        usage: UsageSource | None = None,
        rebuild_interval: float = 0.1,
        version_refresh: float = 300.0,
        watch_timeout: int = 240,
        source: str | None = None,
        redirector: PodSelector | None = None,
        config_maps: ConfigMapNames = (),
    ) -> None:
        self._api = api
        self._stop = threading.Event()
        self._dirty = threading.Event()
        common: dict[str, Any] = {
            "stop": self._stop,
            "on_change": self._dirty.set,
            "watch_timeout": watch_timeout,
        }
        self._informers = {
            "nodes": Informer("nodes", lister(api, "/api/v1/nodes"), node_from_object, **common),
            "namespaces": Informer(
                "namespaces", lister(api, "/api/v1/namespaces"), namespace_from_object, **common
            ),
            "services": Informer("services", lister(api, "/api/v1/services"), service_from_object, **common),
            **{
                f"configmaps:{ns}/{name}": Informer(
                    f"configmap {ns}/{name}",
                    config_map_lister(api, ns, name),
                    config_map_from_object,
                    **common,
                )
                for ns, name in config_maps
            },
            "runtimeclasses": Informer(
                "runtimeclasses",
                lister(api, RUNTIME_CLASSES),
                runtime_class_from_object,
                optional=True,
                **common,
            ),
            "verticalpodautoscalers": Informer(
                "verticalpodautoscalers",
                lister(api, AUTOSCALERS),
                autoscaler_from_object,
                optional=True,
                **common,
            ),
        }
        if redirector is not None:
            path, query = redirector_pods(redirector)
            self._informers["redirectors"] = Informer(
                "redirectors", lister(api, path, **query), redirector_from_object, **common
            )
        self.usage = usage
        self._version: KubeVersion | None = None
        self._version_read = False  # the first read of the version was made (or failed)
        self._built_with_version = False
        self._rebuild_interval = rebuild_interval
        self._version_refresh = version_refresh
        self._source = source or f"live cluster {api.configuration.host}"
        self._snapshot = build_snapshot(source=f"{self._source} (not synced yet)")
        self.rebuilds = 0
        self._threads: list[threading.Thread] = []

    @property
    def relists(self) -> dict[str, int]:
        return {name: inf.relists for name, inf in self._informers.items()}

    # --- what the admission path and the probes read ------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    def ready(self) -> bool:
        # the server version decides placement (native sidecars): a snapshot built before
        # it was read would answer differently from a replica that has it
        cluster = all(inf.synced for inf in self._informers.values()) and self._built_with_version
        return cluster and (self.usage is None or self.usage.ready())

    def stale_seconds(self, resource: str) -> float:
        """How long ``resource`` (one of ``RESOURCES``) has been without its watch; for
        ``configmaps``, the longest of the flavour's ConfigMaps."""
        if resource == "configmaps":
            found = [
                inf.stale_seconds() for key, inf in self._informers.items() if key.startswith("configmaps:")
            ]
            return max(found, default=0.0)
        informer = self._informers.get(resource)
        return informer.stale_seconds() if informer is not None else 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"watch-{name}", inf.run) for name, inf in self._informers.items()
        ]
        targets += [("snapshot-rebuild", self._run_rebuild), ("server-version", self._run_version)]
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.usage is not None:
            self.usage.start(self._dirty.set)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self.usage is not None:
            self.usage.stop()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _run_version(self) -> None:
        while not self._stop.is_set():
            try:
                version = server_version(self._api)
                if version != self._version or not self._version_read:
                    self._version = version
                    self._version_read = True
                    self._dirty.set()
                wait = self._version_refresh
            except Exception as exc:  # keep the last known version; retry soon
                log.warning(f"server version: {describe_error(exc)}")
                if not self._version_read:  # serve without it rather than not at all
                    self._version_read = True
                    self._dirty.set()
                wait = 5.0
            self._stop.wait(wait)

    def _run_rebuild(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            time.sleep(self._rebuild_interval)  # coalesce a burst of events into one rebuild
            self._dirty.clear()
            if not all(inf.synced for inf in self._informers.values()):
                continue
            try:
                self.rebuild()
            except Exception:  # a bug must not stop the view: admissions keep the last snapshot
                log.exception("rebuilding the cluster snapshot failed; the last one is served")

    def rebuild(self) -> ClusterSnapshot:
        version_read = self._version_read
        nodes: list[Node] = self._informers["nodes"].values()
        namespaces = dict(self._informers["namespaces"].values())
        maps = [inf for key, inf in self._informers.items() if key.startswith("configmaps:")]
        services: list[Service] = self._informers["services"].values()
        agents = self._informers.get("redirectors")
        snapshot = build_snapshot(
            nodes=nodes,
            namespaces={name: labels for name, (labels, _) in namespaces.items()},
            namespace_annotations={name: annotations for name, (_, annotations) in namespaces.items()},
            services=services,
            config_maps=dict(found for inf in maps for found in inf.values()),
            redirectors=redirectors_by_node(agents.values()) if agents is not None else {},
            redirector_starts=redirector_starts(agents.values()) if agents is not None else {},
            runtime_classes=self._informers["runtimeclasses"].values(),
            autoscalers=self._informers["verticalpodautoscalers"].values(),
            server_version=self._version,
            usage=self.usage.summaries() if self.usage is not None else {},
            source=self._source,
        )
        self._snapshot = snapshot  # one assignment: readers see the old or the new, never half
        self._built_with_version = version_read
        self.rebuilds += 1
        return snapshot


class UsageRefreshingView:
    """A fixed cluster (``--cluster FILE``) whose usage comes from a live source: each
    change of the summaries makes a new snapshot (with fresh memos) swapped in at once."""

    def __init__(self, base: ClusterSnapshot, usage: UsageSource) -> None:
        self._base = base
        self.usage = usage
        self._snapshot = self._with_usage()

    def _with_usage(self) -> ClusterSnapshot:
        return self._base.derive(usage=dict(self.usage.summaries()), built_at=time.time())

    def start(self) -> None:
        self.usage.start(self._refresh)

    def stop(self) -> None:
        self.usage.stop()

    def _refresh(self) -> None:
        self._snapshot = self._with_usage()

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    def ready(self) -> bool:
        return self.usage.ready()
