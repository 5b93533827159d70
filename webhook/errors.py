"""Errors from the Kubernetes client said in one line."""

from __future__ import annotations

import orjson
from kubernetes.client.rest import ApiException


def describe_error(exc: BaseException) -> str:
    """One line for a failed API call: the HTTP status and the Status message, not the
    client's dump of response headers."""
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            body = orjson.loads(exc.body) if exc.body else {}
            if isinstance(body, dict) and body.get("message"):
                message = f"{body.get('reason') or exc.reason}: {body['message']}"
        except orjson.JSONDecodeError:
            pass
        return f"HTTP {exc.status}: {message}"[:300]
    return f"{type(exc).__name__}: {str(exc)[:300]}"
