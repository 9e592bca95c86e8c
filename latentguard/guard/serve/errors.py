"""JSON error responses: every error the service answers is a ``{"error": ..., "detail"?: ...}`` body.

:class:`ApiError` carries a status code and a client-facing message; :func:`add_exception_handlers`
turns it, validation errors, Starlette's HTTP errors, :class:`ServiceUnavailable` and anything
unexpected into JSON responses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from latentguard.guard.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "GuardJSONResponse",
    "ServiceUnavailable",
    "add_exception_handlers",
    "error_response",
    "sanitize_validation_errors",
]


class ApiError(Exception):
    """An error with a status code and a client-facing message.

    Attributes:
        status_code: The HTTP status code.
        message: The ``error`` field of the body.
        headers: Extra response headers.
    """

    def __init__(self, status_code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        """Create the error.

        Args:
            status_code: The HTTP status code.
            message: What went wrong, for the client.
            headers: Extra response headers (e.g. ``WWW-Authenticate``).
        """
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})


class ServiceUnavailable(Exception):
    """The service cannot take work: not started, or shutting down (answered with 503)."""


class GuardJSONResponse(JSONResponse):
    """JSON response that always produces valid ASCII JSON (lone surrogates escaped, no NaN)."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content``.

        Args:
            content: A JSON-compatible value.

        Returns:
            The encoded body.
        """
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(
    status_code: int,
    message: str,
    detail: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> GuardJSONResponse:
    """A JSON error response.

    Args:
        status_code: The HTTP status code.
        message: The ``error`` field.
        detail: Optional ``detail`` field (validation errors).
        headers: Extra response headers.

    Returns:
        The response.
    """
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return GuardJSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


def sanitize_validation_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Reduce pydantic errors to short, serialisable ``loc``/``msg``/``type`` entries (never the input).

    Args:
        errors: Pydantic's error dictionaries.

    Returns:
        At most 20 entries with truncated locations, messages and types.
    """
    out: list[dict[str, Any]] = []
    for err in list(errors)[:20]:
        if not isinstance(err, Mapping):
            continue
        loc = [x if isinstance(x, int) else str(x)[:100] for x in err.get("loc", ())][:10]
        out.append({"loc": loc, "msg": str(err.get("msg", ""))[:300], "type": str(err.get("type", ""))[:100]})
    return out


def add_exception_handlers(app: fastapi.FastAPI, metrics: ServeMetrics) -> None:
    """Make every error of ``app`` a JSON response.

    Args:
        app: The app.
        metrics: Its metrics (counts ``unavailable`` and ``internal`` errors).
    """

    async def on_api_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status_code, exc.message, headers=exc.headers)

    async def on_validation_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = sanitize_validation_errors(exc.errors())
        if any(d["type"] == "json_invalid" for d in detail):
            return error_response(400, "malformed JSON body", detail)
        return error_response(422, "invalid request", detail)

    async def on_http_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message, headers=exc.headers)

    async def on_unavailable(_request: fastapi.Request, exc: Exception) -> Response:
        metrics.count_error("unavailable")
        return error_response(503, str(exc) or "the guard is not available")

    async def on_unexpected(_request: fastapi.Request, exc: Exception) -> Response:
        logger.error("Unhandled error while serving a request", exc_info=exc)
        metrics.count_error("internal")
        return error_response(500, "internal server error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ServiceUnavailable, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)
