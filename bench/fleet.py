"""Benchmark of serve's fleet watch: memory of the pod cache and time of one audit.

    python bench/fleet.py [--pods 10000]

Builds ``--pods`` pods as the API server would hand them over (the example review's pod,
meshed, with names, owners, node names, status and managedFields as stored pods carry
them; one Deployment per 5 pods, a quarter of them unmeshed, a quarter injected by an older
policy), reduces them as the watch does (``slim_pod``) into a store like the informer's, and
prints the resident memory the store adds, and the time of one audit of all of them against
a bare baseline measured in the same run (decoding every pod from the JSON the API server sent).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import jsonpatch
import orjson

from webhook.admission import admit
from webhook.fleet.audit import State, audit
from webhook.fleet.watch import PodStore, count_states, expand
from webhook.loading import load_policy, load_snapshot

REPO = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stored_pods(n: int) -> list[dict]:
    policy = load_policy()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write("apiVersion: mesh-injector.io/v1\nkind: InjectionPolicy\n")
        f.write("proxy:\n  linkerd:\n    image: cr.l5d.io/linkerd/proxy:edge-24.5.1\n")
        f.flush()
        old = load_policy(f.name)
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(REPO / "examples" / "cluster.yaml"))
    review = json.loads((REPO / "examples" / "review.json").read_text())
    request = review["request"]
    base = request["object"]
    base["metadata"]["namespace"] = request["namespace"]
    shapes = [
        jsonpatch.apply_patch(base, admit(request, snapshot, policy).patch),
        jsonpatch.apply_patch(base, admit(request, snapshot, old).patch),
        copy.deepcopy(base),
        jsonpatch.apply_patch(base, admit(request, snapshot, policy).patch),
    ]
    managed = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {f"f:l{i}": {} for i in range(12)}}},
        }
    ]
    out = []
    for i in range(n):
        pod = copy.deepcopy(shapes[(i // 5) % 4])
        deploy = f"svc-{i // 5:05d}"
        meta = pod["metadata"]
        meta["name"] = f"{deploy}-7d9c8b6f5-{i:05d}"
        meta["uid"] = f"00000000-0000-4000-8000-{i:012d}"
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": f"{deploy}-7d9c8b6f5",
                "controller": True,
                "uid": f"10000000-0000-4000-8000-{i // 5:012d}",
            }
        ]
        meta["labels"] = {**meta.get("labels", {}), "app": deploy, "pod-template-hash": "7d9c8b6f5"}
        meta["managedFields"] = managed
        pod["spec"]["nodeName"] = ("ip-10-0-1-11", "ip-10-0-2-12")[i % 2]
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_767_225_600 + 7 * i))  # 2026-01-01 on
        pod["status"] = {
            "phase": "Running",
            "startTime": started,
            "podIP": f"10.1.{i // 250}.{i % 250}",
            "conditions": [
                {"type": t, "status": "True"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": True,
                    "restartCount": 0,
                    "image": c["image"],
                    "imageID": "sha256:" + "0" * 64,
                    "containerID": "containerd://" + "1" * 64,
                    "state": {"running": {"startedAt": started}},
                }
                for c in pod["spec"]["containers"]
            ],
        }
        out.append(pod)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    args = parser.parse_args()
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(REPO / "examples" / "cluster.yaml"))
    raw_pages = [orjson.dumps(p) for p in stored_pods(args.pods)]  # as the list call delivers them
    gc.collect()
    before = rss_mib()
    slim = PodStore()
    store = {}
    for i, page in enumerate(raw_pages):
        store[i] = slim.slim(orjson.loads(page))
    gc.collect()
    added = rss_mib() - before
    kept = sum(len(v) for v in {id(p.shared): p.shared for p in store.values()}.values())
    full = sum(len(p) for p in raw_pages)
    print(
        f"{args.pods:,} pods: the cache adds {added:.1f} MiB RSS ({kept / 2**20:.1f} MiB of shared JSON; "
        f"the API server sent {full / 2**20:.1f} MiB)"
    )
    t0 = time.perf_counter()
    decoded = [orjson.loads(p) for p in raw_pages]
    baseline = time.perf_counter() - t0
    del decoded
    for label in ("first audit (cold memo)", "next audit"):
        t0 = time.perf_counter()
        report = audit(expand(list(store.values())), snapshot, policy)
        took = time.perf_counter() - t0
        totals = {s.value: n for s, n in report.totals().items() if n}
        ratio = took / baseline
        print(f"audit verb, {label}: {took:.2f} s ({ratio:.1f}x the bare decode, {baseline:.3f} s); {totals}")
    t0 = time.perf_counter()
    counts = count_states(list(store.values()), snapshot, policy, 0.2)  # what serve's refresh runs
    took = time.perf_counter() - t0
    print(
        f"serve's refresh (one pod per template and node): {took:.2f} s "
        f"({took / baseline:.1f}x the bare decode); gauges {sorted(counts.items())}"
    )
    assert report.totals()[State.MISSED] > 0 and report.totals()[State.STALE] > 0


if __name__ == "__main__":
    main()
