"""``GET /dashboard``: a live page over the audit log, served by the guard server itself.

* ``GET /dashboard``: the page (HTML, with its script and style from ``/dashboard/static/``; nothing is
  loaded from the internet). It draws, with inline SVG, the flag rate over time, the score histogram with
  the threshold marked and the latency quantiles, and lists the recent flagged decisions (time, score,
  hash, and the text only when ``--audit-store-text`` stored it). It refreshes itself every 5 s.
* ``GET /dashboard/data?hours=1&bucket=60``: the numbers it draws, as JSON
  (:func:`latentguard.audit.query.dashboard_data`), read from the audit database (so they cover
  restarts).

When the server has a bearer token the page needs it too: either an ``Authorization: Bearer`` header,
or the login form the page shows, which posts the token to ``POST /dashboard/login`` and gets an
HttpOnly, SameSite=Strict cookie (an HMAC of the token, never the token) for ``/dashboard``. The token
never travels in a URL, so it stays out of access logs. Without ``--audit-db`` the routes answer 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import math
from importlib import resources
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentguard.audit.query import dashboard_data
from latentguard.guard.serve.audit import Auditor
from latentguard.guard.serve.auth import authorization_ok
from latentguard.guard.serve.config import ServeConfig
from latentguard.guard.serve.errors import ApiError, GuardJSONResponse

__all__ = ["COOKIE_NAME", "add_dashboard_routes", "cookie_value"]

#: The dashboard's session cookie.
COOKIE_NAME = "latentguard_dashboard"
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Latent Guard dashboard</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head><body><main class="login">
<h1>Latent Guard dashboard</h1><p>{message}</p>
<form method="post" action="/dashboard/login"><label>Bearer token
<input type="password" name="token" id="token" autocomplete="current-password" required></label>
<button type="submit" id="login">Open</button></form></main></body></html>"""


def cookie_value(token: str) -> str:
    """The dashboard cookie for ``token``: an HMAC of it, so the cookie never holds the token.

    Args:
        token: The server's bearer token.

    Returns:
        64 hex digits.
    """
    return hmac.new(token.encode("utf-8"), b"latentguard-dashboard", hashlib.sha256).hexdigest()


def _asset(name: str) -> str:
    return (resources.files("latentguard.guard.serve") / "static" / name).read_text(encoding="utf-8")


def _bounded(raw: str | None, default: float, lo: float, hi: float) -> float:
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        raise ApiError(422, f"not a number: {raw!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ApiError(422, f"{value:g} is out of range [{lo:g}, {hi:g}]")
    return value


def add_dashboard_routes(app: FastAPI, auditor: Auditor, config: ServeConfig) -> None:
    """Register ``/dashboard``, its data, login and static routes on ``app``.

    Args:
        app: The app.
        auditor: The app's audit log.
        config: Service settings (the token).
    """
    token = config.token
    page = _asset("dashboard.html")
    assets = {name: _asset(name) for name in _STATIC}

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        if authorization_ok(request.headers.get("authorization"), token):
            return True
        cookie = request.cookies.get(COOKIE_NAME, "")
        return hmac.compare_digest(cookie.encode("latin-1", "replace"), cookie_value(token).encode("ascii"))

    def login_page(message: str, status: int = 401) -> HTMLResponse:
        return HTMLResponse(_LOGIN.format(message=html.escape(message)), status_code=status)

    def require_audit() -> Auditor:
        if not auditor.enabled:
            raise ApiError(404, "the audit log is off: start the server with --audit-db URL")
        return auditor

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        require_audit()
        if not authorized(request):
            return login_page("This server needs its bearer token.")
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.post("/dashboard/login", include_in_schema=False)
    async def dashboard_login(request: Request) -> Response:
        require_audit()
        if token is None:
            return RedirectResponse("/dashboard", status_code=303)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].strip()
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            return login_page("Wrong token.")
        response = RedirectResponse("/dashboard", status_code=303)
        response.set_cookie(
            COOKIE_NAME, cookie_value(token), httponly=True, samesite="strict", path="/dashboard"
        )
        return response

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_json(request: Request) -> Response:
        require_audit()
        if not authorized(request):
            raise ApiError(401, "missing or invalid bearer token")
        hours = _bounded(request.query_params.get("hours"), 1.0, 1 / 60, 24 * 366)
        bucket = _bounded(request.query_params.get("bucket"), 60.0, 1.0, 86400.0 * 31)
        store = auditor.store
        if store is None:
            raise ApiError(503, "the audit log is not running")
        data = await asyncio.to_thread(
            dashboard_data, store, hours=hours, bucket_s=bucket, threshold=auditor.threshold
        )
        return GuardJSONResponse(data, headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_static(name: str) -> Response:
        if name not in assets:
            raise ApiError(404, "not found")
        return Response(assets[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})
