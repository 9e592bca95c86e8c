"""Paired comparisons of the table's rows, prompt by prompt: exact McNemar tests on the decision
columns and a paired bootstrap of the harmful-vs-XSTest-style AUROC."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from latentguard.experiments.guard_eval.config import SAFE_COLUMNS
from latentguard.experiments.guard_eval.rows import LATENT_GUARD, ROW_NAMES
from latentguard.guard.evaluate import paired_auroc_bootstrap


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: p-value of ``only_a`` vs ``only_b`` discordant pairs.

    Args:
        only_a: Pairs only the first classifier gets right.
        only_b: Pairs only the second gets right.

    Returns:
        The two-sided binomial p-value (1 when there is no discordant pair).

    Example:
        >>> round(mcnemar_p(5, 0), 4)
        0.0625
        >>> mcnemar_p(3, 3)
        1.0
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(
    table: Mapping[str, Any], ours: str | None = None, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Compare one row with every other row, prompt by prompt, on the decision columns.

    For each (other row, column): the prompts only ``ours`` decides correctly, those only the other
    decides correctly, and the exact McNemar p-value. Rows without per-prompt ``flags`` are skipped.

    Args:
        table: A result of :func:`.run.evaluate_guards` (``rows`` with ``name`` and ``flags``).
        ours: Display name of the row compared; defaults to the Latent Guard's.
        columns: Decision columns compared; defaults to every one ``ours`` has.

    Returns:
        One entry per (other row, column): ``other`` (its name), ``column``, ``n``, ``ours`` and
        ``theirs`` (the flagged fractions), ``only_ours_correct``, ``only_theirs_correct`` and ``p``.

    Raises:
        KeyError: ``ours`` is not a row of ``table``.
    """
    ours = ours or ROW_NAMES[LATENT_GUARD]
    rows = {r["name"]: r for r in table["rows"] if "flags" in r}
    if ours not in rows:
        raise KeyError(f"no row named {ours!r} with per-prompt decisions")
    mine = rows[ours]["flags"]
    out = []
    for name, row in rows.items():
        if name == ours:
            continue
        for col in columns or list(mine):
            a, b = mine.get(col), row["flags"].get(col)
            if a is None or b is None or len(a) != len(b) or not a:
                continue
            want = col not in SAFE_COLUMNS
            ok_a = [x == want for x in a]
            ok_b = [x == want for x in b]
            only_a = sum(x and not y for x, y in zip(ok_a, ok_b, strict=True))
            only_b = sum(y and not x for x, y in zip(ok_a, ok_b, strict=True))
            out.append(
                {
                    "other": name,
                    "column": col,
                    "n": len(a),
                    "ours": sum(a) / len(a),
                    "theirs": sum(b) / len(b),
                    "only_ours_correct": only_a,
                    "only_theirs_correct": only_b,
                    "p": mcnemar_p(only_a, only_b),
                }
            )
    return out


def lookalike_auroc_comparison(
    table: Mapping[str, Any], ours: str | None = None, n_boot: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """AUROC of harmful vs XSTest-style test prompts: ``ours`` against every other row (paired bootstrap).

    Threshold-free: how well each guard's score separates harmful requests from safe prompts that
    look unsafe, whatever threshold it was given. Rows without per-prompt ``scores`` are skipped.

    Args:
        table: A result of :func:`.run.evaluate_guards` (``rows`` with ``name`` and ``scores``).
        ours: Display name of the row compared; defaults to the Latent Guard's.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        One entry per other row: ``other``, ``n_boot`` and
        :func:`latentguard.guard.evaluate.paired_auroc_bootstrap`'s ``diff``, ``lo``, ``hi``, ``p``
        (empty when ``ours`` has no scores on both sets).
    """
    ours = ours or ROW_NAMES[LATENT_GUARD]
    rows = {r["name"]: r for r in table["rows"] if r.get("scores")}
    if ours not in rows:
        return []
    mine = rows[ours]["scores"]
    if not mine["test_harmful"] or not mine["test_xstest"]:
        return []
    out = []
    for name, row in rows.items():
        if name == ours:
            continue
        theirs = row["scores"]
        boot = paired_auroc_bootstrap(
            mine["test_harmful"],
            mine["test_xstest"],
            theirs["test_harmful"],
            theirs["test_xstest"],
            n_boot=n_boot,
            seed=seed,
        )
        out.append({"other": name, "n_boot": n_boot, **boot})
    return out
