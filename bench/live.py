"""Benchmark of the live cluster view (against tests/fake_apiserver.py, the list/watch
wire-format server the tests use).

    python bench/live.py

Prints: time to the first full sync of 5,000 nodes, 2,000 namespaces and 500 Services;
snapshot rebuild time after one node change; admit() p50/p99 while node updates stream in
at ~100/s, against the same measured with no updates; and the RSS of `mesh-injector serve
--kubeconfig` holding that cluster plus usage summaries for 10,000 workloads, against the
RSS of the same server on embedded defaults; and the RSS with the same cluster and a
live metrics-API usage history for 10,000 workloads.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from core import make_nodes, typical_review  # noqa: E402

from tests.fake_apiserver import FakeAPIServer, meshed_pod, namespace, pod_metrics, service  # noqa: E402
from tests.servers import Certs, make_certs, serve_process  # noqa: E402
from tests.support import eventually  # noqa: E402
from webhook.admission import admit  # noqa: E402
from webhook.cluster.live import LiveClusterView, api_client  # noqa: E402
from webhook.loading import load_policy  # noqa: E402
from webhook.usage.history import UsageHistory  # noqa: E402
from webhook.workload import WorkloadKey  # noqa: E402


def node_object(n) -> dict:
    spec = {"taints": [asdict(t) for t in n.taints]} if n.taints else {}
    if n.unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": dict(n.labels)},
        "spec": spec,
        "status": {"nodeInfo": {"kernelVersion": n.kernel, "kubeletVersion": n.kubelet}},
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[int(len(xs) * 0.99)]


def serve_rss(certs: Certs, *args: str) -> float:
    """RSS of a real `mesh-injector serve` once it is ready (and has settled for 2 s)."""
    with serve_process(certs, *args) as proc:
        ctx = certs.client_context()
        eventually(
            lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=120, every=0.2
        )
        time.sleep(2)
        return rss_mb(proc.proc.pid)


def metrics_api_history_rss(fake: FakeAPIServer, certs: Certs, kubeconfig: Path, rng: random.Random):
    """`serve --kubeconfig --metrics-api` with 10,000 meshed pods (one per workload) whose
    PodMetrics are served 24 times, each stamped 8 hours further back, so every workload's
    history holds readings in every slot."""
    workloads = 10_000
    names = []
    for w in range(workloads):
        ns, rs = f"team-{w % 2000}", f"app-{w}-58bc9d7f6"
        name = f"{rs}-x{w:05d}"
        names.append((name, ns))
        fake.put(
            "pods",
            meshed_pod(
                name, ns, ("ReplicaSet", rs), labels={"app": f"app-{w}", "pod-template-hash": "58bc9d7f6"}
            ),
        )
    now = time.time()
    readings = 0
    # each workload's proxy has its own level; readings move within 3x (CPU) and 1.5x (memory)
    levels = [(rng.uniform(0.02, 0.2), rng.uniform(40, 200) * 2**20) for _ in range(workloads)]

    def reading(r: int) -> list[tuple[float, float]]:
        gen = random.Random(r)
        return [
            (round(cpu * gen.uniform(1, 3), 3), float(round(mem * gen.uniform(1, 1.5) / 2**20) * 2**20))
            for cpu, mem in levels
        ]

    with serve_process(
        certs, "--kubeconfig", str(kubeconfig), "--metrics-api", "--usage-interval", "1"
    ) as proc:
        ctx = certs.client_context()
        eventually(
            lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=120, every=0.2
        )
        for r in range(24):
            stamp = datetime.fromtimestamp(now - r * 8 * 3600 - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            fake.pod_metrics = [
                pod_metrics(name, ns, stamp, f"{cpu * 1000:.0f}m", f"{mem / 2**20:.0f}Mi")
                for (name, ns), (cpu, mem) in zip(names, reading(r), strict=True)
            ]
            calls = fake.metrics_calls
            eventually(lambda calls=calls: fake.metrics_calls >= calls + 2, timeout=60, every=0.05)
            readings += workloads
        time.sleep(3)
        metrics = httpx.get(proc.metrics_url).text
        assert "mesh_injector_usage_workloads 10000.0" in metrics, "not every workload has usage"
        rss = rss_mb(proc.proc.pid)
    # the same history built here, for its size
    history = UsageHistory(load_policy().sizing)
    for r in range(24):
        for w, (cpu, mem) in enumerate(reading(r)):
            history.add(WorkloadKey("ns", "Deployment", f"app-{w}"), now - r * 8 * 3600 - 60, cpu, mem)
    stats = history.stats()
    return rss, readings, stats.buckets, stats.bytes


def main() -> None:
    rng = random.Random(3)
    fake = FakeAPIServer()
    nodes = make_nodes(5000, rng)
    for n in nodes:
        fake.put("nodes", node_object(n))
    for i in range(2000):
        fake.put(
            "namespaces", namespace(f"team-{i}", {"mesh-injector.io/inject": "enabled"} if i % 2 else {})
        )
    fake.put("namespaces", namespace("shop", {"mesh-injector.io/inject": "enabled"}))
    for i in range(500):
        fake.put(
            "services", service(f"svc-{i}", f"team-{i}", {"app": f"a{i}"}, [{"name": "http", "port": 80}])
        )
    fake.start()
    tmp = Path(tempfile.mkdtemp())
    kubeconfig = fake.kubeconfig(tmp / "kubeconfig")
    policy = load_policy()

    view = LiveClusterView(api_client(str(kubeconfig)), rebuild_interval=0.05)
    t = time.perf_counter()
    view.start()
    assert view.wait_ready(120)
    # as `serve` does once synced: what exists now is long-lived; the collector skips it
    gc.collect()
    gc.freeze()
    print(f"first full sync (5,000 nodes, 2,001 namespaces, 500 Services): {time.perf_counter() - t:.2f} s")

    changed = nodes[17]
    fake.put(
        "nodes",
        {
            **node_object(changed),
            "status": {"nodeInfo": {"kernelVersion": "5.4.0", "kubeletVersion": changed.kubelet}},
        },
    )
    deadline = time.monotonic() + 10
    while view.snapshot().nodes[changed.name].kernel != "5.4.0":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    rebuilds = []
    for _ in range(20):
        t = time.perf_counter()
        view.rebuild()
        rebuilds.append(time.perf_counter() - t)
    print(
        "snapshot rebuild after one node change, 5,000 nodes: "
        f"median {statistics.median(rebuilds) * 1000:.1f} ms, max {max(rebuilds) * 1000:.1f} ms "
        f"({len(view.snapshot().groups)} groups)"
    )

    request = typical_review()["request"]

    def measure(seconds: float) -> list[float]:
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            snap = view.snapshot()
            t = time.perf_counter()
            admit(request, snap, policy)
            out.append(time.perf_counter() - t)
            time.sleep(0.001)
        return out

    quiet = measure(4)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            n = nodes[i % len(nodes)]
            kernel = "6.1.0" if (i // len(nodes)) % 2 else n.kernel
            fake.put(
                "nodes",
                {
                    **node_object(n),
                    "status": {"nodeInfo": {"kernelVersion": kernel, "kubeletVersion": n.kubelet}},
                },
            )
            i += 1
            time.sleep(0.01)

    churner = threading.Thread(target=churn)
    churner.start()
    busy = measure(4)
    stop.set()
    churner.join()
    q50, q99 = percentiles(quiet)
    b50, b99 = percentiles(busy)
    print(
        f"admit() with no node events:          p50 {q50 * 1e6:6.0f} us  p99 {q99 * 1e6:6.0f} us "
        f"({len(quiet)} calls)"
    )
    print(
        f"admit() with ~100 node updates/s:     p50 {b50 * 1e6:6.0f} us  p99 {b99 * 1e6:6.0f} us "
        f"({len(busy)} calls, {view.rebuilds} rebuilds so far; ratio p99 {b99 / q99:.2f}x)"
    )
    view.stop()

    # RSS of the real server process
    certs = make_certs(tmp / "certs")
    usage = tmp / "usage.csv"
    now = time.time()
    with usage.open("w") as f:
        f.write("namespace,workload,timestamp,cpu,memory,oom\n")
        for w in range(10_000):
            for s in range(24):
                f.write(
                    f"team-{w % 2000},Deployment/app-{w},{now - s * 3600:.0f},{50 + (w + s) % 40}m,"
                    f"{60 + s % 9}Mi,false\n"
                )
    base = serve_rss(certs)
    live = serve_rss(certs, "--kubeconfig", str(kubeconfig), "--usage", str(usage))
    print(
        f"server RSS: embedded defaults {base:.0f} MB; 5,000 nodes + 2,001 namespaces + 500 Services + usage "
        f"file for 10,000 workloads (240,000 samples summarised) {live:.0f} MB"
    )
    history = metrics_api_history_rss(fake, certs, kubeconfig, rng)
    print(
        f"server RSS: the same cluster + metrics-API history of 10,000 workloads (10,000 meshed pods "
        f"watched, {history[1]:,} readings over 8 days, {history[2]:,} buckets, {history[3] / 2**20:.1f} MiB "
        f"of history buffers) {history[0]:.0f} MB "
        f"({history[0] / base:.2f}x embedded defaults)"
    )
    fake.stop()


if __name__ == "__main__":
    main()
