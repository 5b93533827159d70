"""A local HTTP server that speaks the Kubernetes list/watch wire format, for the faults a
real API server cannot be made to show on demand: dropped watches, 410 Gone, outages, lists
that fail, an API server without node.k8s.io; and for metrics.k8s.io PodMetrics, which the
real test API server (no aggregation layer) cannot serve. It takes no writes: everything
else is tested against a real API server (tests/apiserver.py).

Lists are JSON with ``metadata.resourceVersion`` (paged with ``limit``/``continue``);
watches are chunked streams of ``ADDED``/``MODIFIED``/``DELETED``/``BOOKMARK``/``ERROR``
events, one JSON object per line, exactly as the API server sends them. The real
``kubernetes`` client talks to it over plain HTTP via a kubeconfig.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/nodes": "nodes",
    "/api/v1/namespaces": "namespaces",
    "/api/v1/services": "services",
    "/api/v1/pods": "pods",
    "/api/v1/configmaps": "configmaps",
    "/apis/node.k8s.io/v1/runtimeclasses": "runtimeclasses",
    "/apis/autoscaling.k8s.io/v1/verticalpodautoscalers": "verticalpodautoscalers",
}
NAMESPACED = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|services|configmaps)$")
KINDS = {
    "nodes": "Node",
    "namespaces": "Namespace",
    "services": "Service",
    "pods": "Pod",
    "configmaps": "ConfigMap",
    "runtimeclasses": "RuntimeClass",
    "verticalpodautoscalers": "VerticalPodAutoscaler",
}
METRICS_PATH = "/apis/metrics.k8s.io/v1beta1/pods"


def fields_select(selector: str | None, obj: dict[str, Any]) -> bool:
    """``metadata.name=X`` and ``metadata.namespace=X`` terms (what the injector uses)."""
    for term in (selector or "").split(","):
        if "=" in term:
            key, value = term.split("=", 1)
            if (obj.get("metadata") or {}).get(key.removeprefix("metadata.")) != value:
                return False
    return True


def selects(selector: str | None, obj: dict[str, Any]) -> bool:
    """``key``, ``key=value`` and ``key!=value`` terms, comma-separated (what tests use)."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


class FakeAPIServer:
    def __init__(self, version: str = "v1.32.2", port: int = 0) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self.rv = 100
        self.compacted = 0  # watches from a resourceVersion at or below this get 410 Gone
        self.version = version
        # resource -> how many of its next lists fail with a 500
        self.fail_lists: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.list_calls = dict.fromkeys(KINDS, 0)
        self.watch_calls = dict.fromkeys(KINDS, 0)
        self.generation = 0  # bumped to drop every open watch
        self.cond = threading.Condition()
        self.port = port
        self.httpd: ThreadingHTTPServer | None = None
        # metrics.k8s.io PodMetrics, as metrics-server serves them (set by the tests)
        self.pod_metrics: list[dict[str, Any]] = []
        self.metrics_calls = 0
        self.metrics_down = False
        # an API server before 1.20 serves no node.k8s.io/v1 (404)
        self.serves_runtimeclasses = True
        # without the VPA's CRD installed, autoscaling.k8s.io is not served (404)
        self.serves_autoscalers = True

    # --- state changes (as the tests drive them) --------------------------------------

    def put(self, resource: str, obj: dict[str, Any]) -> None:
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            key = self._key(obj)
            event = "MODIFIED" if key in self.objects[resource] else "ADDED"
            self.objects[resource][key] = obj
            self.events.append((self.rv, resource, event, obj))
            self.cond.notify_all()

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        with self.cond:
            self.rv += 1
            obj = self.objects[resource].pop(f"{namespace}/{name}")
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, resource, "DELETED", obj))
            self.cond.notify_all()

    def drop_watches(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history: resuming watches now get 410 Gone and must relist."""
        with self.cond:
            self.compacted = self.rv
            self.events.clear()
            self.generation += 1
            self.cond.notify_all()

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    # --- serving ----------------------------------------------------------------------

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path in ("/version", "/version/"):
                    minor = server.version.split(".")[1]
                    return self._json(
                        200,
                        {
                            "major": "1",
                            "minor": minor,
                            "gitVersion": server.version,
                            "gitCommit": "0" * 40,
                            "gitTreeState": "clean",
                            "buildDate": "2026-10-01T00:00:00Z",
                            "goVersion": "go1.25.1",
                            "compiler": "gc",
                            "platform": "linux/amd64",
                        },
                    )
                if url.path == METRICS_PATH:
                    return self._metrics(query)
                resource = PATHS.get(url.path)
                scoped = NAMESPACED.match(url.path)
                if scoped is not None:  # a namespaced list: the namespace is one more field selector
                    resource = scoped.group(2)
                    ns_term = f"metadata.namespace={scoped.group(1)}"
                    query["fieldSelector"] = ",".join(filter(None, [query.get("fieldSelector"), ns_term]))
                if resource == "runtimeclasses" and not server.serves_runtimeclasses:
                    resource = None
                if resource == "verticalpodautoscalers" and not server.serves_autoscalers:
                    resource = None
                if resource is None:
                    return self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                if query.get("watch") in ("true", "1"):
                    return self._watch(resource, query)
                return self._list(resource, query)

            def _metrics(self, query: dict[str, str]) -> None:
                server.metrics_calls += 1
                if server.metrics_down:
                    return self._json(
                        503,
                        {
                            "kind": "Status",
                            "code": 503,
                            "reason": "ServiceUnavailable",
                            "message": "the server is currently unable to handle the request",
                        },
                    )
                with server.cond:
                    items = [m for m in server.pod_metrics if selects(query.get("labelSelector"), m)]
                self._json(
                    200,
                    {
                        "kind": "PodMetricsList",
                        "apiVersion": "metrics.k8s.io/v1beta1",
                        "metadata": {},
                        "items": copy.deepcopy(items),
                    },
                )

            def _list(self, resource: str, query: dict[str, str]) -> None:
                server.list_calls[resource] += 1
                if server.fail_lists[resource] > 0:
                    server.fail_lists[resource] -= 1
                    return self._json(
                        500,
                        {
                            "kind": "Status",
                            "code": 500,
                            "reason": "InternalError",
                            "message": "etcd is unhappy",
                        },
                    )
                with server.cond:
                    items = sorted(server.objects[resource].values(), key=server._key)
                    items = [
                        o
                        for o in items
                        if selects(query.get("labelSelector"), o)
                        and fields_select(query.get("fieldSelector"), o)
                    ]
                    rv = server.rv
                limit = int(query.get("limit", 0) or 0)
                start = int(query.get("continue", 0) or 0)
                page = items[start : start + limit] if limit else items
                meta: dict[str, Any] = {"resourceVersion": str(rv)}
                if limit and start + limit < len(items):
                    meta["continue"] = str(start + limit)
                self._json(
                    200,
                    {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": meta, "items": page},
                )

            def _pending(self, resource: str, since: int, query: dict[str, str]) -> list[Any]:
                selector, fields = query.get("labelSelector"), query.get("fieldSelector")
                return [
                    e
                    for e in server.events
                    if e[0] > since
                    and e[1] == resource
                    and selects(selector, e[3])
                    and fields_select(fields, e[3])
                ]

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, resource: str, query: dict[str, str]) -> None:
                server.watch_calls[resource] += 1
                since = int(query.get("resourceVersion", 0) or 0)
                deadline = time.monotonic() + int(query.get("timeoutSeconds", 60) or 60)
                bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with server.cond:
                    generation = server.generation
                    if since and since <= server.compacted:
                        status = {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {since}",
                        }
                        self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                        self._chunk(b"")
                        return
                last_bookmark = time.monotonic()
                try:
                    while time.monotonic() < deadline:
                        with server.cond:
                            pending = self._pending(resource, since, query)
                            if not pending and server.generation == generation:
                                server.cond.wait(0.2)
                                pending = self._pending(resource, since, query)
                            if server.generation != generation:
                                # dropped: close the connection without ending the chunked body
                                self.close_connection = True
                                return
                            rv = server.rv
                        for erv, _, etype, obj in pending:
                            self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                            since = erv
                        if bookmarks and time.monotonic() - last_bookmark > 0.5:
                            mark = {
                                "kind": KINDS[resource],
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(rv)},
                            }
                            self._chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                            since = max(since, rv)
                            last_bookmark = time.monotonic()
                    self._chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """An outage: stop listening and cut every open watch."""
        self.drop_watches()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                    "users": [{"name": "fake", "user": {"token": "test-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                }
            )
        )
        return path


def node(
    name: str,
    kernel: str,
    kubelet: str = "v1.32.2",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints} if taints else {},
        "status": {"nodeInfo": {"kernelVersion": kernel, "kubeletVersion": kubelet}},
    }


def trust_roots(pem: str, namespace: str = "linkerd") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "linkerd-identity-trust-roots", "namespace": namespace},
        "data": {"ca-bundle.crt": pem},
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def service(name: str, ns: str, selector: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": ports},
    }


def merbridge(
    node_name: str, *, ready: bool = True, mode: str = "linkerd", cni: bool = True, ns: str = "linkerd"
) -> dict[str, Any]:
    """Merbridge's DaemonSet pod on ``node_name``, as its own manifests run it."""
    args = ["/app/mbctl", "-m", mode, "--use-reconnect=false", f"--cni-mode={'true' if cni else 'false'}"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"merbridge-{node_name}", "namespace": ns, "labels": {"app": "merbridge"}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "merbridge", "image": "ghcr.io/merbridge/merbridge:0.8.1", "args": args}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def runtime_class(name: str, handler: str, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": handler,
    }
    if node_selector:
        obj["scheduling"] = {"nodeSelector": node_selector}
    return obj


def meshed_pod(
    name: str,
    ns: str,
    owner: tuple[str, str] | None = None,
    *,
    labels: dict[str, str] | None = None,
    oom_finished_at: str | None = None,
    meshed: bool = True,
) -> dict[str, Any]:
    """A running pod with the injected proxy (a native sidecar), as a watch would send it."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": dict(labels or {})}
    if meshed:
        meta["labels"]["mesh-injector.io/interception"] = "ebpf"
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "u", "controller": True}
        ]
    proxy_status: dict[str, Any] = {
        "name": "mesh-proxy",
        "ready": True,
        "restartCount": 0,
        "state": {"running": {}},
    }
    if oom_finished_at:
        proxy_status["restartCount"] = 1
        proxy_status["lastState"] = {
            "terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": oom_finished_at}
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {
            "phase": "Running",
            "initContainerStatuses": [proxy_status] if meshed else [],
            "containerStatuses": [
                {"name": "app", "ready": True, "restartCount": 0, "state": {"running": {}}}
            ],
        },
    }


def pod_metrics(
    name: str, ns: str, timestamp: str, cpu: str, memory: str, *, meshed: bool = True
) -> dict[str, Any]:
    """A metrics.k8s.io PodMetrics as metrics-server serves it (labels copied from the pod)."""
    labels = {"mesh-injector.io/interception": "ebpf"} if meshed else {}
    containers = [{"name": "app", "usage": {"cpu": "5m", "memory": "20Mi"}}]
    if meshed:
        containers.append({"name": "mesh-proxy", "usage": {"cpu": cpu, "memory": memory}})
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": timestamp},
        "timestamp": timestamp,
        "window": "15s",
        "containers": containers,
    }
