"""The errors that end a command with one line, and Kubernetes client errors said in one
line. Nothing here imports the Kubernetes client: the dry-run verbs never load it."""

from __future__ import annotations

import sys

import orjson


class CertError(ValueError):
    """Certificates cannot be written or read; the message says which file and why."""


class ClusterAccessError(RuntimeError):
    """The API server cannot be reached or refused us; the message says which and why."""


class ListenError(OSError):
    """A port cannot be listened on; the message names it and why."""


def describe_error(exc: BaseException) -> str:
    """One line for a failed API call: the HTTP status and the Status message, not the
    client's dump of response headers."""
    rest = sys.modules.get("kubernetes.client.rest")  # an ApiException means it is loaded
    if rest is not None and isinstance(exc, rest.ApiException):
        message = exc.reason or ""
        try:
            body = orjson.loads(exc.body) if exc.body else {}
            if isinstance(body, dict) and body.get("message"):
                message = f"{body.get('reason') or exc.reason}: {body['message']}"
        except orjson.JSONDecodeError:
            pass
        return f"HTTP {exc.status}: {message}"[:300]
    return f"{type(exc).__name__}: {str(exc)[:300]}"
