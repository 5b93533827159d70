"""AdmissionReview in, AdmissionReview out: the wire format around ``admit``.

Two error families, as at every webhook edge: ``ReviewError`` means the request itself is
bad (HTTP 400, CLI exit 2); a pod the core cannot handle is answered ``allowed: true``
with no patch and a warning, so a bug never blocks pod creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import orjson
import pybase64

from webhook import kubeschema as schema
from webhook.outcome import Outcome

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class ReviewError(ValueError):
    """The body is not a usable AdmissionReview; the message says what is wrong."""


def parse_review(review: object) -> dict[str, Any]:
    """The review's ``request``, checked for what the response needs and for the types of
    what admission reads of its object."""
    if not isinstance(review, dict):
        raise ReviewError(f"expected an AdmissionReview object, got {type(review).__name__}")
    for field, expected in (("kind", ("AdmissionReview",)), ("apiVersion", API_VERSIONS)):
        if review.get(field) not in expected:
            allowed = " or ".join(repr(e) for e in expected)
            found = "missing" if review.get(field) is None else f"{review.get(field)!r}"
            raise ReviewError(f"{field} is {found}, expected {allowed}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the review has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing or empty")
    obj = request.get("object")
    if obj is None and request.get("operation") == "CREATE":
        raise ReviewError("request.object is missing: a CREATE review carries the object being created")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError(f"request.object must be an object, got {type(obj).__name__}")
    if isinstance(obj, dict) and _is_pod(request):
        wrong = schema.first_wrong_type(obj, _pod_reads(), "request.object")
        if wrong is not None:
            raise ReviewError(wrong)
    return request


def _is_pod(request: dict[str, Any]) -> bool:
    kind = request.get("kind")
    return not isinstance(kind, dict) or kind.get("kind") in (None, "Pod")


# What admission reads of a pod, each path with the type the Kubernetes API gives it. The
# API server sends an object it decoded into those types, so a wrong type at any of these
# means the request did not come from it: refused with 400 naming the path, rather than
# guessed at (what admission does not read is not checked: that costs nothing per review).
_CONTAINER = (
    "name",
    "image",
    "restartPolicy",
    "ports[].name",
    "ports[].containerPort",
    "ports[].hostPort",
    "ports[].protocol",
    "resources.requests{}",
    "resources.limits{}",
    *(
        f"{probe}.{field}"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe")
        for field in (
            "httpGet.path",
            "httpGet.port",
            "httpGet.host",
            "httpGet.scheme",
            "httpGet.httpHeaders[].name",
            "httpGet.httpHeaders[].value",
            "tcpSocket.port",
            "tcpSocket.host",
            "grpc.port",
            "grpc.service",
            "timeoutSeconds",
        )
    ),
)
_TERM = ("key", "operator", "values[]")
_AFFINITY = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[]"
POD_READS = (
    "metadata.name",
    "metadata.generateName",
    "metadata.namespace",
    "metadata.labels{}",
    "metadata.annotations{}",
    *(f"metadata.ownerReferences[].{f}" for f in ("apiVersion", "kind", "name", "uid", "controller")),
    *(f"spec.{key}[].{field}" for key in ("containers", "initContainers") for field in _CONTAINER),
    "spec.volumes[].name",
    "spec.nodeName",
    "spec.nodeSelector{}",
    "spec.runtimeClassName",
    "spec.hostNetwork",
    "spec.restartPolicy",
    *(f"spec.tolerations[].{f}" for f in ("key", "operator", "value", "effect")),
    *(f"spec.{_AFFINITY}.{part}[].{f}" for part in ("matchExpressions", "matchFields") for f in _TERM),
    "spec.securityContext.runAsNonRoot",
    "spec.securityContext.runAsUser",
    "spec.securityContext.seccompProfile.type",
)


@cache
def _pod_reads() -> schema.Checker:
    return schema.compiled(schema.subset("io.k8s.api.core.v1.Pod", POD_READS))


def response_body(
    review: Mapping[str, Any], uid: str, patch: list[Any], warnings: tuple[str, ...]
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        # pybase64 (SIMD): the standard library's encoder took ~12 µs of a typical answer
        response["patch"] = pybase64.b64encode_as_string(orjson.dumps(patch))
    if warnings:
        # The API server may truncate warnings over 256 characters and drops them past 4 KiB in
        # all; bound them here too so one odd pod cannot produce a huge response.
        response["warnings"] = [w[:1024] for w in warnings[:16]]
    return {
        "apiVersion": review.get("apiVersion", API_VERSIONS[0]),
        "kind": "AdmissionReview",
        "response": response,
    }


def build_response(review: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
    return response_body(review, review["request"]["uid"], outcome.patch, outcome.warnings)


def failure_response(review: Mapping[str, Any], uid: str, error: str) -> dict[str, Any]:
    """Allowed, unpatched, with a warning: the answer when the core failed on one pod."""
    return response_body(
        review, uid, [], (f"mesh-injector: internal error, pod admitted without a proxy: {error}",)
    )
