"""Requests to the API server through the official client's ``ApiClient`` (its
configuration, authentication, TLS and connection pool), by path.

The generated API classes (``CoreV1Api`` and friends) are not used on the serving path:
importing one pulls in hundreds of model modules and wraps every method in a pydantic
validator, ~15 MB of a server's memory, for calls that only need a path and a query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

# keyword arguments of the generated list functions -> query parameters
_QUERY = {
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, object] | None = None,
    body: object = None,
    content_type: str | None = None,
    timeout: Any = (5, 60),
) -> Any:
    """The raw (urllib3) response of a request; ``ApiException`` for a non-2xx answer, as
    the generated functions raise it."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    params = [(k, _value(v)) for k, v in (query or {}).items() if v is not None]
    serialized = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=params,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(*serialized, _request_timeout=timeout)
    if not 200 <= resp.status <= 299:
        resp.read()
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    return resp.response


def lister(api: client.ApiClient, path: str, **fixed: object) -> Callable[..., Any]:
    """A list/watch function for ``path`` taking the generated functions' keyword
    arguments (``limit``, ``_continue``, ``watch``, ...), answering the raw response."""

    def call(**kwargs: Any) -> Any:
        timeout = kwargs.pop("_request_timeout", (5, 60))
        kwargs.pop("_preload_content", None)
        query = {_QUERY[k]: v for k, v in {**fixed, **kwargs}.items() if v is not None}
        return request(api, "GET", path, query=query, timeout=timeout)

    return call
