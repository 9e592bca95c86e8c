"""Markdown tables of the guard evaluation: the main table, the paired comparisons, the seed spread,
the over-refusal repair and the robustness table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def format_repair(effect: Mapping[str, Mapping[str, float | int]]) -> str:
    """A Markdown table of :func:`.repair.repair_effect`.

    Args:
        effect: Its result.

    Returns:
        The table.
    """
    lines = [
        "| prompts | n | refused before | refused after repair | guard flags | answered under block, before -> after |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in effect.items():
        lines.append(
            f"| {name} | {e['n']} | {e['refusal_before']:.3f} | {e['refusal_after']:.3f} | {e['guard_flags']:.3f} | "
            f"{e['answered_under_block_before']:.3f} -> {e['answered_under_block_after']:.3f} |"
        )
    return "\n".join(lines)


def format_lookalike_comparison(comparison: Sequence[dict[str, Any]], ours: str = "Latent Guard") -> str:
    """A Markdown table of :func:`.stats.lookalike_auroc_comparison`.

    Args:
        comparison: Its result.
        ours: What the header calls the compared row.

    Returns:
        The table.
    """
    lines = [
        f"| other guard | AUROC({ours}) - AUROC(other) | 95% interval | bootstrap p |",
        "|---|---|---|---|",
    ]
    for c in comparison:
        p = f"{c['p']:.3g}" if c["p"] > 0 else f"< {1 / c['n_boot']:.2g}"
        lines.append(f"| {c['other']} | {c['diff']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | {p} |")
    return "\n".join(lines)


def format_comparison(comparison: Sequence[dict[str, Any]], ours: str = "Latent Guard") -> str:
    """A Markdown table of :func:`.stats.paired_comparison`.

    Args:
        comparison: Its result.
        ours: What the header calls the compared row.

    Returns:
        The table.
    """
    lines = [
        f"| other guard | column | n | {ours} | other | only {ours} right | only other right | McNemar p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparison:
        lines.append(
            f"| {c['other']} | {c['column']} | {c['n']} | {c['ours']:.3f} | {c['theirs']:.3f} | "
            f"{c['only_ours_correct']} | {c['only_theirs_correct']} | {c['p']:.3g} |"
        )
    return "\n".join(lines)


def format_table(table: Mapping[str, Any]) -> str:
    """A Markdown table of a result of :func:`.run.evaluate_guards`.

    Args:
        table: ``columns`` and ``rows`` (``name`` and ``values``, ``None`` shown as ``-``).

    Returns:
        The table.
    """
    cols = table["columns"]
    lines = ["| guard | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in table["rows"]:
        cells = ["-" if v is None else f"{v:.3f}" for v in row["values"]]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_seed_spread(spread: Mapping[str, Any], columns: Sequence[str]) -> str:
    """A Markdown table: each column of each activation guard as ``mean [min, max]`` over split seeds.

    Args:
        spread: :func:`.run.seed_spread`'s result.
        columns: The column names.

    Returns:
        The text (a heading line, then the table).
    """
    n = len(spread["seeds"])
    lines = [
        f"Over {n} train/validation split seeds ({spread['seeds']}): mean [min, max]",
        "",
        "| guard | " + " | ".join(columns) + " | layers per seed |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for row in spread["rows"]:
        cells = []
        for j in range(len(columns)):
            vals = [v[j] for v in row["values_by_seed"] if v[j] is not None]
            cells.append(f"{np.mean(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]" if vals else "-")
        layer_txt = "; ".join(
            f"{ls[0]}-{ls[-1]}" if len(ls) > 1 else str(ls[0]) for ls in row["layers_by_seed"]
        )
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {layer_txt} |")
    return "\n".join(lines)


def format_robustness(table: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`.robustness.robustness_table`: TPR / FPR per obfuscation and guard.

    Args:
        table: Its result.

    Returns:
        The table (one row per obfuscation, one ``TPR / FPR`` column per guard).
    """
    rows = [r for r in table.get("rows", []) if isinstance(r, Mapping)]

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "| obfuscation | " + " | ".join(f"{r['name']} TPR / FPR" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for ob in table.get("obfuscations", []):
        lines.append(
            f"| {ob} | "
            + " | ".join(f"{cell(r['tpr'].get(ob))} / {cell(r['fpr'].get(ob))}" for r in rows)
            + " |"
        )
    return "\n".join(lines)


def format_conversations(table: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`.conversations.conversation_table`.

    Args:
        table: Its result.

    Returns:
        The table.
    """

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "| guard | TPR harmful last turn after harmless history | FPR harmless follow-up after a harmful turn |",
        "|---|---|---|",
    ]
    for r in table.get("rows", []):
        lines.append(
            f"| {r['name']} | {cell(r.get('tpr_harmful_after_harmless'))} | {cell(r.get('fpr_harmless_after_harmful'))} |"
        )
    return "\n".join(lines)


def format_categories(cats: Mapping[str, Any]) -> str:
    """A Markdown table of the per-category head's held-out accuracy (``guard_eval.json`` ``categories``).

    Args:
        cats: ``{"layer", "val_accuracy", "val_accuracy_per_category", "n_train", "n_val"}``.

    Returns:
        The table.
    """
    lines = ["| category | held-out accuracy |", "|---|---|"]
    for name, acc in (cats.get("val_accuracy_per_category") or {}).items():
        lines.append(f"| {name} | {acc:.3f} |")
    lines.append(
        f"| **all** ({cats.get('n_val')} held out) | **{cats.get('val_accuracy', float('nan')):.3f}** |"
    )
    return "\n".join(lines)
