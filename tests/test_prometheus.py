"""The Prometheus usage source against a real Prometheus (Debian's ``prometheus``) whose
TSDB holds seven days of cAdvisor and kube-state-metrics series, backfilled with
``promtool tsdb create-blocks-from openmetrics``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import jsonpatch
import pytest
import yaml

from tests.fake_apiserver import trust_roots
from tests.promdata import (
    DAY,
    STEP,
    Pod,
    backfill,
    build_pods,
    expected_oom_steps,
    prometheus,
    write_openmetrics,
)
from tests.servers import make_certs, serve_process
from tests.support import (
    ANCHORS_POLICY,
    TRUST_ANCHORS,
    anchored_policy,
    eventually,
    owned_pod_review,
    unavailable,
)
from webhook.dataplane import PROXY_NAMES
from webhook.decide.sizing import from_observed
from webhook.usage.history import UsageHistory
from webhook.usage.prometheus import PrometheusError, PrometheusUsage, prometheus_summaries
from webhook.usage.samples import Sample, summarize
from webhook.workload import WorkloadKey

if not (shutil.which("prometheus") and shutil.which("promtool")):
    unavailable("Debian's prometheus package is not installed (apt-get install prometheus)", module=True)


def web_review() -> dict:
    return owned_pod_review(
        "shop", "ReplicaSet", "web-59c6b7d8f4", {"app": "web", "pod-template-hash": "59c6b7d8f4"}
    )


POLICY = anchored_policy()
WINDOW = POLICY.sizing.window


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    base = tmp_path_factory.mktemp("prometheus")
    end = int(time.time() // STEP * STEP - STEP)
    pods = build_pods(end)
    write_openmetrics(base / "data.om", pods)
    backfill(base / "data.om", base / "data")
    with prometheus(base / "data") as url:
        yield url, end, pods


def reference(pods: list[Pod], until: int) -> dict[WorkloadKey, object]:
    """The readings the data was generated from, folded into a history by hand."""
    ref = UsageHistory(POLICY.sizing)
    start = ref.window_start(until)
    for pod in pods:
        if pod.workload is None:
            continue
        for t, (cpu, memory) in sorted(pod.readings.items()):
            if start <= t <= until:
                ref.add(pod.workload, t, cpu, memory)
        for t in expected_oom_steps(pod):
            if start <= t <= until:
                ref.add_oom(pod.workload, t)
    return ref.summaries(until)


def close(a, b) -> bool:
    fields = ("count", "span", "cpu_p", "memory_p", "cpu_max", "memory_max", "oom_recent")
    # times within a slot are kept as float32 seconds before its end: ~1/64 s
    return all(
        getattr(a, f) == getattr(b, f)
        if f in ("count", "oom_recent")
        else getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-9, abs=0.1 if f == "span" else 0)
        for f in fields
    )


def test_a_week_is_read_back_and_joined_to_workloads(prom):
    url, end, pods = prom
    source = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0)
    got = source.once(now=end + 10)
    want = reference(pods, end)
    assert set(got) == {
        WorkloadKey("shop", "Deployment", "web"),  # two ReplicaSets, owner from kube_replicaset_owner
        WorkloadKey("shop", "Deployment", "api"),  # no kube_replicaset_owner: pod-template-hash suffix
        WorkloadKey("data", "StatefulSet", "db"),
        WorkloadKey("batch", "CronJob", "report"),  # Job <name>-<digits>
        WorkloadKey("default", "Pod", "debug"),  # owner <none>
    }
    assert source.unmatched > 0  # the stray pod kube_pod_owner does not know
    for key in want:
        assert close(got[key], want[key]), (key, got[key], want[key])
    web = got[WorkloadKey("shop", "Deployment", "web")]
    # one reading per 5 minutes from the start of the oldest slot that counts: two pods
    # until the rollout three days ago (both ends counted), then the new ReplicaSet's pod
    start = UsageHistory(POLICY.sizing).window_start(end)
    assert end - WINDOW - WINDOW / 3 < start <= end - WINDOW
    rollout = end - 3 * DAY
    assert web.count == 2 * ((rollout - start) // STEP + 1) + 3 * DAY // STEP
    assert web.span == pytest.approx(end - start, abs=0.1)
    assert got[WorkloadKey("data", "StatefulSet", "db")].oom_recent is True  # 2 hours ago
    assert got[WorkloadKey("shop", "Deployment", "api")].oom_recent is False  # 3 days ago
    report = got[WorkloadKey("batch", "CronJob", "report")]
    assert report.count == 2 * 3600 // STEP and report.span == pytest.approx(2 * 3600 - STEP, abs=0.1)


def test_percentiles_follow_the_spec_formula(prom):
    """The exact decayed percentile of the same readings (SPEC formula, every sample kept)
    is never above the histogram's answer and at most one 5 % bucket below it."""
    url, end, pods = prom
    got = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0).once(now=end + 10)
    start = UsageHistory(POLICY.sizing).window_start(end)
    sizing = dataclasses.replace(POLICY.sizing, window=end - start)  # the same readings
    by_workload: dict[WorkloadKey, list[Sample]] = {}
    for pod in pods:
        if pod.workload is not None:
            by_workload.setdefault(pod.workload, []).extend(
                Sample(t, c, m) for t, (c, m) in pod.readings.items() if t >= start
            )
    for key, samples in by_workload.items():
        exact = summarize(samples, sizing, end)
        assert exact is not None
        assert exact.cpu_p <= got[key].cpu_p <= exact.cpu_p * 1.05 + 1e-12, key
        assert exact.memory_p <= got[key].memory_p <= exact.memory_p * 1.05, key
        assert got[key].cpu_max == pytest.approx(exact.cpu_max, rel=1e-9)
        assert got[key].count == exact.count
    # and sized by the formula: request = p × 1.15 rounded up, limit = 1.5 × max
    db = got[WorkloadKey("data", "StatefulSet", "db")]
    res = from_observed(db, POLICY).as_k8s()
    assert res["requests"]["cpu"] == f"{-(-db.cpu_p * 1.15 * 1000 // 1):.0f}m"
    oom_limit = max(1.5 * db.memory_max * 1.2, 1.5 * db.memory_max + 100 * 2**20)
    assert res["limits"]["memory"] == f"{-(-oom_limit // 2**20):.0f}Mi"


def test_following_steps_equal_one_backfill(prom):
    url, end, _ = prom
    one = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0).once(now=end + 10)
    stepwise = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0, max_points=500)
    stepwise.once(now=end - 6 * 3600)  # small chunks: the query is split many times
    for k in range(6 * 3600 // STEP, -1, -1):
        got = stepwise.once(now=end - k * STEP + 10)
    assert stepwise.queries > 40
    assert set(got) == set(one)
    for key in one:
        assert close(got[key], one[key]), key


def test_prometheus_errors_are_clear_and_keep_the_last_summaries(prom):
    url, end, _ = prom
    source = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0)
    before = source.once(now=end + 10)
    source.url = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(PrometheusError, match=r"127\.0\.0\.1:9/api/v1/query"):
        source.once(now=end + STEP + 10)
    assert source.summaries() == before
    with pytest.raises(PrometheusError, match=r"HTTP 400: .*parse error"):
        PrometheusUsage(url, UsageHistory(POLICY.sizing)).instant("sum(", end)


def test_recommend_and_review_read_prometheus_once(prom, tmp_path):
    url, end, _ = prom
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end + 70))
    out = subprocess.run(
        [sys.executable, "-m", "webhook", "recommend", "--prometheus", url, "--now", now],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summaries = prometheus_summaries(url, POLICY.sizing, end + 70)
    db = from_observed(summaries[WorkloadKey("data", "StatefulSet", "db")], POLICY).as_k8s()
    line = next(row for row in out.splitlines() if row.startswith("data/StatefulSet/db"))
    assert db["requests"]["cpu"] in line and db["limits"]["memory"] in line and "observed" in line
    assert "batch/CronJob/report" in out and "too few samples" in out  # 2 hours < minSpan 6h

    # review: a pod of db, as the webhook would answer it with that usage
    review = tmp_path / "review.json"
    labels = {"app": "db", "mesh-injector.io/inject": "enabled"}
    review.write_text(json.dumps(owned_pod_review("data", "StatefulSet", "db", labels)))
    pod = yaml.safe_load(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook",
                "review",
                str(review),
                "--prometheus",
                url,
                "--now",
                now,
                "--show",
                "pod",
                "--policy",
                str(ANCHORS_POLICY),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    proxy = next(
        c
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        if c["name"] in PROXY_NAMES
    )
    assert proxy["resources"] == db
    assert pod["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"].startswith("observed")

    bad = subprocess.run(
        [sys.executable, "-m", "webhook", "recommend", "--prometheus", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "127.0.0.1:9" in bad.stderr and "Traceback" not in bad.stderr


def test_two_replicas_give_the_same_answer(prom, tmp_path):
    """Two `serve --prometheus` processes started apart read the same grid of points from
    the same Prometheus: the same pod gets the same patch from either."""
    import httpx

    url, _, _ = prom
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": "shop", "labels": {"mesh-injector.io/inject": "enabled"}},
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": "n1"},
                        "status": {"nodeInfo": {"kernelVersion": "6.8.0", "kubeletVersion": "v1.33.1"}},
                    },
                    trust_roots(TRUST_ANCHORS),
                ],
            }
        )
    )
    args = ("--cluster", str(cluster), "--server-version", "1.33", "--prometheus", url)
    certs = make_certs(tmp_path)
    with serve_process(certs, *args) as first:
        time.sleep(1.5)
        with serve_process(certs, *args) as second:
            answers = []
            for proc in (first, second):
                with httpx.Client(verify=certs.client_context(), timeout=10) as http:
                    eventually(
                        lambda http=http, proc=proc: http.get(f"{proc.url}/readyz").status_code == 200, 30
                    )
                    resp = http.post(f"{proc.url}/mutate", json=web_review()).json()["response"]
                    answers.append(resp)
    assert answers[0]["patch"] == answers[1]["patch"]
    import base64

    patch = json.loads(base64.b64decode(answers[0]["patch"]))
    pod = jsonpatch.apply_patch(web_review()["request"]["object"], patch)
    assert pod["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"].startswith("observed")
    proxy = next(
        c for c in pod["spec"]["initContainers"] + pod["spec"]["containers"] if c["name"] in PROXY_NAMES
    )
    summaries = prometheus_summaries(url, POLICY.sizing, time.time())
    want = from_observed(summaries[WorkloadKey("shop", "Deployment", "web")], POLICY).as_k8s()
    assert proxy["resources"] == want


def test_history_memory_is_bounded_per_workload(prom):
    url, end, _ = prom
    history = UsageHistory(POLICY.sizing)
    PrometheusUsage(url, history, step=STEP, lag=0).once(now=end + 10)
    stats = history.stats()
    # 2,017 readings for db, yet a handful of buckets a slot
    assert stats.readings > 5000
    assert stats.buckets < 5 * 60


def test_a_point_that_cannot_be_a_proxys_reading_is_skipped_and_counted(tmp_path, caplog):
    """Two pods scraped alike for an hour; db-0's memory gauge is +Inf throughout (an
    exporter's overflow) and web's CPU counter is fine: web's readings are all kept, each of
    db-0's points is refused once and counted, and the poll logs one line naming one."""
    end = int(time.time() // STEP * STEP - STEP)
    start = end - 3600
    lines = {"cpu": [], "memory": [], "owner": []}
    pods = (
        ("shop", "web-59c6b7d8f4-k2x4p", "ReplicaSet", "web-59c6b7d8f4", "50331648"),
        ("data", "db-0", "StatefulSet", "db", "+Inf"),
    )
    for ns, pod, kind, owner, memory in pods:
        labels = f'namespace="{ns}",pod="{pod}",container="mesh-proxy"'
        for i, t in enumerate(range(start, end + 1, 60)):
            lines["cpu"].append(f"container_cpu_usage_seconds_total{{{labels}}} {6.0 * i} {t}")
            lines["memory"].append(f"container_memory_working_set_bytes{{{labels}}} {memory} {t}")
            lines["owner"].append(
                f'kube_pod_owner{{namespace="{ns}",pod="{pod}",owner_kind="{kind}",owner_name="{owner}",'
                f'owner_is_controller="true"}} 1 {t}'
            )
    data = tmp_path / "data.om"
    with data.open("w") as f:
        for name, kind, key in (
            ("container_cpu_usage_seconds", "counter", "cpu"),
            ("container_memory_working_set_bytes", "gauge", "memory"),
            ("kube_pod_owner", "gauge", "owner"),
        ):
            f.write(f"# TYPE {name} {kind}\n" + "\n".join(lines[key]) + "\n")
        f.write("# EOF\n")
    backfill(data, tmp_path / "tsdb")
    source = PrometheusUsage("", UsageHistory(POLICY.sizing), step=STEP, lag=0)
    with prometheus(tmp_path / "tsdb") as url, caplog.at_level("WARNING", logger="mesh_injector.usage"):
        source.url = url
        got = source.once(now=end + 10)
    web = got[WorkloadKey("shop", "Deployment", "web")]
    # a grid point every 5 minutes of the hour: 13 memory points, 12 CPU rates (none at the first)
    points = (end - start) // STEP + 1
    assert web.count == points - 1 and web.cpu_max == pytest.approx(0.1) and web.memory_max == 48 * 2**20
    assert WorkloadKey("data", "StatefulSet", "db") not in got
    assert source.refused == {"value": points, "time": 0}, "each of db-0's memory points, once"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"usage from prometheus: skipped {points} reading(s) that cannot be a proxy's: "
        "pod data/db-0: memory '+Inf' is out of range (a proxy's reading is finite and below 10^15); ..."
    )
