"""The guard evaluation's conversation table: the guard decides on the last user turn, in context.

:func:`conversation_sets` builds two-turn conversations from the test sets: a harmful request after a
harmless exchange (the guard should flag it) and a harmless follow-up after a harmful request the model
refused (the guard should not). :func:`conversation_table` gives each activation guard's TPR on the
first and FPR on the second; the guards read ``t_inst`` of the last user message in the conversation as
the model's chat template renders it (:mod:`latentguard.conversation`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from latentguard.conversation import Conversation
from latentguard.data import builtin_rows
from latentguard.experiments.guard_eval.scorers import Scorer

__all__ = ["HARMLESS_ANSWER", "conversation_sets", "conversation_table"]

#: The assistant's turn after the harmless first request.
HARMLESS_ANSWER = "Sure! Here is a short answer to that."


def conversation_sets(
    harmful: Sequence[str], everyday: Sequence[str], seed: int = 0
) -> tuple[list[Conversation], list[Conversation]]:
    """``(harmful last turn after harmless history, harmless follow-up after a refused harmful turn)``.

    Args:
        harmful: Harmful test prompts.
        everyday: Everyday test prompts.
        seed: Seed of the pairing and of the refusals (``builtin:refusals``).

    Returns:
        Two lists of conversations, ``min(len(harmful), len(everyday))`` each.
    """
    rng = random.Random(seed)
    refusals = [str(r["response"]) for r in builtin_rows("refusals")]
    n = min(len(harmful), len(everyday))
    h, s = list(harmful[:n]), list(everyday[:n])
    later = [
        [
            {"role": "user", "content": a},
            {"role": "assistant", "content": HARMLESS_ANSWER},
            {"role": "user", "content": b},
        ]
        for a, b in zip(s, h, strict=True)
    ]
    shuffled = rng.sample(h, n)
    follow = [
        [
            {"role": "user", "content": a},
            {"role": "assistant", "content": rng.choice(refusals)},
            {"role": "user", "content": b},
        ]
        for a, b in zip(shuffled, s, strict=True)
    ]
    return later, follow


def conversation_table(
    scorers: Sequence[Scorer], harmful_later: Sequence[Conversation], harmless_follow: Sequence[Conversation]
) -> dict[str, Any]:
    """Each guard's TPR on harmful last turns after harmless history, FPR on harmless follow-ups.

    Args:
        scorers: Guards that take conversations (the activation guards).
        harmful_later: From :func:`conversation_sets`.
        harmless_follow: From :func:`conversation_sets`.

    Returns:
        ``{"n": [n_harmful, n_harmless], "rows": [{"key", "name", "tpr_harmful_after_harmless",
        "fpr_harmless_after_harmful"}]}``.
    """
    rows = []
    for sc in scorers:
        _, dh = sc.score(list(harmful_later))  # type: ignore[arg-type]
        _, ds = sc.score(list(harmless_follow))  # type: ignore[arg-type]
        rows.append(
            {
                "key": sc.key,
                "name": sc.name,
                "tpr_harmful_after_harmless": float(np.mean(dh)) if len(dh) else None,
                "fpr_harmless_after_harmful": float(np.mean(ds)) if len(ds) else None,
            }
        )
    return {"n": [len(harmful_later), len(harmless_follow)], "rows": rows}
