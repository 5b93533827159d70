"""Talking to the API server: requests through the official client's ``ApiClient`` (its
configuration, authentication, TLS and connection pool), by path; lists page by page; and
``Informer``, a watched cache of one resource (list, then watch from the list's version).

The generated API classes (``CoreV1Api`` and friends) are not used on the serving path:
importing one pulls in hundreds of model modules and wraps every method in a pydantic
validator, ~15 MB of a server's memory, for calls that only need a path and a query.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from webhook.errors import describe_error
from webhook.memory import release_free_memory

log = logging.getLogger("mesh_injector.live")

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


class _Gone(Exception):
    pass


def list_pages(list_fn: Callable[..., Any], page: int = 500) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A list call page by page (following ``continue``): each page's objects, and the
    list's resourceVersion with the last page ("" before it)."""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": page, "_preload_content": False, "_request_timeout": (5, 60)}
        if token:
            kwargs["_continue"] = token
        body = orjson.loads(list_fn(**kwargs).data)
        meta = body.get("metadata") or {}
        token = meta.get("continue")
        yield body.get("items") or [], "" if token else str(meta.get("resourceVersion", ""))
        if not token:
            return


def list_all(list_fn: Callable[..., Any], page: int = 500) -> tuple[list[dict[str, Any]], str]:
    """Every object of a list call and the list's resourceVersion."""
    items: list[dict[str, Any]] = []
    rv = ""
    for chunk, version in list_pages(list_fn, page):
        items.extend(chunk)
        rv = version
    return items, rv


def _meta_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Informer:
    """A watched cache of one resource: list, then watch from the list's resourceVersion.

    ``parse`` reduces each object to what is kept (``None``: not kept); ``on_change`` is
    called after every change to the store, from the informer's thread.
    """

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        parse: Callable[[Mapping[str, Any]], Any],
        *,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
        key: Callable[[Mapping[str, Any]], str] = _meta_key,
        watch_timeout: int = 240,
        optional: bool = False,
    ) -> None:
        self.name = name
        self._optional = optional  # a 404 means the API server does not serve it: empty
        self._list_fn = list_fn
        self._parse = parse
        self._key = key
        self._stop = stop
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._store: dict[str, Any] = {}
        self.synced = False
        self.lost_at: float | None = None
        self.relists = 0

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._store.values())

    def get(self, key: str) -> Any:
        return self._store.get(key)

    def stale_seconds(self) -> float:
        lost = self.lost_at
        return 0.0 if lost is None else time.time() - lost

    def _relist(self) -> str:
        """List everything afresh, reducing each page as it arrives (raw objects of a big
        cluster are never all held at once); the list's resourceVersion."""
        fresh = {}
        rv = ""
        for items, version in list_pages(self._list_fn):
            for obj in items:
                value = self._parse(obj)
                if value is not None:
                    fresh[self._key(obj)] = value
            rv = version
        with self._lock:
            self._store = fresh
        self.synced = True
        self._on_change()
        release_free_memory()
        return rv

    def _apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        key = self._key(obj)
        value = None if event_type == "DELETED" else self._parse(obj)
        with self._lock:
            if value is None:
                self._store.pop(key, None)
            else:
                self._store[key] = value
        self._on_change()

    def _healthy(self) -> None:
        if self.lost_at is not None:
            log.info(f"{self.name}: watch restored after {self.stale_seconds():.1f}s")
            self.lost_at = None

    def _lost(self, why: str) -> None:
        if self.lost_at is None:
            self.lost_at = time.time()
            log.warning(f"{self.name}: lost the API server ({why}); serving the last known state")

    def _events(self, rv: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """One watch request from ``rv``: its events as (type, object), until it ends.

        The request goes through the client's own API function; the event lines are parsed
        here, because ``Watch.stream(deserialize=False)`` fails on ERROR events (it looks
        for a ``raw_object`` key that raw events do not have) and model objects for every
        node would be wasted work.
        """
        resp = self._list_fn(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=(5, self._watch_timeout + 30),
        )
        try:
            for line in watch.watch.iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                event = orjson.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ApiException(
                        status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"
                    )
                yield str(event.get("type")), obj
        finally:
            resp.close()
            resp.release_conn()

    def run(self) -> None:
        name = self.name
        rv: str | None = None  # None: (re)list first
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                    self.relists += 1
                    self._healthy()
                for event_type, obj in self._events(rv):  # resumes from the last version seen
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if event_type in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(event_type, obj)
                    self._healthy()  # BOOKMARKs too: the watch is alive
                    failures = 0
            except _Gone:
                log.info(f"{name}: resourceVersion {rv} expired (410 Gone); relisting")
                rv = None
            except ApiException as exc:
                if self._optional and exc.status == 404:
                    self._served_empty()
                    rv = None
                    self._stop.wait(self._watch_timeout)
                    continue
                failures = self._failed(exc, failures)
            except Exception as exc:  # the API or the connection failed
                failures = self._failed(exc, failures)

    def _failed(self, exc: Exception, failures: int) -> int:
        """A watch connection that drops is routine (API server restarts, idle timeouts):
        resume at once. Failing again means the API server is gone: say so, and back off
        with jitter before each further try."""
        failures += 1
        if failures > 1:
            self._lost(describe_error(exc))
            delay = min(30.0, 0.5 * 2 ** min(failures - 2, 6)) * random.uniform(0.5, 1.5)
            self._stop.wait(delay)
        return failures

    def _served_empty(self) -> None:
        """The API server does not serve this resource: nothing of it exists."""
        if not self.synced or self._store:
            log.info(f"{self.name}: not served by this API server; taken as empty")
        with self._lock:
            self._store = {}
        self.synced = True
        self._healthy()
        self._on_change()
