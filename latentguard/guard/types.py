"""The guard's result types, shared by scoring, guarded generation and the HTTP service.

* :class:`Verdict`: the guard's verdict on one prompt (:func:`latentguard.guard.score.check`, the
  service's ``POST /v1/classify``).
* :class:`GuardedReply`: the outcome of guarded generation for one prompt
  (:func:`latentguard.guard.guarded.guarded_generate`, the service's ``POST /v1/generate``).
* :class:`Policy`: what guarded generation does with a prompt the guard judges harmful.

The HTTP service's JSON schemas (:mod:`latentguard.guard.serve.schemas`) are built from these types.

Example:
    >>> Policy("flag") is Policy.FLAG
    True
    >>> Verdict(harmful=False, score=0.1).layer_scores
    {}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "BLOCKED_REPLY",
    "POLICIES",
    "ClassifyResult",
    "GenerateResult",
    "GuardResult",
    "GuardedReply",
    "Policy",
    "Verdict",
]


class Policy(str, Enum):
    """What guarded generation does with a prompt the guard judges harmful.

    Attributes:
        BLOCK: Withhold the response (``blocked=True``, ``response=None``).
        FLAG: Return the response marked ``flagged=True``.
        ALLOW: Return the response unchanged (the score is still reported).
    """

    BLOCK = "block"
    FLAG = "flag"
    ALLOW = "allow"

    def __str__(self) -> str:
        """The policy's wire name, e.g. ``"block"``."""
        return self.value

    @classmethod
    def parse(cls, value: Policy | str) -> Policy:
        """The policy named ``value``.

        Args:
            value: A policy or its name (``"block"``, ``"flag"`` or ``"allow"``).

        Returns:
            The policy.

        Raises:
            ValueError: If ``value`` names no policy.
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"policy must be one of {POLICIES}, got {value!r}") from None


#: The short refusal that stands for a blocked answer (chat completions' content, ``guard chat``'s history).
BLOCKED_REPLY = "I can't help with that request."

#: The policies' names, in declaration order: ``("block", "flag", "allow")``.
POLICIES: tuple[str, ...] = tuple(p.value for p in Policy)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The guard's verdict on one prompt.

    Attributes:
        harmful: Whether the guard judges the prompt harmful (``score > threshold``).
        score: The guard score (higher is more harmful).
        layer_scores: Per-layer scores, keyed by hidden-state index (may be empty).
        error: Set when the guard failed on this prompt and the verdict failed closed (harmful, score
            1.0); ``None`` for a real verdict.
        normalized: The guard read a normalised form of the prompt (it held zero-width characters,
            look-alike letters, letter spacing ...; :mod:`latentguard.guard.normalize`).
        category_scores: Probability per risk category (the 11 CatQA categories, keyed by
            :data:`latentguard.guard.categories.CATEGORY_KEYS`), from the guard's category head;
            empty when the guard has none.
    """

    harmful: bool
    score: float
    layer_scores: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    normalized: bool = False
    category_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class GuardedReply:
    """The outcome of guarded generation for one prompt.

    Attributes:
        harmful: The guard's verdict (``score > threshold``).
        score: The guard score.
        blocked: The response was withheld (``block`` policy, harmful prompt).
        flagged: The response is returned but marked harmful (``flag`` policy).
        response: The model's answer, or ``None`` when blocked.
        refused: The refusal judge's verdict on ``response`` (``None`` without a judge, or when blocked).
        repaired_response: The answer regenerated with the refusal direction ablated (repair only).
        error: Set when generation or the guard failed and the reply failed closed (blocked);
            ``None`` otherwise.
        normalized: The prompt was normalised before the guard and the model read it.
        finish_reason: Why the answer ended: ``"stop"``, ``"length"``, or ``"content_filter"`` when
            blocked (``None`` where unknown).
        prompt_tokens: Tokens of the templated prompt (0 where unknown).
        completion_tokens: Tokens generated for the returned answer (0 when blocked or unknown).
        category_scores: The guard's per-category scores (see :attr:`Verdict.category_scores`).
    """

    harmful: bool
    score: float
    blocked: bool
    flagged: bool
    response: str | None
    refused: bool | None = None
    repaired_response: str | None = None
    error: str | None = None
    normalized: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    category_scores: dict[str, float] = field(default_factory=dict)


#: Older names of :class:`Verdict` (``latentguard.guard.score`` and ``latentguard.guard.serve``).
GuardResult = Verdict
ClassifyResult = Verdict
#: Older name of :class:`GuardedReply` (``latentguard.guard.serve``).
GenerateResult = GuardedReply
