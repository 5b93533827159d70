"""Benchmark of the admission core and the offline inject verb.

    python bench/core.py [--calls 10000] [--policy FILE] [--cluster FILE]

Prints admit() p50/p99 for one typical pod at 10, 500 and 5,000 nodes (a realistic mix
of zones, pools, instance types, taints, kernels and cordons, with Merbridge Ready on every
node, so the pod gets ebpf), the same for a pod whose
affinity names single hosts (the per-node path), a bare baseline measured in the same
run (orjson parse + dump of the same review: the least any webhook does), and the wall
time of `mesh-injector inject` on a 1,000-document manifest. ``--policy`` decides with that
policy (e.g. ``proxy: {flavour: istio}``); ``--cluster`` adds the ConfigMaps of a cluster file
(a control plane's: istiod's istio-sidecar-injector and mesh config) to the example's.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from webhook.admission import admit
from webhook.cluster.snapshot import Node, RedirectorState, Taint, build_snapshot, config_map_from_object
from webhook.loading import load_policy
from webhook.loading import parse_policy as load_policy_text

REPO = Path(__file__).resolve().parent.parent
KERNELS = [
    "6.1.112-124.190.amzn2023.x86_64",
    "6.8.0-1015-aws",
    "5.15.0-1052-aws",
    "5.10.223-212.873.amzn2.x86_64",
]
# the OS image each kernel comes with (status.nodeInfo.osImage), where nodes report one: the
# pools mid-way through a new image then run Amazon Linux 2023 with kubelet 1.33, which lacks
# legacy iptables
OS_IMAGES = {
    KERNELS[0]: "Amazon Linux 2023.6.20241212",
    KERNELS[1]: "Ubuntu 22.04.5 LTS",
    KERNELS[2]: "Ubuntu 20.04.6 LTS",
    KERNELS[3]: "Amazon Linux 2",
}
POOLS = [
    ("general", None),
    ("compute", None),
    ("memory", None),
    ("batch", "batch"),
    ("gpu", "nvidia.com/gpu"),
    ("infra", "infra"),
    ("spot", None),
    ("arm", "arch"),
]


def make_nodes(
    n: int, rng: random.Random, heterogeneous: bool = False, os_images: bool = False
) -> list[Node]:
    """Node groups as managed node pools make them: each pool one instance type and image
    (kernel, kubelet), spread over three zones; two pools are mid-way through an image
    rollout. ``heterogeneous`` instead varies every attribute independently (a stress case);
    ``os_images``: the nodes report their OS image too."""
    nodes = []
    for i in range(n):
        p = i % len(POOLS)
        pool, taint = POOLS[p]
        zone = "eu-west-1" + "abc"[(i // len(POOLS)) % 3]
        if heterogeneous:
            itype, kernel = (
                ["m7i.xlarge", "c7i.2xlarge", "r7i.xlarge", "m6g.large"][i % 4],
                KERNELS[(i // 8) % 4],
            )
            kubelet = "v1.32.3-eks-473151a" if i % 5 else "v1.31.6-eks-1552ad0"
        else:
            itype = [
                "m7i.xlarge",
                "c7i.2xlarge",
                "r7i.xlarge",
                "m7i.large",
                "g6.xlarge",
                "t3.large",
                "m7i.xlarge",
                "m7g.large",
            ][p]
            rolled = p in (1, 6) and i % 3 == 0  # two pools half-way through a new image
            kernel = KERNELS[p % 4] if not rolled else KERNELS[0]
            kubelet = "v1.32.3-eks-473151a" if not rolled else "v1.33.1-eks-1b3e656"
        labels = {
            "kubernetes.io/hostname": f"ip-10-{i // 250}-{i % 250}-{i % 7}",
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "arm64" if pool == "arm" else "amd64",
            "topology.kubernetes.io/zone": zone,
            "topology.kubernetes.io/region": "eu-west-1",
            "node.kubernetes.io/instance-type": itype,
            "pool": pool,
            "eks.amazonaws.com/nodegroup": f"{pool}-ng",
        }
        taints = (Taint(taint, "true", "NoSchedule"),) if taint else ()
        nodes.append(
            Node(
                name=labels["kubernetes.io/hostname"],
                labels=labels,
                taints=taints,
                unschedulable=rng.random() < 0.01,
                kernel=kernel,
                kubelet=kubelet,
                os_image=OS_IMAGES[kernel] if os_images else None,
            )
        )
    return nodes


# The control planes' ConfigMaps as the example cluster publishes them (the default flavour
# needs Linkerd's trust anchors)
CONFIG_MAPS = dict(
    found
    for found in (
        config_map_from_object(item)
        for item in yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text())["items"]
        if item.get("kind") == "ConfigMap"
    )
    if found is not None
)


def typical_review() -> dict:
    review = json.loads((REPO / "examples" / "review.json").read_text())
    pod = review["request"]["object"]
    app = pod["spec"]["containers"][0]
    app["env"] = [{"name": f"FEATURE_FLAG_{i}", "value": f"value-{i}-" + "x" * 20} for i in range(40)]
    app["volumeMounts"] = [
        {"name": f"cfg-{i}", "mountPath": f"/etc/app/cfg-{i}", "readOnly": True} for i in range(6)
    ]
    pod["spec"]["volumes"] = [
        {"name": f"cfg-{i}", "configMap": {"name": f"checkout-cfg-{i}"}} for i in range(6)
    ]
    pod["spec"]["nodeSelector"] = {"kubernetes.io/os": "linux"}
    pod["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "pool", "operator": "In", "values": ["general", "compute"]},
                            {
                                "key": "topology.kubernetes.io/zone",
                                "operator": "NotIn",
                                "values": ["eu-west-1c"],
                            },
                        ]
                    }
                ]
            }
        }
    }
    pod["metadata"]["managedFields"] = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}},
        }
    ]
    return review


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def time_calls(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--inject-only", action="store_true", help="only the inject verb on 1,000 documents")
    ap.add_argument("--policy", help="the policy to decide with (default: the built-in one)")
    ap.add_argument("--cluster", help="a cluster file whose ConfigMaps are added to the example's")
    args = ap.parse_args()
    policy = load_policy(args.policy)
    if args.cluster:
        docs = yaml.safe_load(Path(args.cluster).read_text())
        for item in docs["items"] if docs.get("kind") == "List" else [docs]:
            found = config_map_from_object(item) if item.get("kind") == "ConfigMap" else None
            if found is not None:
                CONFIG_MAPS[found[0]] = found[1]
    rng = random.Random(7)
    review = typical_review()
    raw = orjson.dumps(review)
    print(
        f"typical pod: {len(orjson.dumps(review['request']['object']))} bytes; {args.calls} calls per row; "
        "groups! = every node attribute varied independently (stress case)"
    )

    if not args.inject_only:
        base = time_calls(lambda: orjson.dumps(orjson.loads(raw)["request"]["uid"]), args.calls)
        b50, b99 = percentiles(base)
        print(f"{'baseline (orjson parse+dump)':<34} p50 {b50 * 1e6:8.1f} us  p99 {b99 * 1e6:8.1f} us")

        host_pod = copy.deepcopy(review)
        host_pod["request"]["object"]["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": ["ip-10-0-1-1", "ip-10-3-17-3"],
                                }
                            ]
                        }
                    ]
                }
            }
        }
        merbridge = RedirectorState(ready=True, mode=policy.proxy.flavour, cni_mode=True)
        for n, hetero in ((10, False), (500, False), (5000, False), (5000, True)):
            nodes = make_nodes(n, rng, hetero)
            snap = build_snapshot(
                nodes=nodes,
                namespaces={"shop": {"mesh-injector.io/inject": "enabled"}},
                config_maps=CONFIG_MAPS,
                # Merbridge Ready on every node (its DaemonSet), so pods get ebpf
                redirectors={node.name: (merbridge, f"linkerd/merbridge-{node.name}") for node in nodes},
            )
            request = review["request"]
            out = admit(request, snap, policy)
            assert out.injected, out.explanation

            counter = itertools.count()

            def cold(req=request, snap=snap):
                snap.memo.clear()
                snap.outcomes.clear()  # first pod of a workload: nothing memoised yet
                snap.templates.clear()
                return admit(req, snap, policy)

            def sibling(req=request, snap=snap, seq=counter):
                # another pod of the same workload (a StatefulSet's): a new object each time
                obj = dict(req["object"], metadata={**req["object"]["metadata"], "name": f"pod-{next(seq)}"})
                return admit({**req, "object": obj}, snap, policy)

            rows = (
                ("first pod of a workload", cold, request),
                ("another pod, same workload", sibling, request),
                ("identical pod (ReplicaSet)", None, request),
                ("hostname affinity, first pod", cold, host_pod["request"]),
            )
            for label, fn, req in rows:
                call = (
                    (lambda fn=fn, req=req: fn(req))
                    if fn
                    else (lambda req=req, snap=snap: admit(req, snap, policy))
                )
                p50, p99 = percentiles(time_calls(call, args.calls))
                print(
                    f"admit {n:>5} nodes ({len(snap.groups):>3} groups{'!' if hetero else ' '}) {label:<30} "
                    f"p50 {p50 * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us  ({p50 / b50:4.1f}x baseline)"
                )

        stages(review, policy, args.calls)

    def workload(i: int, kind: str, spec: dict) -> dict:
        template = {"metadata": {"labels": {"app": f"app-{i}"}}, "spec": copy.deepcopy(spec)}
        if kind in ("Job", "CronJob"):
            template["spec"]["restartPolicy"] = "Never"
        body = {"selector": {"matchLabels": {"app": f"app-{i}"}}, "template": template}
        if kind == "CronJob":
            body = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
        elif kind == "Job":
            body = {"template": template}
        api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
        return {
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": f"app-{i}", "namespace": "shop"},
            "spec": body,
        }

    heavy_spec = review["request"]["object"]["spec"]
    small_spec = {
        "containers": [
            {
                "name": "app",
                "image": "registry.example.com/app:1.0",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": f"E{j}", "value": "v"} for j in range(5)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            }
        ]
    }
    other = [
        lambda i: {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"app-{i}", "namespace": "shop"},
            "spec": {"selector": {"app": f"app-{i}"}, "ports": [{"name": "http", "port": 80}]},
        },
        lambda i: {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i}", "namespace": "shop"},
            "data": {"LOG_LEVEL": "info", "FEATURES": "a,b,c"},
        },
        lambda i: {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": f"sa-{i}", "namespace": "shop"},
        },
    ]
    mixes = {
        "kustomize-style mix (40% workloads)": [
            workload(i, ["Deployment", "StatefulSet", "Job", "CronJob"][i % 4], small_spec)
            if i % 5 < 2
            else other[i % 3](i)
            for i in range(1000)
        ],
        "1,000 workloads with the ~5 KB pod": [
            workload(i, ["Deployment", "StatefulSet", "DaemonSet", "Job"][i % 4], heavy_spec)
            for i in range(1000)
        ],
    }
    startup = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "webhook", "version"], capture_output=True, check=True)
        startup.append(time.perf_counter() - t)
    print(f"interpreter start + imports: {statistics.median(startup):.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        # the default (Linkerd) flavour needs trust anchors: without a cluster file, in the policy
        anchors = Path(tmp) / "anchors.yaml"
        anchors.write_text(
            yaml.safe_dump(
                {
                    "proxy": {
                        "linkerd": {
                            "trustAnchorsPem": CONFIG_MAPS[("linkerd", "linkerd-identity-trust-roots")][
                                "ca-bundle.crt"
                            ]
                        }
                    }
                }
            )
        )
        for label, docs in mixes.items():
            manifest = Path(tmp) / "big.yaml"
            manifest.write_text(yaml.safe_dump_all(docs))
            bare = []  # the same file read and written back by libyaml, nothing decided
            for _ in range(3):
                t = time.perf_counter()
                bare_cmd = [sys.executable, "-c", BARE_YAML, str(manifest)]
                subprocess.run(bare_cmd, capture_output=True, check=True)
                bare.append(time.perf_counter() - t)
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "webhook",
                        "inject",
                        "-f",
                        str(manifest),
                        "--kernel",
                        "6.1.0",
                        "--server-version",
                        "1.32",
                        "--policy",
                        str(anchors),
                    ],
                    capture_output=True,
                    text=True,
                )
                runs.append(time.perf_counter() - t)
                assert proc.returncode == 0, proc.stderr
                assert proc.stderr.count("injected with mode") >= 400, proc.stderr[-500:]
            print(
                f"inject, 1,000 documents, {label} ({manifest.stat().st_size // 1024} KiB): "
                f"{statistics.median(runs):.2f} s wall (median of 3); bare libyaml load+dump "
                f"{statistics.median(bare):.2f} s ({statistics.median(runs) / statistics.median(bare):.1f}x)"
            )


BARE_YAML = (
    "import sys, yaml; "
    "sys.stdout.write(yaml.dump_all(yaml.load_all(open(sys.argv[1]), Loader=yaml.CSafeLoader), "
    "Dumper=yaml.CSafeDumper))"
)


def distinct_workload(review: dict) -> dict:
    """``review`` with ``__SEQ__`` in everything that names its workload (Deployment,
    ReplicaSet, ``app`` label, generateName), and ``__TPL__`` (a string) and ``"__PORT__"``
    (a number, quotes included) in what a changed Deployment changes in its pod template: the
    image tag, a variable's value, an annotation, the container's port; and ``__UID__`` as
    the request's uid (the API server gives every request its own). ``fill`` replaces them:
    a new workload, or a new template, per request."""
    review["request"]["uid"] = "__UID__"
    pod = review["request"]["object"]
    meta = pod["metadata"]
    meta["generateName"] = "checkout-__SEQ__-7d9c8b6f5-"
    meta["labels"]["app"] = "checkout-__SEQ__"
    meta["ownerReferences"][0]["name"] = "checkout-__SEQ__-7d9c8b6f5"
    meta["ownerReferences"][0]["uid"] = "5d7c5d0e-__SEQ__"
    meta.setdefault("annotations", {})["example.com/build"] = "__TPL__"
    app = pod["spec"]["containers"][0]
    app["image"] = app["image"] + "-__TPL__"
    if app.get("env"):
        app["env"][len(app["env"]) // 2]["value"] = "__TPL__"
    app["ports"][0]["containerPort"] = "__PORT__"
    return review


def fill(raw: bytes, workload: str = "0", template: str = "0", port: int = 9090, uid: str = "") -> bytes:
    """A review of ``distinct_workload``'s placeholders filled in: ``workload`` names the
    workload, ``template`` and ``port`` set the template's varying parts (a new value of
    either is a pod template seen for the first time); the uid is ``uid`` after a fixed
    prefix."""
    return (
        raw.replace(b"__UID__", b"705ab4f5-6393-11e8-b7cc-" + uid.encode())
        .replace(b"__SEQ__", workload.encode())
        .replace(b"__TPL__", template.encode())
        .replace(b'"__PORT__"', str(port).encode())
    )


def template_port(i: int) -> int:
    """A container port per template, away from the ports a decision reads (Merbridge's
    in-pod 39807, the meshes' proxy ports and default opaque ports)."""
    return 10000 + i % 20000


def stages(review: dict, policy, calls: int) -> None:
    """Where a request's time goes on the server, for a distinct workload each time (what
    the template memo serves) and for the very first pod of a template (a full decision);
    then the first pod of a template in iptables mode with the generic flavour (which can use
    either iptables backend) on nodes that do not report their OS image and on the same nodes
    reporting it, where a pool without legacy iptables makes the pod's init container nft:
    what working out the nodes' backends costs a decision."""
    import logging

    from webhook.serve.app import _log_line
    from webhook.serve.metrics import Metrics
    from webhook.serve.review import build_response, parse_review

    snap = build_snapshot(
        nodes=make_nodes(500, random.Random(3)),
        namespaces={"shop": {"mesh-injector.io/inject": "enabled"}},
        config_maps=CONFIG_MAPS,
    )
    raw = orjson.dumps(distinct_workload(review))
    metrics = Metrics()
    log = logging.getLogger("bench.admission")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    log.setLevel(logging.INFO)
    generic = load_policy_text("proxy: {flavour: generic, image: 'reg/proxy:1', initImage: 'reg/init:1', "
                               "generic: {firewall: legacy}}")  # fmt: skip
    reported = build_snapshot(
        nodes=make_nodes(500, random.Random(3), os_images=True),
        namespaces={"shop": {"mesh-injector.io/inject": "enabled"}},
    )
    runs = (
        ("a distinct workload (template memo)", False, snap, policy, None),
        ("first pod of a template", True, snap, policy, None),
        ("generic, first pod, no OS images", True, snap, generic, "legacy"),
        ("generic, first pod, OS images", True, reported, generic, "nft"),
    )
    for label, fresh, cluster, chosen, firewall in runs:
        times: dict[str, list[float]] = {k: [] for k in ("parse", "decide", "serialise", "log", "metrics")}
        for i in range(calls):
            body = fill(raw, workload=str(i))
            if fresh:
                cluster.templates.clear()
            t0 = time.perf_counter()
            parsed = orjson.loads(body)
            parse_review(parsed)  # what serve checks of the review before deciding
            t1 = time.perf_counter()
            out = admit(parsed["request"], cluster, chosen)
            t2 = time.perf_counter()
            assert firewall is None or out.firewall == firewall, out.explanation
            orjson.dumps(build_response(parsed, out))
            t3 = time.perf_counter()
            log.info(_log_line(parsed["request"], out, out.result, t2 - t1).decode())
            t4 = time.perf_counter()
            metrics.count(out.result, out.mode.value if out.mode else "none", None, t2 - t1)
            t5 = time.perf_counter()
            for k, a, b in (("parse", t0, t1), ("decide", t1, t2), ("serialise", t2, t3), ("log", t3, t4)):
                times[k].append(b - a)
            times["metrics"].append(t5 - t4)
        parts = ", ".join(f"{k} {statistics.median(v) * 1e6:.1f}" for k, v in times.items())
        total = sum(statistics.median(v) for v in times.values()) * 1e6
        print(f"request stages, {label}: {parts} us (sum of medians {total:.1f} us)")


if __name__ == "__main__":
    main()
