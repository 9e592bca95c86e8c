"""Build a refusal judge by name (:func:`load_judge`)."""

from __future__ import annotations

import logging
from typing import Any

from latentguard.encoder import MINILM_PIP_NAME
from latentguard.judge.base import Judge
from latentguard.judge.learned import LearnedJudge
from latentguard.judge.remote import RemoteJudge
from latentguard.judge.substring import SubstringJudge

__all__ = ["load_judge"]

logger = logging.getLogger(__name__)


def load_judge(name: str = "learned", **kwargs: Any) -> Judge:
    """Build a judge by name.

    Args:
        name: ``"learned"`` (default), ``"substring"`` or ``"remote"`` (case-insensitive).
        **kwargs: Passed to the judge's constructor.

    Returns:
        The judge. ``"learned"`` falls back to :class:`~latentguard.judge.substring.SubstringJudge`
        with a logged WARNING when the MiniLM package (:data:`latentguard.encoder.MINILM_PACKAGE`)
        cannot be imported or the artifact is missing.

    Raises:
        ValueError: For an unknown name.

    Example:
        >>> load_judge("substring").name
        'substring'
    """
    key = name.strip().lower()
    if key == "substring":
        return SubstringJudge(**kwargs)
    if key == "remote":
        return RemoteJudge(**kwargs)
    if key == "learned":
        try:
            return LearnedJudge(**kwargs)
        except ImportError as exc:
            logger.warning(
                "learned judge unavailable (%s: %s; install %s); falling back to the substring judge",
                type(exc).__name__,
                exc,
                MINILM_PIP_NAME,
            )
        except FileNotFoundError as exc:
            logger.warning("learned judge unavailable (%s); falling back to the substring judge", exc)
        return SubstringJudge()
    raise ValueError(f"unknown judge {name!r}; choose 'learned', 'substring' or 'remote'")
