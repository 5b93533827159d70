"""Generated pods for judging what admission emits against the API server's own validation:
realistic ones and adversarial ones (names the data planes add, forged status annotations,
names too long for a label value, odd probe ports, exclusions of every port, missing and
duplicate names, other meshes' marks). Deterministic for a seed.

    python -m tests.corpus [--seed N] [--count N]    # print a few, as JSON lines
"""

from __future__ import annotations

import argparse
import json
import random
import string
from typing import Any

VOLUME_NAMES = [
    "data",
    "cache",
    "linkerd-identity-end-entity",
    "workload-socket",
    "workload-certs",
    "mesh-proxy-run",
    "istio-token",
]
FORGED_STATUS = [
    '{"containers":["app"]}',
    '{"probes":{"app":{"image":"evil/image:1"}}}',
    '{"labels":["team"],"annotations":["team"]}',
    '{"volumes":["data","linkerd-identity-end-entity"],"initContainers":["setup"]}',
    '{"replaced":{"labels":{"team":"evil"}},"labels":["team"]}',
    "not json",
]
ANNOTATIONS = {
    "mesh-injector.io/interception": ["auto", "ebpf", "iptables", "microvm"],
    "mesh-injector.io/native-sidecar": ["true", "false"],
    "mesh-injector.io/skip-outbound-ports": ["5432", "8000-8100", "1-65535", "25,3306"],
    "mesh-injector.io/skip-inbound-ports": ["9102", "1-65535"],
    "traffic.sidecar.istio.io/excludeOutboundIPRanges": ["169.254.169.254/32", "10.0.0.0/8,fd00::/8"],
    "traffic.sidecar.istio.io/excludeOutboundPorts": ["25", "443"],
    "prometheus.io/scrape": ["true"],
    "prometheus.io/port": ["9102"],
    "mesh-injector.io/proxy-memory-limit": ["300Mi", "lots"],
    "team": ["web"],
}


def _name(rng: random.Random, lo: int = 3, hi: int = 12) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(
        rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(lo, hi) - 1)
    )


def _probe(rng: random.Random, ports: list[dict[str, Any]]) -> dict[str, Any]:
    named = [p["name"] for p in ports if "name" in p]
    port: Any = rng.choice([8080, *(p["containerPort"] for p in ports)])
    if named and rng.random() < 0.4:
        port = rng.choice(named)
    if rng.random() < 0.05:
        port = "²"  # a digit to str.isdigit, not to int()
    kind = rng.choice(["httpGet", "tcpSocket"])
    handler = {"path": "/ready", "port": port} if kind == "httpGet" else {"port": port}
    return {kind: handler, **({"periodSeconds": 7} if rng.random() < 0.3 else {})}


def _container(rng: random.Random, name: str, probes: bool = True) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": f"registry.example.com/{_name(rng)}:1"}
    ports = []
    for _ in range(rng.randint(0, 2)):
        p: dict[str, Any] = {"containerPort": rng.choice([8080, 9090, 9102, 5432, rng.randint(1024, 65535)])}
        if rng.random() < 0.5:
            p["name"] = rng.choice(["http", "grpc", "metrics", "https"]) + str(len(ports))
        if all(q["containerPort"] != p["containerPort"] for q in ports):
            ports.append(p)
    if ports:
        c["ports"] = ports
    if probes and rng.random() < 0.4:
        c["readinessProbe"] = _probe(rng, ports)
    if probes and rng.random() < 0.2:
        c["livenessProbe"] = _probe(rng, ports)
    if rng.random() < 0.3:
        c["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    return c


def pod(rng: random.Random, namespace: str) -> dict[str, Any]:
    """One pod, as a client would create it."""
    names = ["app", "web", "worker", "setup", "migrate"]
    rng.shuffle(names)
    if rng.random() < 0.08:  # a name the generic flavour gives its init container
        names[rng.choice([0, 3])] = "mesh-init"
    containers = [_container(rng, n) for n in names[: rng.randint(1, 2)]]
    spec: dict[str, Any] = {"serviceAccountName": "default", "containers": containers}
    if rng.random() < 0.3:
        spec["initContainers"] = [_container(rng, names[3], probes=False)]
    if rng.random() < 0.25:
        volumes = rng.sample(VOLUME_NAMES, rng.randint(1, 2))
        spec["volumes"] = [
            {"name": v, "csi": {"driver": "spiffe.csi.cert-manager.io"}}
            if rng.random() < 0.3
            else {"name": v, "emptyDir": {}}
            for v in volumes
        ]
    placement = rng.random()
    if placement < 0.15:  # onto a pool: its taint tolerated
        pool = rng.choice(["legacy", "gpu", "cos", "rhel", "odd", "amzn"])
        spec["nodeSelector"] = {"pool": pool}
        spec["tolerations"] = [{"operator": "Exists"}]
    elif placement < 0.2:
        spec["nodeName"] = rng.choice(["gen-a1", "legacy-1", "rhel-1"])
    elif placement < 0.25:
        spec["runtimeClassName"] = rng.choice(["kata-qemu", "gvisor"])
    elif placement < 0.3:
        spec["hostNetwork"] = True
    if rng.random() < 0.05:
        spec["containers"].append(dict(containers[0]))  # two containers of one name
    if rng.random() < 0.03:
        del spec["containers"][0]["name"]
    meta: dict[str, Any] = {"generateName": f"{_name(rng)}-", "namespace": namespace}
    labels: dict[str, str] = {}
    if rng.random() < 0.4:
        labels["app"] = _name(rng)
    if rng.random() < 0.15:
        labels["service.istio.io/canonical-name"] = _name(rng)
    if rng.random() < 0.3:
        stem = _name(rng, 50, 70) if rng.random() < 0.5 else _name(rng)
        labels["pod-template-hash"] = "5d8f7c9b6"
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": f"{stem}-5d8f7c9b6",
                "uid": "6a1f1a36-0000-4000-8000-000000000001",
                "controller": True,
            }
        ]
    if labels:
        meta["labels"] = labels
    annotations = {k: rng.choice(v) for k, v in ANNOTATIONS.items() if rng.random() < 0.12}
    if rng.random() < 0.1:
        annotations["mesh-injector.io/status"] = rng.choice(FORGED_STATUS)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def corpus(seed: int, count: int, namespace: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [pod(rng, namespace) for _ in range(count)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=25)
    ap.add_argument("--count", type=int, default=5)
    args = ap.parse_args()
    for p in corpus(args.seed, args.count, "corpus"):
        print(json.dumps(p))
