"""Seven days of cAdvisor and kube-state-metrics series for a few meshed pods, written as
OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``, together with the
readings the Prometheus usage source must derive from them.

Scrapes are every minute. A pod lives from one 5-minute grid point to another; within
each 5-minute block its proxy burns CPU at one rate (the counter grows linearly), so
``rate(...[5m])`` at a grid point is exactly that block's rate; the memory gauge at a grid
point is the expected memory reading. Values sit on the upper edges of the history's
buckets (each bucket holds (floor·1.05^(i-1), floor·1.05^i], README "Bounded history"), so
the history's percentile, "the upper edge of the bucket where the cumulative weight reaches
it", is the reading itself and the exact formula computed by hand is its oracle: memory
exactly on the edge, CPU a hair (10⁻⁹) under it, as ``rate()`` reads a counter back with
float rounding that must not carry a reading over the edge.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from webhook.workload import WorkloadKey

# the history's buckets as the README gives them: geometric, 5 % apart, CPU from 0.1m,
# memory from 1 MiB (written here, not imported: the readings must sit where the rule says)
RATIO = 1.05
CPU_FLOOR = 1e-4
MEMORY_FLOOR = float(2**20)

STEP = 300
MINUTE = 60
DAY = 86400


@dataclass
class Pod:
    namespace: str
    name: str
    owner_kind: str | None  # None: kube_pod_owner has no series for it
    owner_name: str
    workload: WorkloadKey | None
    start: int  # grid-aligned seconds
    end: int
    cpu_buckets: tuple[int, int]
    memory_buckets: tuple[int, int]
    oom_at: list[int] = field(default_factory=list)  # minutes (seconds) of OOM restarts
    readings: dict[int, tuple[float, float]] = field(default_factory=dict)  # step -> (cpu, mem)


def cpu_edge(index: int) -> float:
    """A CPU rate a hair under the upper edge of bucket ``index``."""
    return CPU_FLOOR * RATIO**index * (1 - 1e-9)


def memory_edge(index: int) -> float:
    """A memory reading exactly on the upper edge of bucket ``index``."""
    return MEMORY_FLOOR * RATIO**index


def build_pods(end: int) -> list[Pod]:
    week = 7 * DAY
    first = end - week - week // 3 - 3600  # the oldest history slot may reach a third further back
    rollout = end - 3 * DAY  # web rolls out to a new ReplicaSet three days ago
    return [
        Pod(
            "shop",
            "web-7d9f8b6c5d-k2x4p",
            "ReplicaSet",
            "web-7d9f8b6c5d",
            WorkloadKey("shop", "Deployment", "web"),
            first,
            rollout,
            (135, 150),
            (78, 86),
        ),
        Pod(
            "shop",
            "web-7d9f8b6c5d-q8z7w",
            "ReplicaSet",
            "web-7d9f8b6c5d",
            WorkloadKey("shop", "Deployment", "web"),
            first,
            rollout,
            (135, 150),
            (78, 86),
        ),
        Pod(
            "shop",
            "web-59c6b7d8f4-m5n6b",
            "ReplicaSet",
            "web-59c6b7d8f4",
            WorkloadKey("shop", "Deployment", "web"),
            rollout,
            end,
            (138, 152),
            (80, 88),
        ),
        # no kube_replicaset_owner for this one: the pod-template-hash suffix is recognised
        Pod(
            "shop",
            "api-58bc9d7f6-zz9xk",
            "ReplicaSet",
            "api-58bc9d7f6",
            WorkloadKey("shop", "Deployment", "api"),
            first,
            end,
            (120, 140),
            (75, 82),
            oom_at=[end - 3 * DAY - 7 * MINUTE],
        ),
        Pod(
            "data",
            "db-0",
            "StatefulSet",
            "db",
            WorkloadKey("data", "StatefulSet", "db"),
            first,
            end,
            (150, 170),
            (95, 105),
            oom_at=[end - 2 * 3600 - 2 * MINUTE],
        ),
        Pod(
            "batch",
            "report-29401440-7kq2m",
            "Job",
            "report-29401440",
            WorkloadKey("batch", "CronJob", "report"),
            end - 6 * 3600,
            end - 4 * 3600,
            (140, 145),
            (70, 72),
        ),
        Pod(
            "default",
            "debug",
            "<none>",
            "<none>",
            WorkloadKey("default", "Pod", "debug"),
            end - DAY,
            end,
            (100, 110),
            (60, 64),
        ),
        # kube_pod_owner knows nothing of this pod: it is not counted
        Pod("default", "stray", None, "", None, first, end, (20, 30), (60, 64)),
    ]


def write_openmetrics(path: Path, pods: list[Pod], seed: int = 7) -> None:
    rng = random.Random(seed)
    cpu_lines: list[str] = []
    mem_lines: list[str] = []
    owner_lines: list[str] = []
    restart_lines: list[str] = []
    reason_lines: list[str] = []
    for pod in pods:
        labels = f'namespace="{pod.namespace}",pod="{pod.name}",container="mesh-proxy"'
        counter = 1000.0
        rates: dict[int, float] = {}
        for t in range(pod.start + STEP, pod.end + 1, STEP):
            rates[t] = cpu_edge(rng.randint(*pod.cpu_buckets))
        restarts = 0
        for t in range(pod.start, pod.end + 1, MINUTE):
            if t > pod.start:
                block_end = -(-t // STEP) * STEP
                counter += rates[block_end] * MINUTE
            memory = memory_edge(rng.randint(*pod.memory_buckets))
            cpu_lines.append(f"container_cpu_usage_seconds_total{{{labels}}} {counter!r} {t}")
            mem_lines.append(f"container_memory_working_set_bytes{{{labels}}} {memory!r} {t}")
            if t % STEP == 0 and t in rates:
                pod.readings[t] = (rates[t], memory)
            if any(o <= t for o in pod.oom_at):
                restarts = sum(1 for o in pod.oom_at if o <= t)
            if pod.oom_at:
                restart_lines.append(f"kube_pod_container_status_restarts_total{{{labels}}} {restarts} {t}")
                if restarts:
                    reason_lines.append(
                        "kube_pod_container_status_last_terminated_reason"
                        f'{{{labels},reason="OOMKilled"}} 1 {t}'
                    )
            if pod.owner_kind is not None and t % (5 * MINUTE) == 0:
                owner_lines.append(
                    f'kube_pod_owner{{namespace="{pod.namespace}",pod="{pod.name}",'
                    f'owner_kind="{pod.owner_kind}",owner_name="{pod.owner_name}",'
                    f'owner_is_controller="true"}} 1 {t}'
                )
    rs_lines = []
    for pod in pods:
        if pod.owner_kind == "ReplicaSet" and pod.name.startswith("web-"):
            for t in range(pod.start, pod.end + 1, 5 * MINUTE):
                rs_lines.append(
                    f'kube_replicaset_owner{{namespace="{pod.namespace}",replicaset="{pod.owner_name}",'
                    f'owner_kind="Deployment",owner_name="web",owner_is_controller="true"}} 1 {t}'
                )
    # every sample of a series together, series of a family together, families in order
    families = [
        ("container_cpu_usage_seconds", "counter", cpu_lines),
        ("container_memory_working_set_bytes", "gauge", mem_lines),
        ("kube_pod_owner", "gauge", owner_lines),
        ("kube_replicaset_owner", "gauge", sorted(set(rs_lines), key=_series_then_time)),
        ("kube_pod_container_status_restarts", "counter", restart_lines),
        ("kube_pod_container_status_last_terminated_reason", "gauge", reason_lines),
    ]
    with path.open("w") as f:
        for name, kind, lines in families:
            f.write(f"# TYPE {name} {kind}\n")
            for line in sorted(lines, key=_series_then_time):
                f.write(line + "\n")
        f.write("# EOF\n")


def _series_then_time(line: str) -> tuple[str, float]:
    series, _, rest = line.rpartition("} ")
    return series, float(rest.split()[-1])


def expected_oom_steps(pod: Pod) -> list[int]:
    return [-(-o // STEP) * STEP for o in pod.oom_at]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prometheus(data_dir: Path) -> Iterator[str]:
    """A real Prometheus on a loopback port serving ``data_dir``; its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed"
    config = data_dir.parent / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1h}\nscrape_configs: []\n")
    port = _free_port()
    log = (data_dir.parent / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            "--storage.tsdb.retention.time=60d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prometheus did not start: {(data_dir.parent / 'prometheus.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def backfill(openmetrics: Path, data_dir: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        check=True,
        capture_output=True,
    )
