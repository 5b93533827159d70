"""The HTTPS webhook: a thin FastAPI shell around ``admit``.

Error families at the edge, in one place:

    not JSON content type                      -> 415
    body over the limit (declared or streamed)  -> 413, the rest is not read
    bodies in flight over the byte budget       -> 503 with Retry-After (the API server
                                                   retries or applies failurePolicy)
    body not received within the read timeout   -> 408
    not JSON / not an AdmissionReview / no uid  -> 400   (the API server sees a webhook failure)
    the core raised on this pod                 -> 200, allowed, no patch, a warning, counted as error

Admission is CPU-only and runs on the event loop: no threadpool hop, no I/O, the cluster
snapshot is read from memory. ``POST /mutate`` is a plain ASGI endpoint in front of the
FastAPI app, which serves everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot, ClusterView
from webhook.outcome import Outcome
from webhook.policy import Policy
from webhook.serve.answers import Answer, Answers, around_uid
from webhook.serve.metrics import Metrics
from webhook.serve.options import MAX_IN_FLIGHT
from webhook.serve.review import ReviewError, build_response, failure_response, parse_review

MAX_BODY = 3 * 1024 * 1024
SMALL_BODY = 64 * 1024  # a typical pod review is 3-10 KiB
TRIM_AFTER = 1024 * 1024
log = logging.getLogger("mesh_injector.admission")


class RequestRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class BodyBudget:
    """Bytes of request bodies held at once, over all connections.

    Bodies are held from their first byte until the answer is sent (the parsed review lives
    that long too), so this bounds what large reviews can pin whatever the number of
    clients. A body of at most ``small`` bytes is always taken: normal pods are never
    refused because of a flood of huge ones, and there can only be as many of them as there
    are connections. Everything runs on the event loop, so no lock is needed.
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT, *, small: int = SMALL_BODY) -> None:
        self.limit = limit
        self.small = small
        self.used = 0

    def take(self, n: int, total: int) -> bool:
        """Reserve ``n`` more bytes for a body that is ``total`` bytes so far."""
        if total > self.small and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


def _logging_line(line: bytes) -> None:
    log.info(line.decode())


@dataclass(kw_only=True)
class AppState:
    cluster: ClusterView
    policy: Policy
    metrics: Metrics = field(default_factory=Metrics)
    max_body: int = MAX_BODY
    read_timeout: float = 10.0
    admit_fn: Callable[..., Outcome] = admit
    ready: Callable[[], bool] = lambda: True
    budget: BodyBudget = field(default_factory=BodyBudget)
    trim: Callable[[], None] = lambda: None  # called after a large body was let go
    log_line: Callable[[bytes], None] = _logging_line  # one JSON line per admission
    # answers kept by the review's bytes (a ReplicaSet's pods): ``admit_fn``'s outcome must
    # not depend on the request's uid, as ``admit``'s does not
    answers: Answers = field(default_factory=Answers)


def _busy(budget: BodyBudget) -> RequestRefused:
    return RequestRefused(
        503,
        f"request bodies in flight are at the {budget.limit}-byte budget; retry",
        {"Retry-After": "1"},
    )


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:  # the ASGI server lower-cases header names
            return value.decode("latin-1")
    return None


async def read_limited(
    scope: Scope, receive: Receive, limit: int, timeout: float, budget: BodyBudget
) -> tuple[bytearray, int]:
    """The body in one buffer (no list of chunks joined into a second copy) and the bytes
    reserved for it in ``budget``, which the caller gives back once the answer is sent."""
    declared = _header(scope, b"content-length")
    held = 0
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestRefused(400, "Content-Length is not a number") from None
        if size > limit:
            raise RequestRefused(413, f"body of {size} bytes is over the {limit}-byte limit")
        if not budget.take(size, size):
            raise _busy(budget)
        held = size
    body = bytearray()

    async def _read() -> None:
        nonlocal held
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestRefused(400, "the client went away before sending the whole body")
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > limit:
                raise RequestRefused(413, f"body is over the {limit}-byte limit")
            if len(body) > held:  # streamed without (or beyond) a Content-Length
                if not budget.take(len(body) - held, len(body)):
                    raise _busy(budget)
                held = len(body)

    try:
        async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
            await _read()
    except TimeoutError:
        budget.give(held)
        raise RequestRefused(408, f"body not received within {timeout:g}s") from None
    except BaseException:
        budget.give(held)
        raise
    return body, held


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _log_line(
    review_request: dict[str, Any],
    outcome: Outcome | Answer | None,
    result: str,
    seconds: float,
    warnings: int | None = None,
) -> bytes:
    """The admission's JSON log line; ``warnings``: how many the response carries (an internal
    error sends one with no outcome), by default the outcome's."""
    if warnings is None:
        warnings = len(outcome.warnings) if isinstance(outcome, Outcome) else 0
    obj = review_request.get("object") if isinstance(review_request.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return orjson.dumps(
        {
            "level": "error" if result == "error" else "info",
            "logger": "mesh_injector.admission",
            "msg": "admission",
            "uid": review_request.get("uid"),
            "namespace": review_request.get("namespace") or meta.get("namespace"),
            "pod": meta.get("name") or meta.get("generateName"),
            "workload": str(outcome.workload) if outcome and outcome.workload else None,
            "outcome": result,
            "mode": outcome.mode.value if outcome and outcome.mode else None,
            "reason": outcome.reason if outcome else None,
            "warnings": warnings,
            "duration_ms": round(seconds * 1000, 3),
        }
    )


_DURATION = b'"duration_ms":'


def _line_parts(line: bytes, uid: str) -> tuple[bytes, bytes] | None:
    """``_log_line``'s line cut around its uid and its duration (the last field), for
    ``_line_with``; None where the uid's JSON is in it more than once."""
    cut = around_uid(line, uid)
    end = line.rfind(_DURATION)
    if cut is None or end < len(cut[0]):
        return None
    after = bytes(cut[1])
    return bytes(cut[0]), after[: after.rfind(_DURATION) + len(_DURATION)]


def _line_with(parts: tuple[bytes, bytes], uid: str, seconds: float) -> bytes:
    """The line ``_log_line`` writes, from ``_line_parts``, with this request's uid and duration."""
    return b"".join((parts[0], orjson.dumps(uid), parts[1], orjson.dumps(round(seconds * 1000, 3)), b"}"))


async def _send_json(
    send: Send, body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


_ROUTES = {"/mutate": "POST", "/healthz": "GET", "/readyz": "GET"}


def _unrouted(scope: Scope) -> RequestRefused | None:
    """404 for a path the webhook does not serve, 405 for a method a path does not take."""
    if scope["type"] != "http":
        return None
    path, method = scope["path"], scope["method"]
    allowed = _ROUTES.get(path)
    if allowed is None:
        served = ", ".join(f"{m} {p}" for p, m in _ROUTES.items())
        return RequestRefused(404, f"no such path {path!r}; this server answers {served}")
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        return RequestRefused(405, f"{method} is not allowed on {path}; use {allowed}", {"Allow": allowed})
    return None


class AdmissionEndpoint:
    """``POST /mutate`` as a plain ASGI application in front of the FastAPI app.

    Every request to the webhook is an admission review, so it skips what the framework
    wraps around routes (error and exception middlewares, telemetry, body limits, routing,
    Request and Response objects): measured, that was most of a request's own time. Every
    other path and method (health, readiness, 404, 405) goes to the FastAPI app.
    """

    def __init__(self, state: AppState, app: FastAPI) -> None:
        self.state = state
        self.app = app

    @property
    def routes(self) -> list[Any]:
        return [*self.app.routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/mutate" or scope["method"] != "POST":
            refused = _unrouted(scope)
            if refused is None:
                await self.app(scope, receive, send)
            else:  # the same {"error": ...} shape as every other refusal, and counted
                self.state.metrics.rejected.labels(str(refused.status)).inc()
                body = orjson.dumps({"error": refused.message})
                await _send_json(send, body, refused.status, refused.headers)
            return
        state = self.state
        try:
            review, held, key = await self.read_review(scope, receive)
            snapshot = state.cluster.snapshot()
            kept = state.answers.get(key, snapshot, state.policy) if key is not None else None
            # a review kept is the same as one checked before but for its (checked) uid
            review_request = review["request"] if kept is not None else self.checked(review, held)
        except RequestRefused as refused:
            state.metrics.rejected.labels(str(refused.status)).inc()
            await _send_json(send, orjson.dumps({"error": refused.message}), refused.status, refused.headers)
            return
        try:
            await _send_json(send, self.answer(review, review_request, snapshot, key, kept))
        finally:
            del review, review_request
            state.budget.give(held)
            if held >= TRIM_AFTER:
                state.trim()

    async def read_review(self, scope: Scope, receive: Receive) -> tuple[Any, int, bytes | None]:
        """(the body's JSON, bytes held in the budget, the key of its answer in
        ``state.answers`` or None); the raw body is gone on return."""
        state = self.state
        ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            said = f"content type {ctype!r} is" if ctype else "a request without a Content-Type header is"
            raise RequestRefused(415, f"{said} not application/json")
        body, held = await read_limited(scope, receive, state.max_body, state.read_timeout, state.budget)
        try:
            review = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            state.budget.give(held)
            raise RequestRefused(400, f"body is not JSON: {exc}") from None
        key = Answers.key(body, review)
        del body
        return review, held, key

    def checked(self, review: Any, held: int) -> dict[str, Any]:
        """The review's request, checked (``parse_review``); 400 where it is not usable."""
        try:
            return parse_review(review)
        except ReviewError as exc:
            self.state.budget.give(held)
            raise RequestRefused(400, str(exc)) from None

    def answer(
        self,
        review: dict[str, Any],
        review_request: dict[str, Any],
        snapshot: ClusterSnapshot,
        key: bytes | None = None,
        kept: Answer | None = None,
    ) -> bytes:
        state = self.state
        start = time.perf_counter()
        if kept is not None:
            uid = review_request["uid"]
            raw = kept.body(uid)
            seconds = time.perf_counter() - start
            mode = kept.mode.value if kept.mode else "none"
            state.metrics.count(kept.result, mode, kept.skip.value if kept.skip else None, seconds)
            if review_request.get("dryRun") is not True:
                line = (
                    _line_with(kept.line, uid, seconds)
                    if kept.line is not None
                    else _log_line(review_request, kept, kept.result, seconds, kept.sent)
                )
                state.log_line(line)
            return raw
        outcome: Outcome | None = None
        try:
            outcome = state.admit_fn(review_request, snapshot, state.policy)
            body = build_response(review, outcome)
            result, mode = outcome.result, outcome.mode.value if outcome.mode else "none"
        except Exception as exc:  # one pod's failure must never block pod creation
            log.exception("admission failed for uid %s; allowing the pod unmeshed", review_request.get("uid"))
            body = failure_response(review, review_request["uid"], type(exc).__name__)
            outcome, result, mode = None, "error", "none"
        seconds = time.perf_counter() - start
        state.metrics.count(result, mode, outcome.skip.value if outcome and outcome.skip else None, seconds)
        sent = len(body["response"].get("warnings") or ())  # what the API server is told
        line = None
        if review_request.get("dryRun") is not True:
            line = _log_line(review_request, outcome, result, seconds, sent)
            state.log_line(line)
        raw = orjson.dumps(body)
        if key is not None and outcome is not None and state.answers.again(key, snapshot, state.policy):
            uid = review_request["uid"]
            parts = _line_parts(line, uid) if line is not None else None
            state.answers.put(key, raw, uid, outcome, sent, parts)
        return raw


async def _answered_in_front(request: Request) -> Response:
    return _json({"error": "POST /mutate is answered by the admission endpoint"}, 500)


def create_app(state: AppState) -> AdmissionEndpoint:
    app = FastAPI(title="mesh-injector", docs_url=None, redoc_url=None, openapi_url=None)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready():
            return _json({"status": "ready"})
        return _json({"status": "not ready"}, 503)

    # Plain Starlette routes: these endpoints take the raw request, so FastAPI's dependency
    # resolution would be pure per-request overhead.
    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    # POST /mutate is answered in front of the framework; this route only makes it answer
    # other methods on /mutate with 405 rather than 404.
    app.router.add_route("/mutate", _answered_in_front, methods=["POST"])
    return AdmissionEndpoint(state, app)
