"""Routes in other services' wire formats, so that existing clients can use the Latent Guard as it is.

* ``GET /v1/models`` (OpenAI): the one served model, named by ``ServeConfig.served_model_name`` (default:
  the backend's model spec, the ``model`` of its ``info``, else ``"latentguard"``).
* ``POST /beta/litellm_basic_guardrail_api`` (LiteLLM's generic guardrail API): for ``input_type:
  "request"`` each of ``texts`` is classified as one user turn; without texts, ``structured_messages`` is
  classified as one conversation, rendered with the model's chat template (the guard reads its last user
  message in the context of the rest; ``tool`` and other roles are left out). Blank texts are skipped. The answer is ``BLOCKED`` if any text is judged harmful, else ``NONE``. ``input_type:
  "response"`` always answers ``NONE``: the guard reads requests, responses are not scanned.
* ``POST /analyze/prompt`` and ``POST /scan/prompt`` (LLM Guard's API): one scanner, ``LatentGuard``,
  whose risk is in ``[-1, 1]`` (see :func:`risk_score`): negative when the prompt is judged harmless,
  positive when harmful. ``sanitized_prompt`` is the prompt unchanged. Listing ``LatentGuard`` in
  ``scanners_suppress`` skips the guard: the prompt is valid and ``scanners`` is empty.

Every route here sits behind the same bearer token as ``/v1/classify``, classifies through the same
micro-batcher (so limits, timeouts and metrics are those of ``/v1/classify``) and fails closed the same
way: a text the backend fails on is judged harmful with score 1.0, which blocks it (LiteLLM: ``BLOCKED``
with the error as the reason; LLM Guard: invalid, risk 1.0). An empty input is a 400 JSON error.
"""

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request

from latentguard.conversation import Prompt
from latentguard.guard.serve import audit
from latentguard.guard.serve.backend import GuardBackend
from latentguard.guard.serve.compat_schemas import (
    LATENTGUARD_SCANNER,
    AnalyzePromptRequest,
    AnalyzePromptResponse,
    LiteLLMGuardrailRequest,
    LiteLLMGuardrailResponse,
    LiteLLMVerdicts,
    ModelCard,
    ModelList,
    ScanPromptResponse,
    VerdictSummary,
)
from latentguard.guard.serve.config import ServeConfig
from latentguard.guard.serve.errors import ApiError
from latentguard.guard.serve.schemas import error_responses
from latentguard.guard.types import Verdict

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SERVED_MODEL_NAME",
    "ClassifyFn",
    "add_compat_routes",
    "backend_threshold",
    "litellm_texts",
    "risk_score",
    "served_model_name",
]

#: The served model name when neither the config nor the backend names one.
DEFAULT_SERVED_MODEL_NAME = "latentguard"
#: Classifies prompts the way ``POST /v1/classify`` does (limits, batcher, timeout, metrics).
ClassifyFn = Callable[[Sequence[Prompt]], Awaitable[list[Verdict]]]
_MIN_RISK = 1e-4  # smallest |risk|, so that the sign always carries the verdict


def _backend_info(backend: GuardBackend) -> dict[str, Any]:
    """The backend's ``info``, or ``{}`` when it raises or is not a mapping."""
    try:
        info = backend.info
    except Exception:
        logger.warning("Backend info is unavailable; using defaults", exc_info=True)
        return {}
    return info if isinstance(info, dict) else {}


def served_model_name(backend: GuardBackend, config: ServeConfig) -> str:
    """The model id ``GET /v1/models`` lists.

    Args:
        backend: The guard backend.
        config: Service settings.

    Returns:
        ``config.served_model_name`` if set, else the backend's model spec (the ``model`` of its ``info``,
        when a non-blank string), else :data:`DEFAULT_SERVED_MODEL_NAME`.
    """
    if config.served_model_name is not None:
        return config.served_model_name
    model = _backend_info(backend).get("model")
    return model if isinstance(model, str) and model.strip() else DEFAULT_SERVED_MODEL_NAME


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def backend_threshold(backend: GuardBackend) -> float | None:
    """The guard's decision threshold, if the backend's ``info`` exposes one.

    Args:
        backend: The guard backend.

    Returns:
        ``info["threshold"]`` or ``info["guard"]["threshold"]`` when a finite number, else ``None``.
    """
    info = _backend_info(backend)
    threshold = _finite_number(info.get("threshold"))
    guard = info.get("guard")
    if threshold is None and isinstance(guard, dict):
        threshold = _finite_number(guard.get("threshold"))
    return threshold


def risk_score(verdict: Verdict, threshold: float | None) -> float:
    """The LLM Guard risk of a verdict, in ``[-1, 1]``: its sign is the verdict.

    The magnitude is ``|tanh(score - threshold)|`` when the threshold is known, else ``|tanh(score)|``;
    it is at least 1e-4 (so a score at the threshold still has a sign) and rounded to 4 decimals. The
    sign is positive when the verdict is harmful, negative when harmless. A verdict that failed closed has
    risk 1.0.

    Args:
        verdict: The guard's verdict.
        threshold: The guard's threshold, or ``None``.

    Returns:
        The risk.
    """
    if verdict.error is not None:
        return 1.0
    centre = threshold if threshold is not None else 0.0
    magnitude = min(1.0, max(_MIN_RISK, round(abs(math.tanh(verdict.score - centre)), 4)))
    return magnitude if verdict.harmful else -magnitude


def litellm_texts(body: LiteLLMGuardrailRequest) -> list[Prompt]:
    """The prompts a LiteLLM guardrail request asks to check.

    Args:
        body: The request.

    Returns:
        The non-blank ``texts``; without any, ``structured_messages`` as one conversation (its
        ``system`` and ``user`` messages and the ``assistant`` ones with text), when its last user message
        has text.

    Raises:
        ApiError: 400 when there is nothing to check.
    """
    prompts: list[Prompt] = [t for t in body.texts or [] if t.strip()]
    if not prompts and body.structured_messages:
        conversation = [
            {"role": m.role, "content": m.text()}
            for m in body.structured_messages
            if m.role in ("system", "user") or (m.role == "assistant" and m.text().strip())
        ]
        users = [m for m in conversation if m["role"] == "user"]
        if users and users[-1]["content"].strip():
            prompts = [conversation]
    if not prompts:
        raise ApiError(400, "nothing to check: no non-blank texts and no text in a last user message")
    return prompts


def _blocked_reason(verdicts: list[Verdict]) -> str | None:
    """Why a LiteLLM request is blocked (the first failure, else the highest-scoring harmful text)."""
    for i, v in enumerate(verdicts):
        if v.error is not None:
            return f"Latent Guard failed on text {i} and fails closed: {v.error}"
    harmful = [(v.score, i) for i, v in enumerate(verdicts) if v.harmful]
    if not harmful:
        return None
    score, i = max(harmful)
    return f"Latent Guard judged text {i} harmful (score {score:.4f})"


def add_compat_routes(
    app: FastAPI,
    backend: GuardBackend,
    config: ServeConfig,
    *,
    classify: ClassifyFn,
    require_token: Callable[..., Awaitable[None]],
) -> None:
    """Register the OpenAI, LiteLLM and LLM Guard compatible routes on ``app``.

    Args:
        app: The app.
        backend: The guard backend (its ``info`` names the model and the threshold).
        config: Service settings.
        classify: Classifies prompts like ``POST /v1/classify`` (limits, batcher, timeout, metrics).
        require_token: The bearer-token dependency of the app.
    """
    created = int(time.time())
    protected = [Depends(require_token)]

    @app.get(
        "/v1/models",
        response_model=ModelList,
        responses=error_responses(401),
        dependencies=protected,
        tags=["openai"],
        summary="List the served model (OpenAI format)",
    )
    async def list_models() -> ModelList:
        """The served model, as OpenAI's ``GET /v1/models`` lists models."""
        return ModelList(data=[ModelCard(id=served_model_name(backend, config), created=created)])

    @app.post(
        "/beta/litellm_basic_guardrail_api",
        response_model=LiteLLMGuardrailResponse,
        responses=error_responses(),
        dependencies=protected,
        tags=["litellm"],
        summary="LiteLLM generic guardrail API",
    )
    async def litellm_guardrail(body: LiteLLMGuardrailRequest, request: Request) -> LiteLLMGuardrailResponse:
        """Check a LiteLLM request: BLOCKED if any text is harmful, else NONE.

        For ``input_type: "request"`` each non-blank text is classified; without texts,
        ``structured_messages`` as one conversation in the model's chat template. ``input_type: "response"``
        answers NONE: the guard reads requests, responses are not
        scanned. A text the guard fails on is blocked (fail closed).
        """
        if body.input_type == "response":
            return LiteLLMGuardrailResponse(
                action="NONE", blocked_reason=None, latentguard=LiteLLMVerdicts(verdicts=[])
            )
        texts = litellm_texts(body)
        verdicts = await classify(texts)
        reason = _blocked_reason(verdicts)
        await audit.record(
            request,
            route="/beta/litellm_basic_guardrail_api",
            decisions=audit.from_verdicts(texts, verdicts, block=True),
        )
        if reason is not None:
            logger.info("Blocked LiteLLM call %s: %s", body.litellm_call_id or "-", reason)
        return LiteLLMGuardrailResponse(
            action="NONE" if reason is None else "BLOCKED",
            blocked_reason=reason,
            latentguard=LiteLLMVerdicts(verdicts=[VerdictSummary.from_result(v) for v in verdicts]),
        )

    async def scan(body: AnalyzePromptRequest, request: Request, route: str) -> ScanPromptResponse:
        if not body.prompt.strip():
            raise ApiError(400, "prompt must not be empty or whitespace")
        if LATENTGUARD_SCANNER in body.scanners_suppress:
            return ScanPromptResponse(is_valid=True, scanners={})
        (verdict,) = await classify([body.prompt])
        await audit.record(request, route=route, decisions=audit.from_verdicts([body.prompt], [verdict]))
        risk = risk_score(verdict, backend_threshold(backend))
        return ScanPromptResponse(is_valid=not verdict.harmful, scanners={LATENTGUARD_SCANNER: risk})

    @app.post(
        "/analyze/prompt",
        response_model=AnalyzePromptResponse,
        responses=error_responses(),
        dependencies=protected,
        tags=["llm-guard"],
        summary="LLM Guard: analyze a prompt",
    )
    async def analyze_prompt(body: AnalyzePromptRequest, request: Request) -> AnalyzePromptResponse:
        """Check a prompt with the ``LatentGuard`` scanner; ``sanitized_prompt`` is the prompt unchanged."""
        result = await scan(body, request, "/analyze/prompt")
        return AnalyzePromptResponse(
            sanitized_prompt=body.prompt, is_valid=result.is_valid, scanners=result.scanners
        )

    @app.post(
        "/scan/prompt",
        response_model=ScanPromptResponse,
        responses=error_responses(),
        dependencies=protected,
        tags=["llm-guard"],
        summary="LLM Guard: scan a prompt",
    )
    async def scan_prompt(body: AnalyzePromptRequest, request: Request) -> ScanPromptResponse:
        """Check a prompt with the ``LatentGuard`` scanner (valid and risk, without the prompt)."""
        return await scan(body, request, "/scan/prompt")
