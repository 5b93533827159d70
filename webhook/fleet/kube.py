"""The fleet as the API server holds it: pods to audit, workloads to restart, budgets.

Raw requests through the client's ``ApiClient`` (``webhook.kubeapi``), as everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException

from webhook.errors import ClusterAccessError
from webhook.fleet.rollout import RESTARTED_AT
from webhook.kubeapi import list_pages, lister, request
from webhook.workload import WorkloadKey

_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
}
# policy/v1 from Kubernetes 1.21; policy/v1beta1 before (removed in 1.25)
_BUDGETS = (
    "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets",
)


def pods(api: client.ApiClient, namespace: str | None = None) -> Iterator[dict[str, Any]]:
    """Every pod (of ``namespace``, else of the cluster), page by page."""
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    try:
        for items, _ in list_pages(lister(api, path)):
            yield from items
    except (ApiException, OSError, ValueError) as exc:
        raise ClusterAccessError(f"cannot list pods: {exc}") from None


class ApiFleet:
    """``rollout.Fleet`` against the API server."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._budget_path: str | None = None

    def workload(self, key: WorkloadKey) -> Mapping[str, Any] | None:
        path = _PATHS.get(key.kind)
        if path is None:
            return None
        try:
            resp = request(self._api, "GET", path.format(ns=key.namespace, name=key.name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterAccessError(f"cannot read {key}: {exc.status} {exc.reason}") from None
        obj = orjson.loads(resp.data)
        obj.setdefault("kind", key.kind)
        return obj

    def restart(self, key: WorkloadKey, at: str) -> None:
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
        try:
            request(
                self._api,
                "PATCH",
                _PATHS[key.kind].format(ns=key.namespace, name=key.name),
                body=body,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiException as exc:
            raise ClusterAccessError(f"cannot restart {key}: {exc.status} {exc.reason}: {exc.body}") from None

    def budgets(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        paths = (self._budget_path,) if self._budget_path else _BUDGETS
        for path in paths:
            assert path is not None
            try:
                resp = request(self._api, "GET", path.format(ns=namespace))
            except ApiException as exc:
                if exc.status == 404 and path != _BUDGETS[-1]:
                    continue
                raise ClusterAccessError(
                    f"cannot list PodDisruptionBudgets: {exc.status} {exc.reason}"
                ) from None
            self._budget_path = path
            return list(orjson.loads(resp.data).get("items") or [])
        return []
