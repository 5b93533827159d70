"""The HTTPS webhook: a thin FastAPI shell around ``admit``.

Error families at the edge, in one place:

    not JSON content type                      -> 415
    body over the limit (declared or streamed)  -> 413, the rest is not read
    body not received within the read timeout   -> 408
    not JSON / not an AdmissionReview / no uid  -> 400   (the API server sees a webhook failure)
    the core raised on this pod                 -> 200, allowed, no patch, a warning, counted as error

Admission is CPU-only (~0.1 ms) and runs on the event loop: no threadpool hop, no I/O, the
cluster snapshot is read from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from webhook.admission import Outcome, admit
from webhook.cluster import ClusterView
from webhook.metrics import Metrics
from webhook.policy import Policy
from webhook.review import ReviewError, build_response, failure_response, parse_review

MAX_BODY = 3 * 1024 * 1024
log = logging.getLogger("mesh_injector.admission")


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(kw_only=True)
class AppState:
    cluster: ClusterView
    policy: Policy
    metrics: Metrics = field(default_factory=Metrics)
    max_body: int = MAX_BODY
    read_timeout: float = 10.0
    admit_fn: Callable[..., Outcome] = admit
    ready: Callable[[], bool] = lambda: True


async def read_limited(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestRefused(400, "Content-Length is not a number") from None
        if size > limit:
            raise RequestRefused(413, f"body of {size} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    received = 0

    async def _read() -> None:
        nonlocal received
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise RequestRefused(413, f"body is over the {limit}-byte limit")
            chunks.append(chunk)

    try:
        async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
            await _read()
    except TimeoutError:
        raise RequestRefused(408, f"body not received within {timeout:g}s") from None
    return b"".join(chunks)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _log_line(review_request: dict[str, Any], outcome: Outcome | None, result: str, seconds: float) -> bytes:
    obj = review_request.get("object") if isinstance(review_request.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return orjson.dumps(
        {
            "msg": "admission",
            "uid": review_request.get("uid"),
            "namespace": review_request.get("namespace") or meta.get("namespace"),
            "pod": meta.get("name") or meta.get("generateName"),
            "workload": str(outcome.workload) if outcome and outcome.workload else None,
            "outcome": result,
            "mode": outcome.mode.value if outcome and outcome.mode else None,
            "reason": outcome.reason if outcome else None,
            "warnings": len(outcome.warnings) if outcome else 0,
            "duration_ms": round(seconds * 1000, 3),
        }
    )


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="mesh-injector", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = state.metrics

    async def mutate(request: Request) -> Response:
        try:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise RequestRefused(415, f"content type {ctype or 'none'!r} is not application/json")
            body = await read_limited(request, state.max_body, state.read_timeout)
            try:
                review = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestRefused(400, f"body is not JSON: {exc}") from None
            try:
                review_request = parse_review(review)
            except ReviewError as exc:
                raise RequestRefused(400, str(exc)) from None
        except RequestRefused as refused:
            metrics.rejected.labels(str(refused.status)).inc()
            return _json({"error": refused.message}, refused.status)

        start = time.perf_counter()
        outcome: Outcome | None = None
        try:
            outcome = state.admit_fn(review_request, state.cluster.snapshot(), state.policy)
            answer = build_response(review, outcome)
            result, mode = outcome.result, outcome.mode.value if outcome.mode else "none"
        except Exception as exc:  # one pod's failure must never block pod creation
            log.exception("admission failed for uid %s; allowing the pod unmeshed", review_request.get("uid"))
            answer = failure_response(review, review_request["uid"], type(exc).__name__)
            outcome, result, mode = None, "error", "none"
        seconds = time.perf_counter() - start
        metrics.count(result, mode, outcome.skip.value if outcome and outcome.skip else None, seconds)
        if review_request.get("dryRun") is not True:
            log.info(_log_line(review_request, outcome, result, seconds).decode())
        return _json(answer)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready():
            return _json({"status": "ready"})
        return _json({"status": "not ready"}, 503)

    # Plain Starlette routes: these endpoints take the raw request, so FastAPI's dependency
    # resolution would be pure per-request overhead (measured: ~15% of a request).
    app.router.add_route("/mutate", mutate, methods=["POST"])
    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    return app
