"""Observed usage from the ``metrics.k8s.io`` API (metrics-server), ``--metrics-api``.

Every ``interval`` seconds (aligned to the wall clock) one list of PodMetrics for the
meshed pods (label ``mesh-injector.io/interception``) gives a reading of each pod's
``mesh-proxy`` container; a reading whose timestamp was already seen for that pod is not
counted twice. Which workload a pod belongs to comes from a watched cache of the meshed
pods (owner references, as in admission), which also reports OOM kills: a ``mesh-proxy``
container whose last (or current) state is ``terminated`` with reason ``OOMKilled`` adds
an OOM kill at its ``finishedAt``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from kubernetes import client

from webhook.core import LABEL_MODE
from webhook.dataplane import PROXY_NAMES
from webhook.kubeapi import Informer, lister, request
from webhook.usage.history import UsageHistory
from webhook.usage.samples import parse_reading, parse_timestamp
from webhook.usage.sources import PollingUsage
from webhook.workload import WorkloadKey, workload_key

_DECODER = json.JSONDecoder()
_ITEMS = re.compile(r'"items"\s*:\s*\[')


def list_items(data: bytes) -> Iterator[dict[str, Any]]:
    """The ``items`` of a Kubernetes list, decoded one at a time: a list of 10,000
    PodMetrics never exists as one tree of objects (that alone took ~60 MB)."""
    text = data.decode("utf-8")
    match = _ITEMS.search(text)
    if match is None:  # an unusual layout: decode it whole
        yield from (orjson.loads(data).get("items") or [])
        return
    pos = match.end()
    end = len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        item, pos = _DECODER.raw_decode(text, pos)
        if isinstance(item, dict):
            yield item


def _oom_at(pod: Mapping[str, Any]) -> float | None:
    status = pod.get("status") or {}
    latest: float | None = None
    for field in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(field) or []:
            if not isinstance(cs, dict) or cs.get("name") not in PROXY_NAMES:
                continue
            for state in (cs.get("lastState") or {}, cs.get("state") or {}):
                term = state.get("terminated") if isinstance(state, dict) else None
                if isinstance(term, dict) and term.get("reason") == "OOMKilled":
                    try:
                        t = parse_timestamp(term.get("finishedAt"))
                    except ValueError:
                        continue
                    latest = t if latest is None else max(latest, t)
    return latest


class MetricsApiUsage(PollingUsage):
    name = "metrics-api"

    def __init__(self, api: client.ApiClient, history: UsageHistory, *, interval: float = 60.0) -> None:
        super().__init__(history, interval)
        self._api = api
        self.pods = Informer(
            "pods",
            lister(api, "/api/v1/pods", label_selector=LABEL_MODE),
            self._pod,
            stop=self._stop,
        )
        self._seen: dict[str, float] = {}  # pod -> time of its last reading
        self.unmatched = 0

    def _pod(self, pod: Mapping[str, Any]) -> WorkloadKey | None:
        meta = pod.get("metadata") or {}
        namespace = meta.get("namespace")
        if not isinstance(namespace, str):
            return None
        key = workload_key(pod, namespace)
        oom = _oom_at(pod)
        if oom is not None:
            self.history.add_oom(key, oom)
        return key

    def watch_pods(self) -> None:
        """Start the watched cache of meshed pods (``start`` does; polls need it)."""
        threading.Thread(target=self.pods.run, name="watch-pods", daemon=True).start()

    def start(self, on_change: Callable[[], None]) -> None:
        self.watch_pods()
        super().start(on_change)

    def _wait_pods(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.pods.synced and time.monotonic() < deadline and not self._stop.wait(0.05):
            pass
        return self.pods.synced

    def poll(self, until: float) -> None:
        if not self.pods.synced and not self._stop.wait(0) and not self._wait_pods(10.0):
            raise RuntimeError("the meshed pods could not be listed yet")
        resp = request(
            self._api,
            "GET",
            "/apis/metrics.k8s.io/v1beta1/pods",
            query={"labelSelector": LABEL_MODE},
            timeout=(5, 30),
        )
        seen: dict[str, float] = {}
        for item in list_items(resp.data):
            meta = item.get("metadata") or {}
            pod_key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            try:
                t = parse_timestamp(item.get("timestamp"))
            except ValueError as exc:
                self.refuse("time", f"PodMetrics {pod_key}: {exc}")
                continue
            seen[pod_key] = t
            if self._seen.get(pod_key) == t:
                continue  # the same scrape as last time
            key = self.pods.get(pod_key)
            if key is None:
                self.unmatched += 1
                continue
            for container in item.get("containers") or []:
                if not isinstance(container, dict) or container.get("name") not in PROXY_NAMES:
                    continue
                usage = container.get("usage") if isinstance(container.get("usage"), dict) else {}
                try:
                    cpu = parse_reading(usage.get("cpu"), "cpu")
                    memory = parse_reading(usage.get("memory"), "memory")
                except ValueError as exc:
                    self.refuse("value", f"PodMetrics {pod_key}: {exc}")
                    continue
                self.history.add(key, t, cpu, memory)
        self._seen = seen
