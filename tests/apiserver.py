"""One real kube-apiserver + etcd per test module (tests/e2e/run-apiserver.sh), each in its
own run directory on its own free loopback ports, so that concurrent test runs never stop
or reuse each other's API server. The build and the PKI are shared (made once, under a lock,
in ``K8S_WORKDIR``, default ``~/.cache/k8s-apiserver``).

Where the harness cannot run (not root), the tests that need it skip and say why; under CI
(``CI`` set), where ``.ci/run`` has installed what it needs, a failure to build or start it
fails the test instead of skipping it. A start that does not end with a serving API server
(etcd or kube-apiserver dead, or not ready within ``READY_WAIT`` seconds) is a failed start.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import support

HARNESS = Path(__file__).parent / "e2e" / "run-apiserver.sh"
WORKDIR = Path(os.environ.get("K8S_WORKDIR", Path.home() / ".cache" / "k8s-apiserver"))
PKI = WORKDIR / "pki"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    """A harness instance: ``start()`` (again after ``stop()`` keeps its etcd data),
    ``kubeconfig`` for clients, ``env`` for running the harness by hand."""

    run_dir: Path
    controllers: str = ""
    env: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "K8S_WORKDIR": str(WORKDIR),
            "RUN_DIR": str(self.run_dir),
            "API_PORT": str(free_port()),
            "ETCD_PORT": str(free_port()),
            "ETCD_PEER_PORT": str(free_port()),
        }
        if self.controllers:
            self.env["CONTROLLERS"] = self.controllers

    @property
    def kubeconfig(self) -> str:
        return str(self.run_dir / "kubeconfig")

    def start(self, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(HARNESS)], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        subprocess.run(["bash", str(HARNESS), "stop"], env=self.env, capture_output=True, timeout=60)

    def log(self, name: str = "kube-apiserver") -> str:
        path = self.run_dir / "run" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.env['API_PORT']}"

    def http(self) -> httpx.Client:
        """An administrator's client (the harness's admin certificate, system:masters),
        independent of the code under test."""
        tls = self.tls()
        tls.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
        return httpx.Client(base_url=self.url, verify=tls, timeout=30)

    @staticmethod
    def tls() -> ssl.SSLContext:
        """What verifies the API server's certificate (the harness's CA)."""
        return ssl.create_default_context(cafile=str(PKI / "ca.crt"))

    def requests(self, verb: str, resource: str, code: str | None = None) -> float:
        """How many ``verb`` requests (GET, LIST, WATCH, PATCH, ...) on ``resource`` the API
        server has answered so far, with HTTP ``code`` if given: what clients really sent,
        counted by the server (its ``apiserver_request_total``)."""
        with self.http() as admin:
            text = admin.get("/metrics").raise_for_status().text
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name != "apiserver_request_total":
                    continue
                if labels.get("verb") == verb and labels.get("resource") == resource:
                    if code is None or labels.get("code") == code:
                        total += sample.value
        return total

    def token(self, namespace: str, account: str) -> str:
        """A token of ServiceAccount ``namespace/account`` from the TokenRequest API: what
        the kubelet projects into a pod that runs as it."""
        with self.http() as admin:
            answer = admin.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
            )
        return str(answer.raise_for_status().json()["status"]["token"])

    def as_pod(self, namespace: str, account: str, directory: Path) -> tuple[dict[str, str], tuple[str, ...]]:
        """The environment and the command prefix under which a process sees what a
        container of a pod running as ServiceAccount ``namespace/account`` sees: the
        ``KUBERNETES_SERVICE_*`` variables and, in a mount namespace of its own, the token,
        the cluster's CA and the namespace in ``/var/run/secrets/kubernetes.io/serviceaccount``.
        Needs root (the mount namespace); the prefix execs the command, keeping its pid."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(self.token(namespace, account))
        (directory / "ca.crt").write_bytes((PKI / "ca.crt").read_bytes())
        (directory / "namespace").write_text(namespace)
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": self.env["API_PORT"]}
        script = (
            "mount --make-rprivate / && mount -t tmpfs pod-run /run && "
            'mkdir -p /run/secrets/kubernetes.io && ln -s "$0" /run/secrets/kubernetes.io/serviceaccount '
            '&& exec "$@"'
        )
        return env, ("unshare", "-m", "sh", "-c", script, str(directory))


# where each resource a test writes lives (a namespaced path takes the namespace)
PATHS = {
    "nodes": "/api/v1/nodes",
    "namespaces": "/api/v1/namespaces",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "services": "/api/v1/namespaces/{ns}/services",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "serviceaccounts": "/api/v1/namespaces/{ns}/serviceaccounts",
    "runtimeclasses": "/apis/node.k8s.io/v1/runtimeclasses",
    "verticalpodautoscalers": "/apis/autoscaling.k8s.io/v1/namespaces/{ns}/verticalpodautoscalers",
}


class Objects:
    """Objects written to a real API server the way a test describes them, status included:
    ``put`` creates or replaces an object (a pod, whose spec is immutable, has its labels
    and annotations replaced) and then writes its ``status`` through the status
    subresource, as a kubelet or a controller would; a Node's taints are the ones given (the
    API server taints a new Node not-ready, as if a kubelet had yet to report)."""

    def __init__(self, server: ApiServer) -> None:
        self.admin = server.http()

    def close(self) -> None:
        self.admin.close()

    @staticmethod
    def _collection(resource: str, namespace: str = "") -> str:
        return PATHS[resource].format(ns=namespace)

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        collection = self._collection(resource, meta.get("namespace", ""))
        path = f"{collection}/{meta['name']}"
        body = {k: v for k, v in copy.deepcopy(obj).items() if k != "status"}
        current = self.admin.get(path)
        if current.status_code == 404:
            stored = self.admin.post(collection, json=body).raise_for_status().json()
        elif resource == "pods":  # a merge patch: null removes what the new object lacks
            had = current.raise_for_status().json()["metadata"]
            patch = {
                "metadata": {
                    key: {**dict.fromkeys(had.get(key) or {}), **(meta.get(key) or {})}
                    for key in ("labels", "annotations")
                }
            }
            stored = self._merge(path, patch)
        else:
            old = current.raise_for_status().json()
            body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if resource == "services":
                body["spec"]["clusterIP"] = old["spec"]["clusterIP"]
            stored = self.admin.put(path, json=body).raise_for_status().json()
        if resource == "nodes":
            stored = self._merge(path, {"spec": {"taints": obj.get("spec", {}).get("taints")}})
        if "status" in obj:
            stored = self._merge(f"{path}/status", {"status": obj["status"]})
        return stored

    def _merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self.admin.patch(path, content=json.dumps(patch), headers=headers).raise_for_status().json()

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        """Gone at once (no kubelet is there to confirm a pod's graceful end); absent is fine."""
        path = f"{self._collection(resource, namespace)}/{name}"
        answer = self.admin.delete(path, params={"gracePeriodSeconds": 0})
        if answer.status_code != 404:
            answer.raise_for_status()

    def items(self, resource: str, namespace: str = "") -> list[dict[str, Any]]:
        answer = self.admin.get(self._collection(resource, namespace))
        return [] if answer.status_code == 404 else list(answer.raise_for_status().json()["items"])


def unavailable(why: str) -> NoReturn:
    """Skip, saying why; under CI, where the harness's tools are installed, fail instead."""
    support.unavailable(f"the real API server: {why}")


def started(prefix: str, controllers: str = "") -> ApiServer:
    """A fresh API server on an empty etcd, in a new run directory (removed by ``finish``).

    A free port is only free when it is looked at: if another process takes one before etcd
    or the API server binds it, the start is tried again on new ports (three times in all).
    Whatever happens to the test process, its servers are stopped when it exits."""
    if os.geteuid() != 0:
        unavailable("the API server harness installs Debian packages and needs root")
    tail = ""
    for _ in range(3):
        server = ApiServer(Path(tempfile.mkdtemp(prefix=f"{prefix}-")), controllers)
        done = server.start()
        if done.returncode == 0:
            atexit.register(_stop_if_running, server)
            return server
        tail = (done.stdout + done.stderr)[-1500:]
        finish(server)
        if "address already in use" not in tail.lower():
            break
    unavailable(f"could not build or start kube-apiserver: {tail}")


def _stop_if_running(server: ApiServer) -> None:
    if server.run_dir.exists():  # not finished yet
        finish(server)


def finish(server: ApiServer) -> None:
    server.stop()
    shutil.rmtree(server.run_dir, ignore_errors=True)
