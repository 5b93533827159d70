"""Observed usage from the metrics.k8s.io API, through the real `kubernetes` client against
the list/watch-speaking test server (meshed pods watched, PodMetrics polled)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import httpx
import jsonpatch
import pytest

from tests.fake_apiserver import FakeAPIServer, meshed_pod, namespace, node, pod_metrics, trust_roots
from tests.servers import make_certs, serve_process
from tests.support import TRUST_ANCHORS, anchored_policy, eventually, owned_pod_review
from webhook.cluster.live import api_client
from webhook.dataplane import PROXY_NAMES
from webhook.decide.sizing import from_observed
from webhook.usage.history import UsageHistory
from webhook.usage.metricsapi import MetricsApiUsage
from webhook.usage.samples import Sample, summarize
from webhook.workload import WorkloadKey


def web_review() -> dict:
    return owned_pod_review(
        "shop", "ReplicaSet", "web-59c6b7d8f4", {"app": "web", "pod-template-hash": "59c6b7d8f4"}
    )


POLICY = anchored_policy("sizing: {minSamples: 2, minSpan: 1h}")
WEB = WorkloadKey("shop", "Deployment", "web")
DB = WorkloadKey("data", "StatefulSet", "db")
MI = 2**20


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def fake(tmp_path):
    server = FakeAPIServer()
    server.put("nodes", node("n1", "6.8.0-45-generic", kubelet="v1.33.1"))
    server.put("namespaces", namespace("shop", {"mesh-injector.io/inject": "enabled"}))
    server.put("namespaces", namespace("data", {"mesh-injector.io/inject": "enabled"}))
    server.put("configmaps", trust_roots(TRUST_ANCHORS))
    labels = {"app": "web", "pod-template-hash": "59c6b7d8f4"}
    for name in ("web-59c6b7d8f4-aaaaa", "web-59c6b7d8f4-bbbbb"):
        server.put("pods", meshed_pod(name, "shop", ("ReplicaSet", "web-59c6b7d8f4"), labels=labels))
    server.put("pods", meshed_pod("plain", "shop", meshed=False))
    server.start()
    yield server, server.kubeconfig(tmp_path / "kubeconfig")
    server.stop()


def source(kubeconfig, policy=POLICY) -> MetricsApiUsage:
    usage = MetricsApiUsage(api_client(str(kubeconfig)), UsageHistory(policy.sizing), interval=1.0)
    usage.watch_pods()  # the tests poll by hand
    eventually(lambda: usage.pods.synced)
    return usage


def test_hand_computed_sizing_from_polled_readings(fake):
    """Two readings of web's proxies: 100m / 100Mi now (weight 1) and 1000m / 200Mi one
    half-life ago (weight 0.5). Total 1.5; p90 needs 1.35 -> 1000m; p95 of memory -> 200Mi.
    requests = 1000m × 1.15 = 1150m and 200Mi × 1.15 = 230Mi; memory limit 1.5 × 200Mi."""
    server, kubeconfig = fake
    usage = source(kubeconfig)
    try:
        now = float(int(time.time()))
        day = 86400.0
        server.pod_metrics = [
            pod_metrics("web-59c6b7d8f4-aaaaa", "shop", rfc3339(now - day), "1", "200Mi"),
            pod_metrics("plain", "shop", rfc3339(now), "3", "1Gi", meshed=False),  # not a proxy
        ]
        usage.once(now + 1)
        server.pod_metrics = [
            pod_metrics("web-59c6b7d8f4-bbbbb", "shop", rfc3339(now), "100000000n", "102400Ki")
        ]
        summaries = usage.once(now + 2)
        web = summaries[WEB]
        assert (web.count, web.cpu_p, web.cpu_max) == (2, 1.0, 1.0)
        assert web.span == pytest.approx(day, abs=0.1)
        assert web.memory_p == 200 * MI and web.memory_max == 200 * MI
        assert set(summaries) == {WEB}
        res = from_observed(web, POLICY).as_k8s()
        assert res == {"requests": {"cpu": "1150m", "memory": "230Mi"}, "limits": {"memory": "300Mi"}}
    finally:
        usage.stop()


def test_readings_are_counted_once_and_joined_to_workloads(fake):
    server, kubeconfig = fake
    start = float(int(time.time())) - 7200
    server.put(
        "pods",
        meshed_pod("db-0", "data", ("StatefulSet", "db"), oom_finished_at=rfc3339(start + 600)),
    )
    usage = source(kubeconfig)
    try:
        eventually(lambda: usage.pods.get("data/db-0") == DB)
        readings: list[Sample] = []
        for i in range(40):
            t = start + 60 * i
            cpu, mem = 0.05 + 0.005 * (i % 9), (60 + i % 7) * MI
            server.pod_metrics = [
                pod_metrics(
                    "web-59c6b7d8f4-aaaaa", "shop", rfc3339(t), f"{round(cpu * 1000)}m", f"{mem // MI}Mi"
                ),
                pod_metrics("db-0", "data", rfc3339(t), "200m", "300Mi"),
                pod_metrics("gone-pod", "shop", rfc3339(t), "1", "1Gi"),  # not in the pod cache
            ]
            readings.append(Sample(t, round(cpu * 1000) / 1000, float(mem // MI * MI)))
            usage.once(t + 1)
            usage.once(t + 2)  # metrics-server has not scraped again: the same reading, not counted
        summaries = usage.summaries()
        web = summaries[WEB]
        exact = summarize(readings, POLICY.sizing, start + 60 * 39 + 2)
        assert web.count == exact.count == 40
        assert web.span == pytest.approx(exact.span, abs=0.1)
        assert web.cpu_max == exact.cpu_max and web.memory_max == exact.memory_max
        assert exact.cpu_p <= web.cpu_p <= exact.cpu_p * 1.05
        assert exact.memory_p <= web.memory_p <= exact.memory_p * 1.05
        db = summaries[DB]
        assert db.count == 40 and db.oom_recent is True  # lastState OOMKilled half an hour before
        assert usage.unmatched == 40  # gone-pod, once per fresh reading
        # an unmeshed pod is neither watched nor polled
        assert usage.pods.get("shop/plain") is None
    finally:
        usage.stop()


def test_two_instances_polling_alike_agree(fake):
    server, kubeconfig = fake
    a, b = source(kubeconfig), source(kubeconfig)
    try:
        now = float(int(time.time()))
        for i in range(5):
            server.pod_metrics = [
                pod_metrics(
                    "web-59c6b7d8f4-aaaaa", "shop", rfc3339(now - 300 + 60 * i), f"{100 + 10 * i}m", "64Mi"
                ),
                pod_metrics(
                    "web-59c6b7d8f4-bbbbb", "shop", rfc3339(now - 300 + 60 * i), "90m", f"{70 + i}Mi"
                ),
            ]
            assert a.once(now + i) == b.once(now + i)
        assert a.summaries()[WEB].count == 10
    finally:
        a.stop()
        b.stop()


def test_an_absent_metrics_api_delays_readiness_only_so_long(fake):
    """Without metrics-server the source never reads; after ``ready_after`` it lets the
    webhook serve anyway (profiles for every workload) rather than leave pods unmeshed."""
    server, kubeconfig = fake
    server.metrics_down = True
    usage = MetricsApiUsage(api_client(str(kubeconfig)), UsageHistory(POLICY.sizing), interval=0.2)
    usage.ready_after = 60.0
    now = [1000.0]
    usage.clock = lambda: now[0]  # the start-up time is moved by hand, not waited for
    usage.start(lambda: None)
    try:
        eventually(lambda: server.metrics_calls >= 2, 30)
        assert not usage.ready(), "failed reads alone do not make it ready"
        now[0] += 59.0
        assert not usage.ready() and usage.age_seconds() == 59.0
        now[0] += 1.5  # past ready_after
        assert usage.ready() and usage.summaries() == {} and usage.failures >= 2
        server.metrics_down = False
        server.pod_metrics = [pod_metrics("web-59c6b7d8f4-aaaaa", "shop", rfc3339(time.time()), "1", "1Gi")]
        eventually(lambda: WEB in usage.summaries(), 30)  # and it reads once the API is back
    finally:
        usage.stop()


def test_serve_sizes_from_the_metrics_api_and_survives_its_outage(fake, tmp_path):
    server, kubeconfig = fake
    now = time.time()
    policy = tmp_path / "policy.yaml"
    policy.write_text("sizing: {minSamples: 2, minSpan: 1h}\n")
    server.pod_metrics = [pod_metrics("web-59c6b7d8f4-aaaaa", "shop", rfc3339(now - 7200), "400m", "150Mi")]
    certs = make_certs(tmp_path / "certs")
    args = (
        "--kubeconfig",
        str(kubeconfig),
        "--metrics-api",
        "--usage-interval",
        "1",
        "--policy",
        str(policy),
    )
    with serve_process(certs, *args) as proc:
        client = httpx.Client(verify=certs.client_context(), base_url=proc.url, timeout=10)
        eventually(lambda: client.get("/readyz").status_code == 200, 20)
        eventually(lambda: server.metrics_calls >= 1)
        server.pod_metrics = [pod_metrics("web-59c6b7d8f4-bbbbb", "shop", rfc3339(now), "100m", "100Mi")]

        def proxy_resources() -> dict:
            resp = client.post("/mutate", json=web_review()).json()["response"]
            pod = jsonpatch.apply_patch(
                web_review()["request"]["object"], json.loads(base64.b64decode(resp["patch"]))
            )
            assert pod["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"].startswith(
                "observed"
            )
            everything = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
            return next(c for c in everything if c["name"] in PROXY_NAMES)["resources"]

        # p90 of {100m: w, 400m: w/2^(2h/24h)} -> 400m: 460m; memory p95 -> 150Mi: 173Mi
        want = {"requests": {"cpu": "460m", "memory": "173Mi"}, "limits": {"memory": "225Mi"}}
        eventually(lambda: _quiet(proxy_resources) == want, 15)
        server.metrics_down = True  # metrics-server goes away: the last summaries stay in use
        calls = server.metrics_calls
        eventually(lambda: server.metrics_calls > calls + 1, 15)
        assert proxy_resources() == want
        metrics = httpx.get(proc.metrics_url).text
        failures = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("mesh_injector_usage_read_failures")
        )
        assert failures >= 1
        assert "mesh_injector_usage_workloads 1.0" in metrics
        server.metrics_down = False
        client.close()
        assert proc.stop() == 0
        logs = proc.stdout.read_text() + proc.stderr.read_text()
        assert (
            "usage from metrics-api: HTTP 503: ServiceUnavailable: the server is currently unable" in logs
            and "keeping the last summaries" in logs
        )


def _quiet(fn):
    try:
        return fn()
    except (AssertionError, KeyError, StopIteration):
        return None
