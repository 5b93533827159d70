"""Live cluster state: watched caches of Nodes, Namespaces and Services behind ClusterView.

One thread per resource lists it (paged, raw JSON, no model objects), then watches from
the list's ``resourceVersion`` with bookmarks. A dropped watch resumes from the last
version seen; ``410 Gone`` means that version is compacted away, so it relists; any other
error backs off exponentially with jitter (0.5 s doubling to 30 s) and relists. Each
change marks the view dirty; a rebuild thread turns the parsed objects into a new frozen
``ClusterSnapshot`` (at most every ``rebuild_interval``) and swaps it in with one
assignment. Admissions only ever read ``snapshot()``: they never wait on the network.

A resource that has lost its watch keeps serving its last state; ``stale_seconds`` says
for how long (exported as a metric, and logged when it is lost and regained). The view is
ready once every resource has been listed once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from webhook.cluster import ClusterSnapshot, Node, build_snapshot, node_from_object, service_from_object
from webhook.usage import UsageSummary
from webhook.versions import KubeVersion, kube_version_from_info
from webhook.workload import Service, WorkloadKey

log = logging.getLogger("mesh_injector.live")
RESOURCES = ("nodes", "namespaces", "services")


class ClusterAccessError(RuntimeError):
    """The API server cannot be reached or refused us; the message says which and why."""


def api_client(kubeconfig: str | None = None, *, in_cluster: bool = False) -> client.ApiClient:
    """An API client from a kubeconfig file or the in-cluster service account."""
    cfg = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else (kubeconfig or "default kubeconfig")
        raise ClusterAccessError(f"{where}: cannot load Kubernetes credentials ({exc})") from None
    return client.ApiClient(cfg)


@dataclass(frozen=True)
class _Kind:
    name: str
    list_fn: Callable[..., Any]
    key: Callable[[Mapping[str, Any]], str]
    parse: Callable[[Mapping[str, Any]], Any]


def _meta_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _namespace(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return str(meta.get("name", "")), {str(k): str(v) for k, v in labels.items()}


class _Gone(Exception):
    pass


def list_all(list_fn: Callable[..., Any], page: int = 500) -> tuple[list[dict[str, Any]], str]:
    """Every object of a list call (following ``continue``) and the list's resourceVersion."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": page, "_preload_content": False, "_request_timeout": (5, 60)}
        if token:
            kwargs["_continue"] = token
        body = orjson.loads(list_fn(**kwargs).data)
        items.extend(body.get("items") or [])
        meta = body.get("metadata") or {}
        token = meta.get("continue")
        if not token:
            return items, str(meta.get("resourceVersion", ""))


def server_version(api: client.ApiClient) -> KubeVersion | None:
    # Raw JSON: only three fields matter, and the generated model rejects answers that
    # leave out the others (some distributions and proxies do).
    info = orjson.loads(
        client.VersionApi(api).get_code(_preload_content=False, _request_timeout=(5, 10)).data
    )
    return kube_version_from_info(info.get("major"), info.get("minor"), info.get("gitVersion"))


def read_once(api: client.ApiClient) -> tuple[list[dict[str, Any]], KubeVersion | None]:
    """Nodes, namespaces and Services listed once, for the dry-run tools (``--kubeconfig``)."""
    core = client.CoreV1Api(api)
    docs: list[dict[str, Any]] = []
    try:
        for kind, fn in (
            ("Node", core.list_node),
            ("Namespace", core.list_namespace),
            ("Service", core.list_service_for_all_namespaces),
        ):
            items, _ = list_all(fn)
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
        usage: Mapping[WorkloadKey, UsageSummary] | None = None,
        rebuild_interval: float = 0.1,
        version_refresh: float = 300.0,
        watch_timeout: int = 240,
        source: str | None = None,
    ) -> None:
        core = client.CoreV1Api(api)
        self._api = api
        self._kinds = {
            "nodes": _Kind("nodes", core.list_node, _meta_key, node_from_object),
            "namespaces": _Kind("namespaces", core.list_namespace, _meta_key, _namespace),
            "services": _Kind(
                "services", core.list_service_for_all_namespaces, _meta_key, service_from_object
            ),
        }
        self._stores: dict[str, dict[str, Any]] = {k: {} for k in RESOURCES}
        self._synced = dict.fromkeys(RESOURCES, False)
        self._lost_at: dict[str, float | None] = dict.fromkeys(RESOURCES, None)
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._usage = dict(usage or {})
        self._version: KubeVersion | None = None
        self._rebuild_interval = rebuild_interval
        self._version_refresh = version_refresh
        self._watch_timeout = watch_timeout
        self._source = source or f"live cluster {api.configuration.host}"
        self._snapshot = build_snapshot(source=f"{self._source} (not synced yet)")
        self.rebuilds = 0
        self.relists = dict.fromkeys(RESOURCES, 0)
        self._threads: list[threading.Thread] = []

    # --- what the admission path and the probes read ------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    def ready(self) -> bool:
        return all(self._synced.values()) and self._snapshot.built_at > 0 and self.rebuilds > 0

    def stale_seconds(self, resource: str) -> float:
        lost = self._lost_at[resource]
        return 0.0 if lost is None else time.time() - lost

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"watch-{name}", lambda name=name: self._run_informer(name)) for name in RESOURCES
        ]
        targets += [("snapshot-rebuild", self._run_rebuild), ("server-version", self._run_version)]
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # --- informers ------------------------------------------------------------------------

    def _replace(self, name: str, items: list[dict[str, Any]]) -> None:
        kind = self._kinds[name]
        fresh = {kind.key(obj): kind.parse(obj) for obj in items}
        with self._lock:
            self._stores[name] = fresh
        self._synced[name] = True
        self._dirty.set()

    def _apply(self, name: str, event_type: str, obj: Mapping[str, Any]) -> None:
        kind = self._kinds[name]
        key = kind.key(obj)
        with self._lock:
            if event_type == "DELETED":
                self._stores[name].pop(key, None)
            else:
                self._stores[name][key] = kind.parse(obj)
        self._dirty.set()

    def _healthy(self, name: str) -> None:
        if self._lost_at[name] is not None:
            log.info(f"{name}: watch restored after {self.stale_seconds(name):.1f}s")
            self._lost_at[name] = None

    def _lost(self, name: str, why: str) -> None:
        if self._lost_at[name] is None:
            self._lost_at[name] = time.time()
            log.warning(f"{name}: lost the API server ({why}); serving the last known state")

    def _events(self, name: str, rv: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """One watch request from ``rv``: its events as (type, object), until it ends.

        The request goes through the client's own API function; the event lines are parsed
        here, because ``Watch.stream(deserialize=False)`` fails on ERROR events (it looks
        for a ``raw_object`` key that raw events do not have) and model objects for every
        node would be wasted work.
        """
        resp = self._kinds[name].list_fn(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=(5, self._watch_timeout + 30),
        )
        try:
            for line in watch.watch.iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                event = orjson.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ApiException(
                        status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"
                    )
                yield str(event.get("type")), obj
        finally:
            resp.close()
            resp.release_conn()

    def _run_informer(self, name: str) -> None:
        rv: str | None = None  # None: (re)list first
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = list_all(self._kinds[name].list_fn)
                    self.relists[name] += 1
                    self._replace(name, items)
                    self._healthy(name)
                for event_type, obj in self._events(name, rv):  # resumes from the last version seen
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if event_type in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(name, event_type, obj)
                    self._healthy(name)  # BOOKMARKs too: the watch is alive
                    failures = 0
            except _Gone:
                log.info(f"{name}: resourceVersion {rv} expired (410 Gone); relisting")
                rv = None
            except Exception as exc:  # the API or the connection failed
                # A watch connection that drops is routine (API server restarts, idle
                # timeouts): resume at once. Failing again means the API server is gone:
                # say so, and back off with jitter before each further try.
                failures += 1
                if failures > 1:
                    self._lost(name, f"{type(exc).__name__}: {str(exc)[:200]}")
                    delay = min(30.0, 0.5 * 2 ** min(failures - 2, 6)) * random.uniform(0.5, 1.5)
                    self._stop.wait(delay)

    def _run_version(self) -> None:
        while not self._stop.is_set():
            try:
                version = server_version(self._api)
                if version != self._version:
                    self._version = version
                    self._dirty.set()
                wait = self._version_refresh
            except Exception as exc:  # keep the last known version; retry soon
                log.warning(f"server version: {type(exc).__name__}: {str(exc)[:200]}")
                wait = 5.0
            self._stop.wait(wait)

    def _run_rebuild(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            time.sleep(self._rebuild_interval)  # coalesce a burst of events into one rebuild
            self._dirty.clear()
            if not all(self._synced.values()):
                continue
            self.rebuild()

    def rebuild(self) -> ClusterSnapshot:
        with self._lock:
            nodes: list[Node] = list(self._stores["nodes"].values())
            namespaces = dict(self._stores["namespaces"].values())
            services: list[Service] = list(self._stores["services"].values())
        snapshot = build_snapshot(
            nodes=nodes,
            namespaces=namespaces,
            services=services,
            server_version=self._version,
            usage=self._usage,
            source=self._source,
        )
        self._snapshot = snapshot  # one assignment: readers see the old or the new, never half
        self.rebuilds += 1
        return snapshot
