"""What the service needs from a guard (:class:`GuardBackend`), and calling it so that it fails closed.

The functions here run in the service's single backend thread. They check every result against the
protocol; when the backend raises or returns something malformed, a prompt is reported harmful with
score 1.0 and an ``error`` (classify), and generation is blocked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from latentguard.conversation import Prompt
from latentguard.guard.types import GuardedReply, Policy, Verdict

logger = logging.getLogger(__name__)

__all__ = [
    "GuardBackend",
    "classify_isolating",
    "fail_closed_verdict",
    "generate_checked",
]


class GuardBackend(Protocol):
    """What the HTTP service needs from a Latent Guard.

    Calls are made from a single worker thread, one at a time, so implementations need not be thread
    safe. Both methods may raise; the service then fails closed.
    """

    def classify(self, prompts: list[Prompt]) -> list[Verdict]:
        """Classify a batch of prompts.

        Args:
            prompts: Non-empty list of prompts: instructions, or (from the compatible routes) conversations.

        Returns:
            One verdict per prompt, in the same order.
        """
        ...

    def generate(self, prompts: list[str], max_new_tokens: int, policy: Policy) -> list[GuardedReply]:
        """Generate guarded responses.

        Args:
            prompts: Non-empty list of prompts.
            max_new_tokens: Generation budget per prompt.
            policy: The guard policy (a ``str`` enum: ``"block"``, ``"flag"`` or ``"allow"``).

        Returns:
            One reply per prompt, in the same order.
        """
        ...

    @property
    def info(self) -> dict[str, Any]:
        """Cheap, JSON-friendly description (model name, guard threshold, layers...) shown at /readyz."""
        ...


class _BackendContractError(Exception):
    """The backend returned something that does not follow the protocol."""


def _short_error(exc: BaseException) -> str:
    """Client-facing description of a backend failure (no internals beyond the exception type)."""
    return f"guard backend error ({type(exc).__name__}); failing closed"


def _strict_bool(value: Any, what: str) -> bool:
    if value is True or value is False:
        return bool(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        value = item()
        if value is True or value is False:
            return bool(value)
    raise _BackendContractError(f"{what} must be a bool, got {type(value).__name__}")


def _finite_float(value: Any, what: str) -> float:
    if isinstance(value, (str, bytes)):
        raise _BackendContractError(f"{what} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise _BackendContractError(f"{what} must be a number, got {type(value).__name__}") from exc
    if not math.isfinite(number):
        raise _BackendContractError(f"{what} must be finite, got {number}")
    return number


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BackendContractError(f"{what} must be a non-negative int")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _BackendContractError(f"{what} must be a str or None, got {type(value).__name__}")


def _category_scores(result: Any) -> dict[str, float]:
    scores = getattr(result, "category_scores", None) or {}
    if not isinstance(scores, Mapping):
        raise _BackendContractError("category_scores must be a mapping")
    return {str(k): _finite_float(v, f"category_scores[{k}]") for k, v in scores.items()}


def _checked_verdict(result: Any) -> Verdict:
    """Validate one backend classify result."""
    layer_scores = getattr(result, "layer_scores", None) or {}
    if not isinstance(layer_scores, Mapping):
        raise _BackendContractError("layer_scores must be a mapping")
    return Verdict(
        harmful=_strict_bool(result.harmful, "harmful"),
        score=_finite_float(result.score, "score"),
        layer_scores={int(k): _finite_float(v, f"layer_scores[{k}]") for k, v in layer_scores.items()},
        normalized=getattr(result, "normalized", False) is True,
        category_scores=_category_scores(result),
    )


def fail_closed_verdict(exc: BaseException) -> Verdict:
    """The verdict on a prompt the guard failed on: harmful, score 1.0, with an error.

    Args:
        exc: The failure.

    Returns:
        The verdict.
    """
    return Verdict(harmful=True, score=1.0, layer_scores={}, error=_short_error(exc))


def classify_isolating(backend: GuardBackend, prompts: list[Prompt]) -> list[Verdict]:
    """Classify ``prompts``; on failure retry in halves so only the failing prompts fail closed.

    Args:
        backend: The guard backend.
        prompts: Non-empty list of prompts.

    Returns:
        One verdict per prompt; failed prompts are harmful with score 1.0 and an error.
    """
    try:
        results = list(backend.classify(list(prompts)))
        if len(results) != len(prompts):
            raise _BackendContractError(
                f"classify returned {len(results)} results for {len(prompts)} prompts"
            )
        return [_checked_verdict(r) for r in results]
    except Exception as exc:
        if len(prompts) == 1:
            logger.exception("Guard backend failed to classify a prompt; failing closed")
            return [fail_closed_verdict(exc)]
        logger.warning(
            "Guard backend failed on a batch of %d prompts (%s); retrying in halves to isolate the failure",
            len(prompts),
            type(exc).__name__,
        )
    # Retry outside the except block, so that a failure in a half is not chained to this one.
    mid = len(prompts) // 2
    return classify_isolating(backend, prompts[:mid]) + classify_isolating(backend, prompts[mid:])


def _checked_reply(result: Any, policy: Policy) -> GuardedReply:
    """Validate one backend generate result and enforce the ``block`` policy."""
    reply = GuardedReply(
        harmful=_strict_bool(result.harmful, "harmful"),
        score=_finite_float(result.score, "score"),
        blocked=_strict_bool(result.blocked, "blocked"),
        flagged=_strict_bool(result.flagged, "flagged"),
        response=_optional_str(result.response, "response"),
        repaired_response=_optional_str(getattr(result, "repaired_response", None), "repaired_response"),
        normalized=getattr(result, "normalized", False) is True,
        finish_reason=_optional_str(getattr(result, "finish_reason", None), "finish_reason"),
        prompt_tokens=_count(getattr(result, "prompt_tokens", 0), "prompt_tokens"),
        completion_tokens=_count(getattr(result, "completion_tokens", 0), "completion_tokens"),
        category_scores=_category_scores(result),
    )
    if policy is Policy.BLOCK and reply.harmful and not reply.blocked:
        logger.warning("Backend did not block a harmful prompt under policy 'block'; blocking it")
        reply = dataclasses.replace(reply, blocked=True, response=None)
    if reply.blocked and (reply.response is not None or reply.finish_reason != "content_filter"):
        reply = dataclasses.replace(reply, response=None, finish_reason="content_filter", completion_tokens=0)
    return reply


def _fail_closed_reply(exc: BaseException) -> GuardedReply:
    return GuardedReply(
        harmful=True,
        score=1.0,
        blocked=True,
        flagged=False,
        response=None,
        repaired_response=None,
        error=_short_error(exc),
        finish_reason="content_filter",
    )


def generate_checked(
    backend: GuardBackend, prompts: list[str], max_new_tokens: int, policy: Policy
) -> list[GuardedReply]:
    """Run guarded generation, failing closed for the whole request if the backend misbehaves.

    Args:
        backend: The guard backend.
        prompts: Non-empty list of prompts.
        max_new_tokens: Generation budget per prompt.
        policy: Generation policy.

    Returns:
        One reply per prompt.
    """
    try:
        results = list(backend.generate(list(prompts), max_new_tokens, policy))
        if len(results) != len(prompts):
            raise _BackendContractError(
                f"generate returned {len(results)} results for {len(prompts)} prompts"
            )
        return [_checked_reply(r, policy) for r in results]
    except Exception as exc:
        logger.exception("Guard backend failed to generate for %d prompts; failing closed", len(prompts))
        return [_fail_closed_reply(exc) for _ in prompts]
