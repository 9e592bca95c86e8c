"""Over-refusal repair measured on the evaluation's test sets (guarded generation with ``repair=True``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from latentguard.directions import Directions
from latentguard.guard.model import LatentGuard
from latentguard.models import LoadedModel

logger = logging.getLogger(__name__)


def repair_effect(
    lm: LoadedModel,
    guard: LatentGuard,
    judge: Any,
    refusal: Directions,
    sets: Mapping[str, Sequence[str]],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> dict[str, dict[str, float | int]]:
    """How far over-refusal repair changes refusals, per named set of prompts.

    Guarded generation with ``repair=True`` (policy ``allow``): a prompt the guard calls harmless whose
    answer the judge calls a refusal is answered again with ``refusal`` ablated. The repaired answer is
    judged too. Per set: the refusal rate before and after repair, how many were repaired, and how many
    the guard would block (policy ``block``), so harmful sets show whether repair makes the model
    answer harmful prompts that the guard lets through.

    Args:
        lm: The model.
        guard: The Latent Guard deciding which prompts are harmless.
        judge: Judges answers (``judge(responses, instructions)``).
        refusal: The refusal direction ablated on repair.
        sets: ``{name: prompts}``; empty sets are skipped.
        max_new_tokens: Tokens generated per answer.
        batch_size: Prompts per forward.

    Returns:
        ``{name: {"n", "refusal_before", "refusal_after", "repaired", "repair_succeeded",
        "guard_flags", "answered_under_block_before", "answered_under_block_after"}}``.
    """
    from latentguard.guard.guarded import guarded_generate

    out: dict[str, dict[str, float | int]] = {}
    for name, prompts in sets.items():
        if not prompts:
            continue
        replies = guarded_generate(
            lm,
            guard,
            list(prompts),
            policy="allow",
            max_new_tokens=max_new_tokens,
            judge=judge,
            repair=True,
            refusal_direction=refusal,
            batch_size=batch_size,
        )
        todo = [i for i, r in enumerate(replies) if r.repaired_response is not None]
        still = set()
        if todo:
            verdicts = judge.judge([replies[i].repaired_response for i in todo], [prompts[i] for i in todo])
            still = {i for i, v in zip(todo, verdicts, strict=True) if v.refused}
        before = [bool(r.refused) for r in replies]
        after = [b and (i not in todo or i in still) for i, b in enumerate(before)]
        n = len(replies)
        out[name] = {
            "n": n,
            "refusal_before": sum(before) / n,
            "refusal_after": sum(after) / n,
            "repaired": len(todo),
            "repair_succeeded": len(todo) - len(still),
            "guard_flags": sum(r.harmful for r in replies) / n,
            "answered_under_block_before": sum(
                (not b) and not r.harmful for b, r in zip(before, replies, strict=True)
            )
            / n,
            "answered_under_block_after": sum(
                (not a) and not r.harmful for a, r in zip(after, replies, strict=True)
            )
            / n,
        }
        logger.info(
            "repair on %s: refusal %.3f -> %.3f",
            name,
            out[name]["refusal_before"],
            out[name]["refusal_after"],
        )
    return out
