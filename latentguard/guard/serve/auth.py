"""Bearer-token checking, in one place: token syntax, protected paths and ``Authorization`` headers.

When the service has a token, ``/v1/*``, ``/metrics`` and the compatible guardrail APIs (``/beta/*``,
``/analyze/*``, ``/scan/*``) need ``Authorization: Bearer <token>``;
``/healthz``, ``/readyz`` and the OpenAPI pages stay open. The middleware
(:mod:`latentguard.guard.serve.middleware`) rejects a request before its body is read;
:func:`token_dependency` repeats the same check on the routes (and documents the scheme in OpenAPI).
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from latentguard.guard.serve.errors import ApiError, GuardJSONResponse, error_response

__all__ = [
    "PROTECTED_PREFIXES",
    "UNAUTHORIZED_MESSAGE",
    "authorization_ok",
    "check_token",
    "is_protected",
    "token_dependency",
    "unauthorized",
]

#: The ``error`` of a 401 response.
UNAUTHORIZED_MESSAGE = "missing or invalid bearer token"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: Paths that need the token (with everything below them): the JSON API, the metrics, and the LiteLLM
#: (``/beta/...``) and LLM Guard (``/analyze/...``, ``/scan/...``) compatible APIs.
PROTECTED_PREFIXES = ("/v1", "/metrics", "/beta", "/analyze", "/scan")


def check_token(token: str) -> None:
    """Validate a bearer token's syntax.

    Args:
        token: The token.

    Raises:
        ValueError: If the token is empty or contains characters other than visible ASCII.
    """
    if not token:
        raise ValueError("the bearer token must not be empty")
    if not all(0x21 <= ord(ch) <= 0x7E for ch in token):
        raise ValueError("the bearer token must consist of visible ASCII characters (no spaces)")


def is_protected(path: str) -> bool:
    """Whether ``path`` needs the bearer token (when the service has one).

    Args:
        path: The request path.

    Returns:
        True for :data:`PROTECTED_PREFIXES` (``/v1``, ``/metrics``, ``/beta``, ``/analyze``, ``/scan``) and
        every path below them.
    """
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTECTED_PREFIXES)


def authorization_ok(header: str | None, token: str) -> bool:
    """Check an ``Authorization`` header value against the expected bearer token in constant time.

    Args:
        header: The header's value, or ``None`` when absent.
        token: The expected token.

    Returns:
        Whether the header is ``Bearer <token>`` (scheme case-insensitive).
    """
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def unauthorized() -> GuardJSONResponse:
    """The 401 response, with a ``WWW-Authenticate: Bearer`` challenge."""
    return error_response(401, UNAUTHORIZED_MESSAGE, headers=_CHALLENGE)


def token_dependency(token: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that requires ``token`` (documents the bearer scheme in OpenAPI).

    Args:
        token: The expected token; ``None`` lets every request through.

    Returns:
        The dependency; it raises :class:`~latentguard.guard.serve.errors.ApiError` (401) on a
        missing or wrong token.
    """
    bearer = HTTPBearer(auto_error=False, description="Required when the server is started with a token.")

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        header = f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None
        if not authorization_ok(header, token):
            raise ApiError(401, UNAUTHORIZED_MESSAGE, _CHALLENGE)

    return require_token
