"""ASGI middleware: counts and times requests, enforces the bearer token and bounds request bodies.

It also gives every request an id (``request.state.request_id``, 32 hex digits), returned in the
response's ``X-Request-ID`` header and recorded with its decisions in the audit log, and its arrival
time (``request.state.started``, :func:`time.perf_counter`).
"""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentguard.guard.serve.auth import authorization_ok, is_protected, unauthorized
from latentguard.guard.serve.errors import GuardJSONResponse, error_response
from latentguard.guard.serve.metrics import ServeMetrics, endpoint_label

__all__ = ["GuardMiddleware"]


class GuardMiddleware:
    """Counts and times requests, enforces the bearer token and bounds request bodies."""

    def __init__(
        self, app: ASGIApp, *, metrics: ServeMetrics, token: str | None, max_body_bytes: int
    ) -> None:
        """Wrap ``app``.

        Args:
            app: The ASGI app.
            metrics: Metrics to update per request.
            token: Bearer token required for protected paths, or ``None``.
            max_body_bytes: Largest request body accepted (413 above).
        """
        self.app = app
        self.metrics = metrics
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (only ``http`` scopes are counted and checked)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = endpoint_label(scope.get("path", ""))
        status: int | None = None
        request_id = uuid.uuid4().hex  # the audit log's id of this request (``X-Request-ID``)
        state = scope.setdefault("state", {})
        state["request_id"], state["started"] = request_id, started

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if bytes(k).lower() != b"x-request-id"
                ]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode("ascii"))]}
            await send(message)

        failed = True
        try:
            await self._handle(scope, receive, send_wrapper)
            failed = False
        finally:
            if status is None:  # no response: an error, or (499, as nginx has it) the client went away
                status = 500 if failed else 499
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)

    def _too_large(self) -> GuardJSONResponse:
        return error_response(413, f"request body larger than {self.max_body_bytes} bytes")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(bytes(name).lower(), bytes(value))
        if self.token is not None and is_protected(scope.get("path", "")):
            auth = headers.get(b"authorization")
            if not authorization_ok(auth.decode("latin-1") if auth is not None else None, self.token):
                await unauthorized()(scope, receive, send)
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
