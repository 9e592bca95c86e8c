"""The FastAPI app (:func:`create_app`: lifespan, routes) and :func:`run`, which serves it with uvicorn.

The OpenAI, LiteLLM and LLM Guard compatible routes are registered from :mod:`~latentguard.guard.serve.compat`
and :mod:`~latentguard.guard.serve.openai_routes` (chat completions, moderations).
"""

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, TypeVar

import fastapi
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response

from latentguard.conversation import Prompt, last_user_text, total_chars
from latentguard.guard.serve import audit
from latentguard.guard.serve.auth import token_dependency
from latentguard.guard.serve.backend import GuardBackend, generate_checked
from latentguard.guard.serve.batcher import ClassifyBatcher
from latentguard.guard.serve.compat import add_compat_routes
from latentguard.guard.serve.config import DEFAULT_MAX_NEW_TOKENS, ServeConfig
from latentguard.guard.serve.dashboard import add_dashboard_routes
from latentguard.guard.serve.errors import (
    ApiError,
    GuardJSONResponse,
    ServiceUnavailable,
    add_exception_handlers,
)
from latentguard.guard.serve.metrics import CONTENT_TYPE, ServeMetrics
from latentguard.guard.serve.middleware import GuardMiddleware
from latentguard.guard.serve.openai_routes import add_openai_routes
from latentguard.guard.serve.schemas import (
    ClassifyItem,
    ClassifyRequest,
    ClassifyResponse,
    GenerateItem,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ReadyResponse,
    error_responses,
)
from latentguard.guard.types import Verdict

logger = logging.getLogger(__name__)

__all__ = ["create_app", "run"]


_Prompts = TypeVar("_Prompts", bound=Sequence[Prompt])


class _ServiceState:
    """Per-app mutable state (created in the lifespan)."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: ClassifyBatcher | None = None


def _check_prompts(prompts: _Prompts, config: ServeConfig) -> _Prompts:
    """Enforce the prompt limits.

    Args:
        prompts: Prompts (instructions, or conversations from the compatible routes).
        config: Service settings.

    Returns:
        The prompts, unchanged.

    Raises:
        ApiError: 422 for an empty list or a blank prompt, 413 for too many or too long prompts.
    """
    if not prompts:
        raise ApiError(422, "prompts must not be empty")
    if len(prompts) > config.max_prompts:
        raise ApiError(413, f"too many prompts: {len(prompts)} > {config.max_prompts}")
    for i, prompt in enumerate(prompts):
        limit = config.max_chars if isinstance(prompt, str) else config.max_conversation_chars
        if total_chars(prompt) > limit:
            raise ApiError(413, f"prompt {i} is too long: {total_chars(prompt)} > {limit} characters")
        if not isinstance(prompt, str) and len(prompt) > config.max_messages:
            raise ApiError(413, f"prompt {i} has too many messages: {len(prompt)} > {config.max_messages}")
        if not last_user_text(prompt).strip():
            raise ApiError(422, f"prompt {i} is empty or whitespace")
    return prompts


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Turn backend info into something ``json.dumps(allow_nan=False)`` accepts."""
    if depth > 20:
        return repr(value)[:200]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v, depth + 1) for v in value]
    try:
        encoded = jsonable_encoder(value)
    except Exception:
        return repr(value)[:200]
    if isinstance(encoded, (type(None), bool, int, float, str, dict, list)):
        return _json_safe(encoded, depth + 1)
    return repr(value)[:200]


def _package_version() -> str:
    try:
        return metadata.version("latentguard")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(backend: GuardBackend, config: ServeConfig) -> fastapi.FastAPI:
    """Build the FastAPI app serving ``backend``.

    The classify batcher and the backend thread are created when the app starts (ASGI lifespan) and
    stopped when it shuts down; until then the guard endpoints answer 503.

    Args:
        backend: The guard backend.
        config: Service settings.

    Returns:
        The app.
    """
    metrics = ServeMetrics(batch_max_size=config.batch_max_size)
    auditor = audit.Auditor(config, metrics, backend)
    state = _ServiceState()
    max_body_bytes = 65536 + config.max_prompts * (12 * config.max_chars + 64)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await auditor.start()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentguard-backend")
        batcher = ClassifyBatcher(
            backend,
            executor,
            metrics,
            max_size=config.batch_max_size,
            max_wait_s=config.batch_max_wait_ms / 1000.0,
        )
        batcher.start()
        state.executor, state.batcher = executor, batcher
        logger.info("Latent Guard service ready")
        try:
            yield
        finally:
            state.batcher = None
            await batcher.stop()
            state.executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            await auditor.stop()
            logger.info("Latent Guard service stopped")

    app = FastAPI(
        title="latentguard",
        version=_package_version(),
        description="Latent Guard: classify prompts as harmful from the language model's own hidden states, "
        "and generate under a guard policy.",
        lifespan=lifespan,
        default_response_class=GuardJSONResponse,
    )
    app.state.latentguard = state
    app.state.metrics = metrics
    app.state.audit = auditor
    app.add_middleware(GuardMiddleware, metrics=metrics, token=config.token, max_body_bytes=max_body_bytes)

    require_token = token_dependency(config.token)
    add_exception_handlers(app, metrics)

    def timed_out() -> ApiError:
        metrics.count_error("timeout")
        return ApiError(503, f"request timed out after {config.request_timeout_s:g} s")

    async def classify_checked(prompts: Sequence[Prompt]) -> list[Verdict]:
        """Classify prompts through the batcher: the limits, the timeout and the metrics of classify."""
        prompts = _check_prompts(prompts, config)
        batcher = state.batcher
        if batcher is None or not batcher.running:
            raise ServiceUnavailable("the guard is not running")
        try:
            results = await asyncio.wait_for(batcher.classify(prompts), timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise timed_out() from None
        metrics.observe_results("classify", results)
        return results

    # ---- endpoints -------------------------------------------------------------------------------------

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=error_responses(),
        dependencies=[Depends(require_token)],
        tags=["guard"],
        summary="Classify prompts as harmful or not",
    )
    async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
        """Classify prompts; a prompt on which the guard fails is reported harmful (fail closed)."""
        results = await classify_checked(body.prompts)
        await audit.record(
            request, route="/v1/classify", decisions=audit.from_verdicts(body.prompts, results)
        )
        return ClassifyResponse(results=[ClassifyItem.from_result(r) for r in results])

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=error_responses(),
        dependencies=[Depends(require_token)],
        tags=["guard"],
        summary="Generate responses under a guard policy",
    )
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        """Generate a response per prompt; harmful prompts are blocked, flagged or allowed per ``policy``."""
        prompts = _check_prompts(body.prompts, config)
        if "max_new_tokens" in body.model_fields_set:
            max_new_tokens = body.max_new_tokens
        else:
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, config.max_new_tokens_limit)
        if not 1 <= max_new_tokens <= config.max_new_tokens_limit:
            raise ApiError(422, f"max_new_tokens must be between 1 and {config.max_new_tokens_limit}")
        executor = state.executor
        if executor is None:
            raise ServiceUnavailable("the guard is not running")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            call = loop.run_in_executor(
                executor, generate_checked, backend, prompts, max_new_tokens, body.policy
            )
            results = await asyncio.wait_for(call, timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise timed_out() from None
        except RuntimeError as exc:  # executor shut down
            raise ServiceUnavailable("the guard is shutting down") from exc
        metrics.observe_backend_call("generate", time.perf_counter() - started)
        metrics.observe_results("generate", results)
        metrics.observe_blocked(body.policy, sum(r.blocked for r in results))
        await audit.record(
            request, route="/v1/generate", decisions=audit.from_replies(prompts, results, body.policy)
        )
        return GenerateResponse(results=[GenerateItem.from_result(r) for r in results])

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness")
    async def healthz() -> HealthResponse:
        """Answer 200 while the process serves requests."""
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        responses=error_responses(503),
        tags=["ops"],
        summary="Readiness and backend information",
    )
    async def readyz() -> ReadyResponse:
        """Answer 200 with backend information once the guard accepts requests, else 503."""
        batcher = state.batcher
        if batcher is None or not batcher.running:
            raise ApiError(503, "the guard is not running")
        try:
            info = backend.info
        except Exception as exc:
            logger.exception("Backend info is unavailable")
            raise ApiError(503, "backend info is unavailable") from exc
        safe = _json_safe(info)
        return ReadyResponse(status="ready", backend=safe if isinstance(safe, dict) else {"info": safe})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."},
            **error_responses(401),
        },
        dependencies=[Depends(require_token)],
        tags=["ops"],
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        """Render the metrics in the Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    add_compat_routes(app, backend, config, classify=classify_checked, require_token=require_token)
    add_dashboard_routes(app, auditor, config)
    add_openai_routes(
        app,
        backend,
        config,
        metrics,
        classify=classify_checked,
        executor=lambda: state.executor,
        require_token=require_token,
    )
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(backend: GuardBackend, config: ServeConfig) -> None:
    """Serve ``backend`` with uvicorn on ``config.host``:``config.port`` until interrupted.

    Args:
        backend: The guard backend.
        config: Service settings.
    """
    if not _is_loopback(config.host) and config.token is None:
        logger.warning(
            "Serving on %s without a bearer token: anyone who can reach this port can use the guard.",
            config.host,
        )
    app = create_app(backend, config)
    logger.info("Serving Latent Guard on http://%s:%d", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, server_header=False)
