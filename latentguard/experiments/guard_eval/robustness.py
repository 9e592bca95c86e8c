"""The guard evaluation's robustness table and small-data row.

:func:`robustness_table`: every obfuscation of :data:`latentguard.obfuscate.EVAL_OBFUSCATIONS`
applied to the harmful and everyday test prompts; per guard, the TPR on the obfuscated harmful prompts
and the FPR on the obfuscated everyday ones. The rows are the Latent Guard with and without the
normaliser (:mod:`latentguard.guard.normalize`, which ``guard check``, the server and guarded
generation apply by default), the text classifier and the model's own refusal (the model reads the
obfuscated prompt as sent). Base64 is reported although the small model cannot read it.

:func:`small_data_guard`: the Latent Guard a user gets from ``guard fit`` with default options on
200 + 200 prompts of a single source each (AdvBench against Alpaca train), for the table's small-data
row.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from latentguard.data import load_shared
from latentguard.experiments.guard_eval.scorers import Scorer
from latentguard.guard.fit import GuardConfig, fit_guard
from latentguard.guard.model import LatentGuard
from latentguard.guard.normalize import normalize
from latentguard.models import LoadedModel
from latentguard.obfuscate import EVAL_OBFUSCATIONS

__all__ = ["SMALL_DATA_SIZE", "normalised", "robustness_table", "small_data_guard"]

#: Prompts per class of the small-data row's training set.
SMALL_DATA_SIZE = 200


def normalised(sc: Scorer, key: str, name: str) -> Scorer:
    """``sc`` reading each prompt after :func:`~latentguard.guard.normalize.normalize`."""

    def score(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return sc.score([normalize(p).text for p in prompts])

    return Scorer(key, name, score)


def robustness_table(
    scorers: Sequence[Scorer],
    harmful: Sequence[str],
    everyday: Sequence[str],
    obfuscations: Mapping[str, Callable[[str], str]] = EVAL_OBFUSCATIONS,
    progress: Callable[[str], None] | None = None,
    keep: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, Any]:
    """TPR on obfuscated harmful prompts and FPR on obfuscated everyday ones, per guard.

    Args:
        scorers: The guards (rows).
        harmful: Harmful test prompts.
        everyday: Everyday test prompts.
        obfuscations: Name -> obfuscation (columns; ``plain`` is added first).
        progress: Called with a message per row.
        keep: Filters a list of obfuscated prompts to those the model can read (an obfuscation can
            make a prompt longer than a small model's context); default: all.

    Returns:
        ``{"obfuscations": [...], "n_harmful", "n_everyday", "n": {obfuscation: [harmful, everyday]},
        "rows": [{"key", "name", "tpr": {...}, "fpr": {...}}]}``.
    """
    columns = {"plain": lambda t: t, **obfuscations}
    sets = {}
    for name, fn in columns.items():
        h, s = [fn(p) for p in harmful], [fn(p) for p in everyday]
        sets[name] = (keep(h), keep(s)) if keep is not None else (h, s)
    rows = []
    for sc in scorers:
        if progress is not None:
            progress(f"robustness: {sc.name}")
        tpr: dict[str, float | None] = {}
        fpr: dict[str, float | None] = {}
        for name, (h, s) in sets.items():
            tpr[name] = float(np.mean(sc.score(h)[1])) if h else None
            fpr[name] = float(np.mean(sc.score(s)[1])) if s else None
        rows.append({"key": sc.key, "name": sc.name, "tpr": tpr, "fpr": fpr})
    return {
        "obfuscations": list(columns),
        "n_harmful": len(harmful),
        "n_everyday": len(everyday),
        "n": {name: [len(h), len(s)] for name, (h, s) in sets.items()},
        "rows": rows,
    }


def small_data_guard(lm: LoadedModel, seed: int = 0, n: int = SMALL_DATA_SIZE) -> LatentGuard | None:
    """``guard fit``'s default guard from ``n`` AdvBench against ``n`` Alpaca-train prompts.

    Args:
        lm: The model.
        seed: Seed of the samples (and of the fit).
        n: Prompts per class.

    Returns:
        The guard, or ``None`` without the shared data sets.
    """
    adv, alp = load_shared("harmful_advbench"), load_shared("harmless_alpaca_train")
    if not adv or not alp:
        return None
    rng = random.Random(seed)
    harmful = rng.sample([r.instruction for r in adv], min(n, len(adv)))
    harmless = rng.sample([r.instruction for r in alp], min(n, len(alp)))
    return fit_guard(
        lm,
        harmful,
        harmless,
        GuardConfig(seed=seed),
        harmful_sources=["harmful_advbench"] * len(harmful),
        harmless_sources=["harmless_alpaca_train"] * len(harmless),
    )
