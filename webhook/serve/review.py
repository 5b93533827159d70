"""AdmissionReview in, AdmissionReview out: the wire format around ``admit``.

Two error families, as at every webhook edge: ``ReviewError`` means the request itself is
bad (HTTP 400, CLI exit 2); a pod the core cannot handle is answered ``allowed: true``
with no patch and a warning, so a bug never blocks pod creation.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson

from webhook.outcome import Outcome

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class ReviewError(ValueError):
    """The body is not a usable AdmissionReview; the message says what is wrong."""


def parse_review(review: object) -> dict[str, Any]:
    """The review's ``request``, checked for what the response needs."""
    if not isinstance(review, dict):
        raise ReviewError(f"expected an AdmissionReview object, got {type(review).__name__}")
    if review.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind is {review.get('kind')!r}, expected 'AdmissionReview'")
    if review.get("apiVersion") not in API_VERSIONS:
        raise ReviewError(
            f"apiVersion is {review.get('apiVersion')!r}, expected one of {', '.join(API_VERSIONS)}"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the review has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing or empty")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError(f"request.object must be an object, got {type(obj).__name__}")
    if isinstance(obj, dict):
        _check_shape(obj)
    return request


# Where the API server always sends a JSON object or array (it decoded the Pod), a wrong
# type means the request did not come from it: refuse the request rather than guess.
_SHAPE = (
    (("metadata",), dict),
    (("spec",), dict),
    (("metadata", "labels"), dict),
    (("metadata", "annotations"), dict),
    (("metadata", "ownerReferences"), list),
    (("spec", "containers"), list),
    (("spec", "initContainers"), list),
    (("spec", "volumes"), list),
    (("spec", "tolerations"), list),
    (("spec", "nodeSelector"), dict),
    (("spec", "affinity"), dict),
)


def _check_shape(obj: dict[str, Any]) -> None:
    for path, kind in _SHAPE:
        node: Any = obj
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, kind):
            expected = "an object" if kind is dict else "an array"
            raise ReviewError(
                f"request.object.{'.'.join(path)} must be {expected}, got {type(node).__name__}"
            )


def response_body(
    review: Mapping[str, Any], uid: str, patch: list[Any], warnings: tuple[str, ...]
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode("ascii")
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
