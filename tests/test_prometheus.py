"""The Prometheus usage source against a real Prometheus (Debian's ``prometheus``) whose
TSDB holds seven days of cAdvisor and kube-state-metrics series, backfilled with
``promtool tsdb create-blocks-from openmetrics``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
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
from webhook.usage.prometheus import PrometheusError, PrometheusUsage
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


# --- the oracle: the README's rules computed by hand over the readings the data holds -----
HALF_LIFE = 86400.0  # the policy's halfLife (24h)
OOM_LOOKBACK = 86400.0  # oomLookback (24h)
# "a ring of 4 time slots of window / 3: the slots that end inside the window plus the slot in
# progress count" (slots counted from the Unix epoch)
SLOT = 7 * DAY / 3


def history_start(now: float) -> float:
    return (now // SLOT - 3) * SLOT


@dataclasses.dataclass(frozen=True)
class ByHand:
    count: int
    span: float
    cpu_p: tuple[float, ...]  # the value, or two neighbours too close to call
    memory_p: tuple[float, ...]
    cpu_max: float
    memory_max: float
    oom_recent: bool


def weighted_percentile(readings: list[tuple[float, float]], pct: float) -> tuple[float, ...]:
    """The smallest value whose cumulative weight reaches ``pct`` % of the total. Where the
    target lies within 0.01 % of the total from a step of the cumulative weight, the
    history's float32 weights may tip the answer to the neighbouring value: then both are
    accepted (the history's own rounding, ~10⁻⁶ of the total, is well inside that)."""
    by_value: dict[float, float] = {}
    for value, weight in readings:
        by_value[value] = by_value.get(value, 0.0) + weight
    values = sorted(by_value)
    total = sum(by_value.values())
    target, tol = total * pct / 100, 1e-4 * total
    cumulative = list(itertools.accumulate(by_value[v] for v in values))
    i = next(i for i, acc in enumerate(cumulative) if acc >= target)
    below = i > 0 and target - cumulative[i - 1] <= tol
    above = i + 1 < len(values) and cumulative[i] - target <= tol
    return tuple(values[i - 1 : i + 2] if below and above else values[i - below : i + 1 + above])


def by_hand(pods: list[Pod], last: int, now: float) -> dict[WorkloadKey, ByHand]:
    """Every reading of a workload from the start of the history that counts at ``now`` up
    to the grid point ``last``, weighted 0.5^(age / halfLife) (any common factor cancels)."""
    start = history_start(now)
    rows: dict[WorkloadKey, list[tuple[int, float, float]]] = {}
    ooms: dict[WorkloadKey, list[int]] = {}
    for pod in pods:
        if pod.workload is None:
            continue  # kube_pod_owner does not know it
        for t, (cpu, memory) in pod.readings.items():
            if start <= t <= last:
                rows.setdefault(pod.workload, []).append((t, cpu, memory))
        ooms.setdefault(pod.workload, []).extend(t for t in expected_oom_steps(pod) if start <= t <= last)
    out = {}
    for key, readings in rows.items():
        weight = {t: 0.5 ** ((last - t) / HALF_LIFE) for t, _, _ in readings}
        stamps = [t for t, _, _ in readings]
        out[key] = ByHand(
            count=len(readings),
            span=max(stamps) - min(stamps),
            cpu_p=weighted_percentile([(c, weight[t]) for t, c, _ in readings], 90),
            memory_p=weighted_percentile([(m, weight[t]) for t, _, m in readings], 95),
            cpu_max=max(c for _, c, _ in readings),
            memory_max=max(m for _, _, m in readings),
            oom_recent=any(now - t <= OOM_LOOKBACK for t in ooms.get(key, ())),
        )
    return out


def matches(got, want: ByHand) -> bool:
    """Counts, memory (read back exactly) and OOM kills exactly; CPU within Prometheus's
    rate() rounding and the hair under the edge (the history reports the edge itself); the
    span within the float32 seconds a slot keeps (~1/64 s)."""
    return (
        got.count == want.count
        and got.oom_recent is want.oom_recent
        and got.memory_p in want.memory_p
        and got.memory_max == want.memory_max
        and any(got.cpu_p == pytest.approx(p, rel=1e-8) for p in want.cpu_p)
        and got.cpu_max == pytest.approx(want.cpu_max, rel=1e-8)
        and got.span == pytest.approx(want.span, abs=0.1)
    )


def sized_by_hand(want: ByHand) -> list[dict]:
    """The default policy's formula: requests p x 1.15 rounded up to 1m / 1Mi, the memory
    limit 1.5 x the maximum, raised after a recent OOM kill to max(x 1.2, + 100Mi); one
    answer per percentile the data leaves open (nearly always one)."""
    limit = 1.5 * want.memory_max
    if want.oom_recent:
        limit = max(limit * 1.2, limit + 100 * 2**20)
    limit_mi = math.ceil(round(limit / 2**20, 6))
    out = []
    for cpu_p in want.cpu_p:
        for memory_p in want.memory_p:
            cpu = math.ceil(round(cpu_p * 1.15 * 1000, 6))
            memory = math.ceil(round(memory_p * 1.15 / 2**20, 6))
            assert 10 <= cpu < 2000 and 32 <= memory < limit_mi <= 2048, "inside floor and cap"
            out.append(
                {
                    "requests": {"cpu": f"{cpu}m", "memory": f"{memory}Mi"},
                    "limits": {"memory": f"{limit_mi}Mi"},
                }
            )
    return out


def test_a_week_is_read_back_and_joined_to_workloads(prom):
    url, end, pods = prom
    source = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0)
    got = source.once(now=end + 10)
    want = by_hand(pods, end, end + 10)
    assert (
        set(got)
        == set(want)
        == {
            WorkloadKey("shop", "Deployment", "web"),  # two ReplicaSets, owner from kube_replicaset_owner
            WorkloadKey("shop", "Deployment", "api"),  # no kube_replicaset_owner: pod-template-hash suffix
            WorkloadKey("data", "StatefulSet", "db"),
            WorkloadKey("batch", "CronJob", "report"),  # Job <name>-<digits>
            WorkloadKey("default", "Pod", "debug"),  # owner <none>
        }
    )
    assert source.unmatched > 0  # the stray pod kube_pod_owner does not know
    for key in want:
        assert matches(got[key], want[key]), (key, got[key], want[key])
    web = got[WorkloadKey("shop", "Deployment", "web")]
    # one reading per 5 minutes from the start of the oldest slot that counts: two pods
    # until the rollout three days ago (both ends counted), then the new ReplicaSet's pod
    start = history_start(end + 10)
    assert end - WINDOW - WINDOW / 3 < start <= end - WINDOW
    rollout = end - 3 * DAY
    assert web.count == 2 * ((rollout - start) // STEP + 1) + 3 * DAY // STEP
    assert web.span == pytest.approx(end - start, abs=0.1)
    assert got[WorkloadKey("data", "StatefulSet", "db")].oom_recent is True  # 2 hours ago
    assert got[WorkloadKey("shop", "Deployment", "api")].oom_recent is False  # 3 days ago
    report = got[WorkloadKey("batch", "CronJob", "report")]
    assert report.count == 2 * 3600 // STEP and report.span == pytest.approx(2 * 3600 - STEP, abs=0.1)


def test_a_week_is_sized_by_the_formula(prom):
    """Each workload's resources from the summaries read back equal the formula applied by
    hand to the readings: the OOM bump for db (killed two hours ago), none for api."""
    url, end, pods = prom
    got = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0).once(now=end + 10)
    want = by_hand(pods, end, end + 10)
    for key in (WorkloadKey("data", "StatefulSet", "db"), WorkloadKey("shop", "Deployment", "api")):
        assert from_observed(got[key], POLICY).as_k8s() in sized_by_hand(want[key]), key
    assert want[WorkloadKey("data", "StatefulSet", "db")].oom_recent


def test_following_steps_equal_one_backfill(prom):
    url, end, pods = prom
    one = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0).once(now=end + 10)
    stepwise = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=STEP, lag=0, max_points=500)
    stepwise.once(now=end - 6 * 3600)  # small chunks: the query is split many times
    for k in range(6 * 3600 // STEP, -1, -1):
        got = stepwise.once(now=end - k * STEP + 10)
    assert stepwise.queries > 40
    assert set(got) == set(one)
    want = by_hand(pods, end, end + 10)
    for key in one:
        assert matches(got[key], want[key]) and matches(one[key], want[key]), key


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
    url, end, pods = prom
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end + 70))
    out = subprocess.run(
        [sys.executable, "-m", "webhook", "recommend", "--prometheus", url, "--now", now],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = sized_by_hand(by_hand(pods, end, end + 70)[WorkloadKey("data", "StatefulSet", "db")])
    line = next(row for row in out.splitlines() if row.startswith("data/StatefulSet/db"))
    assert "observed" in line
    assert any(db["requests"]["cpu"] in line and db["limits"]["memory"] in line for db in options), line
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
    assert proxy["resources"] in options
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

    url, end, pods = prom
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
    want = by_hand(pods, end, time.time())[WorkloadKey("shop", "Deployment", "web")]
    assert proxy["resources"] in sized_by_hand(want)


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
