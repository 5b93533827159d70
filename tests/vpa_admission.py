"""A mutating webhook that does to a pod what the Vertical Pod Autoscaler's admission
controller does (kubernetes/autoscaler, vertical-pod-autoscaler 1.x,
``pkg/admission-controller/resource/pod``), for the end-to-end tests:

- the VPA is the one whose ``targetRef`` is the pod's Deployment (through its ReplicaSet);
- with ``updateMode`` not ``Off``, each of ``spec.containers`` whose policy (its own, else
  ``*``) is not ``Off`` gets the recommendation's ``target`` as its requests (the tests' VPAs
  control requests only, ``controlledValues: RequestsOnly``);
- ``vpaObservedContainers`` lists the names of ``spec.containers`` as it saw them, and
  ``vpaUpdates`` says what it changed.

It reads the VPAs (and their ``status.recommendation``) from the API server on each call.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client


def _mode(vpa: dict[str, Any], container: str) -> str:
    fallback = "Auto"
    for policy in ((vpa.get("spec") or {}).get("resourcePolicy") or {}).get("containerPolicies") or []:
        if policy.get("containerName") == container:
            return policy.get("mode", "Auto")
        if policy.get("containerName") == "*":
            fallback = policy.get("mode", "Auto")
    return fallback


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def patch_for(pod: dict[str, Any], vpas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "ReplicaSet"]
    hash_ = (meta.get("labels") or {}).get("pod-template-hash")
    if not owners or not hash_:
        return []
    deployment = owners[0]["name"].removesuffix(f"-{hash_}")
    vpa = next(
        (
            v
            for v in vpas
            if v["spec"]["targetRef"].get("kind") == "Deployment"
            and v["spec"]["targetRef"]["name"] == deployment
        ),
        None,
    )
    if vpa is None:
        return []
    containers = pod["spec"]["containers"]
    ops: list[dict[str, Any]] = []
    updates = []
    update_mode = ((vpa["spec"].get("updatePolicy") or {}).get("updateMode")) or "Recreate"
    recommendations = {
        r["containerName"]: r
        for r in ((vpa.get("status") or {}).get("recommendation") or {}).get("containerRecommendations") or []
    }
    for i, c in enumerate(containers):
        rec = recommendations.get(c["name"])
        if update_mode == "Off" or _mode(vpa, c["name"]) == "Off" or rec is None:
            continue
        if "resources" not in c:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/resources", "value": {}})
        if "requests" not in (c.get("resources") or {}):
            ops.append({"op": "add", "path": f"/spec/containers/{i}/resources/requests", "value": {}})
        for resource, value in rec["target"].items():
            ops.append(
                {"op": "add", "path": f"/spec/containers/{i}/resources/requests/{resource}", "value": value}
            )
        updates.append(f"container {i}: {', '.join(f'{r} request' for r in rec['target'])}")
    annotations = {"vpaObservedContainers": ", ".join(c["name"] for c in containers)}
    if updates:
        annotations["vpaUpdates"] = (
            f"Pod resources updated by {vpa['metadata']['name']}: {'; '.join(updates)}"
        )
    if "annotations" not in meta:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    for key, value in annotations.items():
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value})
    return ops


class FakeVpaAdmission:
    """The webhook, on 127.0.0.1 over TLS with the tests' serving certificate."""

    def __init__(self, api: client.ApiClient, cert: Path, key: Path) -> None:
        self.api = client.CustomObjectsApi(api)
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                outer.calls += 1
                listed = outer.api.list_namespaced_custom_object(
                    "autoscaling.k8s.io", "v1", request["namespace"], "verticalpodautoscalers"
                )
                ops = patch_for(request["object"], listed.get("items") or [])
                response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
                if ops:
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
                body = json.dumps(
                    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
