"""Observed usage is validated value by value as it is read: a CPU or memory value that is
not a finite quantity in range, or a time that is not one, is refused with its file and line
offline (exit 2; ``serve --usage`` does not start), and skipped and counted by the live
sources (the metrics API here; Prometheus in tests/test_prometheus.py). Before, such a row
loaded and every verb then ended in a traceback (``OverflowError`` in the sizes,
``timestamp out of range``), and ``serve`` admitted the workload's pods without a proxy."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.fake_apiserver import FakeAPIServer, meshed_pod, pod_metrics
from tests.servers import free_port
from tests.support import GOLDEN, anchored_policy, eventually
from tests.support import run_cli as run
from webhook.cluster.live import api_client
from webhook.serve.metrics import Metrics
from webhook.usage.history import UsageHistory
from webhook.usage.metricsapi import MetricsApiUsage
from webhook.workload import WorkloadKey

REPO = Path(__file__).resolve().parent.parent
MIXED = str(GOLDEN / "clusters" / "mixed.yaml")
HEADER = "namespace,workload,timestamp,cpu,memory\n"
GOOD = "shop,Deployment/web,2026-11-20T10:00:00Z,120m,48Mi\n"
NOW = "2026-11-21T00:00:00Z"
POLICY = anchored_policy("sizing: {minSamples: 1, minSpan: 1m}")
WEB = WorkloadKey("shop", "Deployment", "web")


# (the bad line, what the one-line message says of it)
BAD_ROWS = [
    ("shop,Deployment/web,2026-11-20T11:00:00Z,1e400,48Mi", "cpu '1e400' is out of range"),
    ("shop,Deployment/web,2026-11-20T11:00:00Z,120m,1e400", "memory '1e400' is out of range"),
    ("shop,Deployment/web,2026-11-20T11:00:00Z,120m,2000Pi", "memory '2000Pi' is out of range"),
    ("shop,Deployment/web,2026-11-20T11:00:00Z,NaN,48Mi", "cpu 'NaN' is not a quantity"),
    ("shop,Deployment/web,2026-11-20T11:00:00Z,120m,-48Mi", "memory '-48Mi' is negative"),
    ("shop,Deployment/web,1e20,120m,48Mi", "timestamp '1e20' is not a time between 1970 and 9999"),
    ("shop,Deployment/web,-1,120m,48Mi", "timestamp '-1' is not a time between 1970 and 9999"),
    (
        "shop,Deployment/web,yesterday,120m,48Mi",
        "timestamp 'yesterday' is not an RFC 3339 time (2026-11-20T10:00:00Z) or Unix seconds",
    ),
    ("shop Deployment/web 2026-11-20T11:00:00Z", "1 of the header's 5 comma-separated fields (no workload"),
    (",,2026-11-20T11:00:00Z,120m,48Mi", "missing namespace"),
    ("shop,,2026-11-20T11:00:00Z,120m,48Mi", "missing workload (Kind/name, e.g. Deployment/web)"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_a_value_that_is_not_a_reading_is_refused_with_its_file_and_line(row, message, tmp_path):
    usage = tmp_path / "u.csv"
    usage.write_text(HEADER + GOOD + row + "\n")
    out = run("recommend", "--usage", str(usage), "--now", NOW)
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith(f"mesh-injector: error: {usage}: line 3: {message}")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_json_lines_are_checked_alike(tmp_path):
    usage = tmp_path / "u.jsonl"
    usage.write_text(
        '{"namespace": "shop", "workload": "Deployment/web", "timestamp": 1763632800, "cpu": 0.1, '
        '"memory": 1}\n'
        '{"namespace": "shop", "workload": "Deployment/web", "timestamp": 1763632900, "cpu": 1e400, '
        '"memory": 1}\n'
    )
    out = run("recommend", "--usage", str(usage), "--now", NOW)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"mesh-injector: error: {usage}: line 2: cpu inf is out of range "
        "(a proxy's reading is finite and below 10^15)"
    )


@pytest.mark.parametrize(
    "verb",
    [
        ("check", "-f", "examples/app.yaml", "--cluster", "examples/cluster.yaml"),
        ("inject", "-f", "examples/app.yaml", "--cluster", "examples/cluster.yaml"),
        ("review", "examples/review.json", "--cluster", "examples/cluster.yaml"),
    ],
    ids=lambda v: v[0],
)
def test_every_dry_run_verb_refuses_the_file_instead_of_a_traceback(verb, tmp_path):
    """The rows the issue reported: each verb ended in OverflowError or 'timestamp out of range'."""
    for row, message in BAD_ROWS[:1] + BAD_ROWS[5:6]:
        usage = tmp_path / "u.csv"
        usage.write_text(HEADER + "shop,Deployment/checkout,2026-11-20T10:00:00Z,120m,48Mi\n" + row + "\n")
        out = run(*verb, "--usage", str(usage), "--now", NOW)
        assert out.returncode == 2, out.stderr
        assert out.stdout == ""
        assert out.stderr.startswith(f"mesh-injector: error: {usage}: line 3: {message}")
        assert len(out.stderr.strip().splitlines()) == 1


def test_serve_does_not_start_on_a_usage_file_it_cannot_read_as_readings(tmp_path):
    """It used to start and answer every review of the workload 'internal error, pod
    admitted without a proxy'."""
    usage = tmp_path / "u.csv"
    usage.write_text(HEADER + GOOD + BAD_ROWS[0][0] + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
            "--cluster",
            MIXED,
            "--usage",
            str(usage),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"mesh-injector: error: {usage}: line 3: cpu '1e400' is out of range "
        "(a proxy's reading is finite and below 10^15)"
    )


# --- the metrics API: skipped and counted ------------------------------------------------


@pytest.fixture
def metrics_api(tmp_path):
    server = FakeAPIServer()
    labels = {"app": "web", "pod-template-hash": "59c6b7d8f4"}
    for name in ("web-59c6b7d8f4-aaaaa", "web-59c6b7d8f4-bbbbb", "web-59c6b7d8f4-ccccc"):
        server.put("pods", meshed_pod(name, "shop", ("ReplicaSet", "web-59c6b7d8f4"), labels=labels))
    server.start()
    usage = MetricsApiUsage(
        api_client(str(server.kubeconfig(tmp_path / "kubeconfig"))), UsageHistory(POLICY.sizing), interval=1.0
    )
    usage.watch_pods()
    eventually(lambda: usage.pods.synced)
    yield server, usage
    usage.stop()
    server.stop()


def test_the_metrics_api_skips_a_reading_that_cannot_be_a_proxys_and_counts_it(metrics_api, caplog):
    server, usage = metrics_api
    now = float(int(time.time()))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    server.pod_metrics = [
        pod_metrics("web-59c6b7d8f4-aaaaa", "shop", stamp, "250m", "64Mi"),
        pod_metrics("web-59c6b7d8f4-bbbbb", "shop", stamp, "1e400", "64Mi"),
        pod_metrics("web-59c6b7d8f4-ccccc", "shop", "10000-01-01T00:00:00Z", "250m", "64Mi"),
    ]
    with caplog.at_level(logging.WARNING, logger="mesh_injector.usage"):
        summaries = usage.once(now + 1)
    web = summaries[WEB]
    assert (web.count, web.cpu_max, web.memory_max) == (1, 0.25, 64 * 2**20), "only the good reading counts"
    assert usage.refused == {"value": 1, "time": 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("usage from metrics-api: skipped 2 reading(s) that cannot be a proxy's: ")
    assert "PodMetrics shop/web-59c6b7d8f4-bbbbb: cpu '1e400' is out of range" in line
    assert (
        "PodMetrics shop/web-59c6b7d8f4-ccccc: timestamp '10000-01-01T00:00:00Z' is not an RFC 3339" in line
    )

    metrics = Metrics()
    metrics.track_usage(usage.age_seconds, lambda: usage.failures, usage.refused.copy)
    text = generate_latest(metrics.registry).decode()
    assert 'mesh_injector_usage_readings_refused_total{reason="value"} 1.0' in text
    assert 'mesh_injector_usage_readings_refused_total{reason="time"} 1.0' in text
    # the next poll's bad reading adds to the counter
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 30))
    server.pod_metrics = [pod_metrics("web-59c6b7d8f4-aaaaa", "shop", later, "250m", "NaN")]
    usage.once(now + 31)
    assert 'readings_refused_total{reason="value"} 2.0' in generate_latest(metrics.registry).decode()
