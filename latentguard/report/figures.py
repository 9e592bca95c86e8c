"""Figures of the run report, one per analysis section of ``summary.json``.

Each figure comes with a one-line ``reading`` computed from the numbers: what the figure shows on
this run. A figure whose section is missing or empty is skipped (logged), never an error.

matplotlib is imported inside :func:`make_figures` (Agg backend), so importing this module neither
imports matplotlib nor changes its backend.

Example:
    >>> figs = make_figures(summary, Path("runs/x/figures"))        # doctest: +SKIP
    >>> figs[0].key, figs[0].reading                                  # doctest: +SKIP
    ('beliefs_per_layer', 'at t_inst, 12/14 accepted-harmful prompts sit on the harmful side ...')
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from latentguard.report.claims import (
    as_float,
    finetune_means,
    finite,
    fmt_num,
    format_fraction,
    jailbreak_drops,
    mean_abs_cosine_from_middle,
    off_diagonal,
    peak,
    section,
    side_fraction,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

logger = logging.getLogger(__name__)

GROUPS: Final = ("refused_harmful", "accepted_harmless", "refused_harmless", "accepted_harmful")
MAIN_GROUPS: Final = ("accepted_harmful", "refused_harmless")
GROUP_COLORS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "refused_harmful": "#c0392b",
        "accepted_harmless": "#2471a3",
        "refused_harmless": "#8e44ad",
        "accepted_harmful": "#d68910",
    }
)
DIRECTION_COLORS: Final[Mapping[str, str]] = MappingProxyType(
    {"harmfulness": "#c0392b", "refusal": "#1e8449"}
)
KIND_MARKERS: Final[Mapping[str, str]] = MappingProxyType({"template": "o", "persuasion": "s", "gcg": "^"})
KIND_COLORS: Final[Mapping[str, str]] = MappingProxyType(
    {"template": "#1f77b4", "persuasion": "#ff7f0e", "gcg": "#2ca02c"}
)
DPI: Final = 110


@dataclass(frozen=True)
class Figure:
    """One saved figure of the report.

    Attributes:
        key: Stable id, e.g. ``"beliefs_per_layer"``.
        path: Where the image was written.
        title: Title shown above the figure.
        reading: One line, computed from the numbers, saying what the figure shows on this run.
    """

    key: str
    path: Path
    title: str
    reading: str


def _label(group: str) -> str:
    return group.replace("_", "-")


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    """A float64 array with NaN for missing values."""
    return np.array([as_float(v) for v in values or ()], dtype=np.float64)


def _xs(layers: Sequence[Any] | None, n: int) -> np.ndarray:
    """The layer axis for ``n`` values (positions when ``layers`` does not match)."""
    lay = _floats(layers)
    return lay if len(lay) == n else np.arange(n, dtype=np.float64)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _pct(value: Any) -> str:
    x = as_float(value)
    return "n/a" if math.isnan(x) else f"{x:.0%}"


# ---------------------------------------------------------------- 1. beliefs per layer


def _beliefs_per_layer(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "beliefs")
    per_layer = (sec or {}).get("per_layer") or {}
    positions = ("t_inst", "t_post_inst")
    if not any(per_layer.get(p) for p in positions):
        return None
    fig.set_size_inches(11.5, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    order = [g for g in GROUPS if g not in MAIN_GROUPS] + list(MAIN_GROUPS)
    order += sorted({g for p in positions for g in per_layer.get(p) or {}} - set(order))
    for ax, pos in zip(axes, positions, strict=True):
        groups = per_layer.get(pos) or {}
        for group in order:
            stats = groups.get(group)
            if not stats or not stats.get("mean"):
                continue
            mean = _floats(stats["mean"])
            std = _floats(stats.get("std")) if stats.get("std") else np.zeros_like(mean)
            std = std if len(std) == len(mean) else np.zeros_like(mean)
            x = _xs(sec.get("layers") if sec else None, len(mean))
            main = group in MAIN_GROUPS
            color = GROUP_COLORS.get(group, "#555555")
            n = stats.get("n")
            ax.plot(
                x,
                mean,
                color=color,
                lw=2.2 if main else 1.2,
                alpha=1.0 if main else 0.55,
                ls="-" if main else "--",
                label=f"{_label(group)} (n={n})" if n is not None else _label(group),
            )
            if main:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(pos)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("belief score s(h)")
    axes[1].legend(fontsize=8, loc="best")
    parts = []
    for group, side in (("accepted_harmful", "harmful side"), ("refused_harmless", "harmful/refusal side")):
        got = {pos: side_fraction(summary, pos, group) for pos in positions}
        if all(v is not None for v in got.values()):
            a, b = got["t_inst"], got["t_post_inst"]
            assert a is not None and b is not None
            parts.append(
                f"at t_inst {format_fraction(*a)} {_label(group)} prompts sit on the {side} (s > 0), "
                f"at t_post_inst {format_fraction(*b)}"
            )
    if not parts:
        means = [
            f"{_label(g)} mean s at {pos} = {fmt_num(np.nanmean(_floats(st.get('mean'))))}"
            for pos in positions
            for g, st in (per_layer.get(pos) or {}).items()
            if st and st.get("mean") and g in MAIN_GROUPS
        ]
        parts = means or ["no accepted-harmful or refused-harmless group on this run (0 prompts)"]
    title = (
        "Belief score s(h) = cos(h, C_refused_harmful) − cos(h, C_accepted_harmless) per layer (mean ± std)"
    )
    return title, "; ".join(parts)


# ---------------------------------------------------------------- 2. beliefs scatter


def _beliefs_scatter(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "beliefs")
    points = [
        p
        for p in (sec or {}).get("points") or ()
        if not (math.isnan(as_float(p.get("delta_harmful"))) or math.isnan(as_float(p.get("delta_refuse"))))
    ]
    if sec is None or not points:
        return None
    fig.set_size_inches(7.5, 6.0)
    ax = fig.subplots()
    groups = [g for g in GROUPS if any(p.get("group") == g for p in points)]
    groups += sorted({str(p.get("group")) for p in points} - set(groups))
    means: dict[str, tuple[float, float]] = {}
    for group in groups:
        xs = _floats([p["delta_harmful"] for p in points if p.get("group") == group])
        ys = _floats([p["delta_refuse"] for p in points if p.get("group") == group])
        color = GROUP_COLORS.get(group, "#555555")
        ax.scatter(
            xs, ys, s=22, color=color, alpha=0.7, label=f"{_label(group)} (n={len(xs)})", edgecolors="none"
        )
        means[group] = (float(xs.mean()), float(ys.mean()))
        ax.scatter(
            *means[group], s=140, marker="X", color=color, edgecolors="black", linewidths=0.8, zorder=5
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("Δharmful (belief at t_inst)")
    ax.set_ylabel("Δrefuse (belief at t_post_inst)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="X = group mean", title_fontsize=8)
    corr = as_float(sec.get("corr"))
    if math.isnan(corr) and len(points) >= 3:
        allx = _floats([p["delta_harmful"] for p in points])
        ally = _floats([p["delta_refuse"] for p in points])
        if allx.std() > 0 and ally.std() > 0:
            corr = float(np.corrcoef(allx, ally)[0, 1])
    r = "n/a" if math.isnan(corr) else f"{corr:.2f}"
    parts = [f"Pearson r = {r} over {len(points)} prompts"]
    for group in MAIN_GROUPS:
        if group in means:
            mx, my = means[group]
            parts.append(f"{_label(group)} mean (Δharmful, Δrefuse) = ({mx:.3f}, {my:.3f})")
    return f"Δharmful vs Δrefuse per prompt (Pearson r = {r})", "; ".join(parts)


# ---------------------------------------------------------------- 3. directions


def _directions(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "directions")
    keys = ("harmfulness_norm", "refusal_norm", "cosine", "cosine_refusal_from_harmless")
    if sec is None or not any(finite(sec.get(k)) for k in keys):
        return None
    fig.set_size_inches(9.0, 4.6)
    ax = fig.subplots()
    layers = sec.get("layers")
    for key, color, label in (
        ("harmfulness_norm", DIRECTION_COLORS["harmfulness"], "‖harmfulness‖"),
        ("refusal_norm", DIRECTION_COLORS["refusal"], "‖refusal‖"),
    ):
        if finite(sec.get(key)):
            vals = _floats(sec[key])
            ax.plot(_xs(layers, len(vals)), vals, color=color, lw=1.8, marker="o", ms=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("direction norm")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    cos_all: list[float] = []
    for key, style, label in (
        ("cosine", "-", "cos(harmfulness, refusal)"),
        ("cosine_refusal_from_harmless", ":", "cos(harmfulness, refusal from refused-harmless)"),
    ):
        if finite(sec.get(key)):
            vals = _floats(sec[key])
            cos_all += finite(sec[key])
            ax2.plot(_xs(layers, len(vals)), vals, color="black", ls=style, lw=1.8, label=label)
    low = min([-0.05, *cos_all])
    ax2.set_ylim(low - 0.05, 1.05)
    ax2.set_ylabel("cosine")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper left")
    parts = []
    cos = finite(sec.get("cosine"))
    if cos:
        parts.append(f"cos(harmfulness, refusal) ranges {min(cos):.2f} to {max(cos):.2f}")
        got = mean_abs_cosine_from_middle(summary)
        if got is not None:
            parts.append(f"mean |cos| from layer {got[1]} on = {got[0]:.2f}")
    other = mean_abs_cosine_from_middle(summary, "cosine_refusal_from_harmless")
    if other is not None:
        parts.append(f"with the refused-harmless refusal direction {other[0]:.2f}")
    for key, name in (("harmfulness_norm", "harmfulness"), ("refusal_norm", "refusal")):
        top = peak(sec.get(key) or [], list(_xs(layers, len(sec.get(key) or [])).astype(int)))
        if top is not None:
            parts.append(f"‖{name}‖ peaks at {top[0]:.3g} (layer {top[1]})")
    return "Harmfulness and refusal directions per layer: norms (left) and cosine (right)", "; ".join(parts)


# ---------------------------------------------------------------- 4-5. steering and inversion


def _rate_panels(
    sec: Mapping[str, Any],
    fig: MplFigure,
    ylabel: str,
) -> list[tuple[str, str, float, float, int]]:
    """Two panels of per-layer rates; returns (case, direction, extreme, baseline, layer) per curve."""
    fig.set_size_inches(11.5, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    layers = [int(x) for x in _xs(sec.get("layers"), len(sec.get("layers") or []))]
    base = sec.get("baseline") or {}
    out = []
    for ax, case, base_key, title in (
        (axes[0], "add_to_harmless", "harmless", "added to harmless prompts"),
        (axes[1], "subtract_from_harmful", "harmful", "subtracted from harmful prompts"),
    ):
        curves = sec.get(case) or {}
        for name in sorted(curves, key=lambda k: (k not in DIRECTION_COLORS, k)):
            vals = _floats(curves[name])
            if not np.isfinite(vals).any():
                continue
            x = _xs(sec.get("layers"), len(vals))
            ax.plot(x, vals, color=DIRECTION_COLORS.get(name, "#555555"), lw=2, marker="o", ms=3, label=name)
            got = peak(
                curves[name],
                layers if len(layers) == len(vals) else list(range(len(vals))),
                case == "add_to_harmless",
            )
            if got is not None:
                out.append((case, name, got[0], as_float(base.get(base_key)), got[1]))
        b = as_float(base.get(base_key))
        if not math.isnan(b):
            ax.axhline(b, color="grey", ls="--", lw=1.2, label=f"baseline ({b:.2f})")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"direction {title}")
        ax.set_xlabel("steered layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(ylabel)
    return out


def _has_curves(sec: Mapping[str, Any] | None) -> bool:
    return sec is not None and any(
        finite(v)
        for case in ("add_to_harmless", "subtract_from_harmful")
        for v in (sec.get(case) or {}).values()
    )


def _steering_sweep(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "steering")
    if sec is None or not _has_curves(sec):
        return None
    extremes = _rate_panels(sec, fig, "refusal rate")
    parts = []
    for case, verb, word in (
        ("add_to_harmless", "adding to harmless", "peaks"),
        ("subtract_from_harmful", "subtracting from harmful", "lowest"),
    ):
        items = [e for e in extremes if e[0] == case]
        if items:
            desc = ", ".join(f"{name} {word} {v:.2f} (layer {layer})" for _, name, v, _, layer in items)
            parts.append(f"{verb}: {desc} vs baseline {fmt_num(items[0][3])}")
    title = (
        f"Steering: refusal rate per layer (coefficient {fmt_num(sec.get('coefficient'), 2)}, "
        f"{sec.get('n_prompts', 'n/a')} prompts per case)"
    )
    return title, "; ".join(parts) or "no finite rate"


def _inversion(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "inversion")
    if sec is None or not _has_curves(sec):
        return None
    _rate_panels(sec, fig, "rate of 'Certainly' (judged harmful)")
    flip = sec.get("flip") or {}
    ranking = sec.get("ranking") or {}
    parts = []
    for name in ("harmfulness", "refusal"):
        if not math.isnan(as_float(flip.get(name))):
            best = (ranking.get(name) or [None])[0]
            parts.append(
                f"{name} flip {fmt_num(flip[name])}" + (f" (best layer {best})" if best is not None else "")
            )
    base = sec.get("baseline") or {}
    parts.append(
        f"baseline 'Certainly' rate {fmt_num(base.get('harmless'))} on harmless, {fmt_num(base.get('harmful'))} on harmful"
    )
    agreement = as_float((sec.get("greedy_check") or {}).get("agreement"))
    if not math.isnan(agreement):
        parts.append(f"greedy/logit agreement {agreement:.2f}")
    n_q = len(sec.get("questions") or [])
    return f"Reply inversion: rate of 'Certainly' per steered layer ({n_q} question(s))", "; ".join(parts)


# ---------------------------------------------------------------- 6. jailbreaks


def _jailbreaks(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "jailbreaks")
    points = [
        p
        for p in (sec or {}).get("points") or ()
        if not (math.isnan(as_float(p.get("delta_harmful"))) or math.isnan(as_float(p.get("delta_refuse"))))
    ]
    if sec is None or not points:
        return None
    fig.set_size_inches(7.5, 6.0)
    ax = fig.subplots()
    known = list(KIND_MARKERS)
    kinds = sorted(
        {str(p.get("kind")) for p in points}, key=lambda k: (known.index(k) if k in known else len(known), k)
    )
    for kind in kinds:
        marker = KIND_MARKERS.get(kind, "D")
        color = KIND_COLORS.get(kind, "#7f7f7f")
        for success in (True, False):
            sel = [p for p in points if str(p.get("kind")) == kind and bool(p.get("success")) == success]
            if not sel:
                continue
            ax.scatter(
                _floats([p["delta_harmful"] for p in sel]),
                _floats([p["delta_refuse"] for p in sel]),
                marker=marker,
                s=36,
                facecolors=color if success else "none",
                edgecolors=color,
                linewidths=1.2,
                label=f"{kind} {'succeeded' if success else 'failed'} (n={len(sel)})",
            )
    reference = sec.get("reference") or {}
    for group in ("refused_harmful", "accepted_harmless"):
        ref = reference.get(group) or {}
        x, y = as_float(ref.get("delta_harmful")), as_float(ref.get("delta_refuse"))
        if not (math.isnan(x) or math.isnan(y)):
            ax.scatter(
                [x],
                [y],
                marker="*",
                s=320,
                color=GROUP_COLORS[group],
                edgecolors="black",
                linewidths=0.8,
                zorder=6,
                label=f"{_label(group)} mean",
            )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("Δharmful (belief at t_inst)")
    ax.set_ylabel("Δrefuse (belief at t_post_inst)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best", title="filled = jailbreak succeeded", title_fontsize=8)
    successes = [p for p in points if p.get("success")]
    parts = [f"{len(successes)}/{len(points)} jailbreak prompts succeeded"]
    drops = jailbreak_drops(successes, reference.get("refused_harmful") or {})
    if drops is not None:
        parts.append(
            f"relative to refused-harmful, successful ones drop Δrefuse by {drops[1]:.3f} and Δharmful by {drops[0]:.3f}"
        )
    rates = sec.get("kinds") or {}
    rate_text = ", ".join(f"{k} {_pct((rates.get(k) or {}).get('success_rate'))}" for k in sorted(rates))
    title = "Jailbreaks in belief space" + (f" (success rate: {rate_text})" if rate_text else "")
    return title, "; ".join(parts)


# ---------------------------------------------------------------- 7. fine-tuning attack


def _finetune_attack(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "finetune_attack")
    means = finetune_means(sec) if sec is not None else None
    if sec is None or means is None:
        return None
    fig.set_size_inches(11.5, 4.6)
    ax_pts, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1.0]})
    for p in sec.get("points") or ():
        b, a = p.get("before") or {}, p.get("after") or {}
        xy = [as_float(d.get(k)) for d in (b, a) for k in ("delta_harmful", "delta_refuse")]
        if any(math.isnan(v) for v in xy):
            continue
        ax_pts.annotate(
            "",
            xy=(xy[2], xy[3]),
            xytext=(xy[0], xy[1]),
            arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 0.7},
        )
        ax_pts.scatter([xy[0]], [xy[1]], s=14, color="#2471a3", zorder=3)
        ax_pts.scatter([xy[2]], [xy[3]], s=14, color="#c0392b", zorder=3)
    mb, ma = means["before"], means["after"]
    ax_pts.annotate(
        "",
        xy=(ma["delta_harmful"], ma["delta_refuse"]),
        xytext=(mb["delta_harmful"], mb["delta_refuse"]),
        arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 2.2},
    )
    ax_pts.scatter(
        [mb["delta_harmful"]],
        [mb["delta_refuse"]],
        s=90,
        color="#2471a3",
        edgecolors="black",
        zorder=5,
        label="before (mean)",
    )
    ax_pts.scatter(
        [ma["delta_harmful"]],
        [ma["delta_refuse"]],
        s=90,
        color="#c0392b",
        edgecolors="black",
        zorder=5,
        label="after (mean)",
    )
    ax_pts.axhline(0.0, color="grey", lw=0.8)
    ax_pts.axvline(0.0, color="grey", lw=0.8)
    ax_pts.set_xlabel("Δharmful")
    ax_pts.set_ylabel("Δrefuse")
    ax_pts.set_title("per prompt: before → after")
    ax_pts.grid(alpha=0.3)
    ax_pts.legend(fontsize=8)
    x = np.arange(2)
    ax_bar.bar(
        x - 0.18, [mb["delta_harmful"], mb["delta_refuse"]], width=0.36, color="#2471a3", label="before"
    )
    ax_bar.bar(
        x + 0.18, [ma["delta_harmful"], ma["delta_refuse"]], width=0.36, color="#c0392b", label="after"
    )
    ax_bar.set_xticks(x, ["Δharmful", "Δrefuse"])
    ax_bar.axhline(0.0, color="grey", lw=0.8)
    ax_bar.set_title("means")
    ax_bar.grid(alpha=0.3, axis="y")
    ax_bar.legend(fontsize=8)
    rb, ra = sec.get("refusal_rate_before"), sec.get("refusal_rate_after")
    reading = (
        f"mean Δrefuse {mb['delta_refuse']:.3f} → {ma['delta_refuse']:.3f} "
        f"(change {ma['delta_refuse'] - mb['delta_refuse']:+.3f}) while mean Δharmful "
        f"{mb['delta_harmful']:.3f} → {ma['delta_harmful']:.3f} (change {ma['delta_harmful'] - mb['delta_harmful']:+.3f}); "
        f"refusal rate {_pct(rb)} → {_pct(ra)} over {len(sec.get('points') or [])} prompts"
    )
    return f"Fine-tuning attack: beliefs before vs after (refusal rate {_pct(rb)} → {_pct(ra)})", reading


# ---------------------------------------------------------------- 8. categories


def _heatmap(
    ax: Axes, fig: MplFigure, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str
) -> None:
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    if matrix.size <= 144:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if np.isfinite(matrix[i, j]):
                    color = "white" if abs(matrix[i, j]) > 0.6 else "black"
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _matrix(values: Any) -> np.ndarray | None:
    rows = [_floats(r) for r in values or ()]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
        return None
    return np.vstack(rows)


def _categories(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    sec = section(summary, "categories")
    harm = _matrix((sec or {}).get("harm_cos"))
    if sec is None or harm is None or harm.shape[0] != harm.shape[1]:
        return None
    names = list(sec.get("names") or [])
    names = names if len(names) == harm.shape[0] else [f"c{k}" for k in range(harm.shape[0])]
    cross = _matrix(sec.get("harm_vs_refusal_cos"))
    refusal_names = list(sec.get("refusal_names") or [])
    if cross is not None and (cross.shape[0] != harm.shape[0]):
        cross = None
    if cross is not None and len(refusal_names) != cross.shape[1]:
        refusal_names = [f"r{k}" for k in range(cross.shape[1])]
    size = max(4.5, 0.55 * harm.shape[0] + 2.5)
    if cross is not None:
        fig.set_size_inches(2 * size + 1.0, size)
        ax1, ax2 = fig.subplots(1, 2)
        _heatmap(ax1, fig, harm, names, names, "harmfulness categories: cosine")
        _heatmap(ax2, fig, cross, names, refusal_names, "harmfulness (rows) vs refusal (cols) categories")
    else:
        fig.set_size_inches(size + 1.0, size)
        _heatmap(fig.subplots(), fig, harm, names, names, "harmfulness categories: cosine")
    off = off_diagonal(harm.tolist())
    parts = [
        f"mean off-diagonal cosine among {harm.shape[0]} harmfulness categories = {fmt_num(np.mean(off) if off else None)}"
        + (f" (min {min(off):.2f}, max {max(off):.2f})" if off else "")
    ]
    if cross is not None and np.isfinite(cross).any():
        parts.append(f"mean |cos| harmfulness vs refusal categories = {float(np.nanmean(np.abs(cross))):.2f}")
    layer = sec.get("layer")
    source = sec.get("source")
    title = (
        "Per-category directions"
        + (f" at layer {layer}" if layer is not None else "")
        + (f" ({source})" if source else "")
    )
    return title, "; ".join(parts)


# ---------------------------------------------------------------- 9. guard table


def _guard_table(summary: Mapping[str, Any], fig: MplFigure) -> tuple[str, str] | None:
    table = (section(summary, "guard") or {}).get("table") or {}
    columns = [str(c) for c in table.get("columns") or ()]
    rows = [r for r in table.get("rows") or () if isinstance(r, Mapping)]
    numeric = [
        k
        for k in range(len(columns))
        if any(k < len(r.get("values") or []) and not math.isnan(as_float(r["values"][k])) for r in rows)
    ]
    if not rows or not numeric:
        return None
    per_row = min(len(numeric), 6)  # panels per row of the grid; long titles need the width
    n_grid = math.ceil(len(numeric) / per_row)
    fig.set_size_inches(2.6 * per_row + 3.0, n_grid * (0.45 * len(rows) + 1.6) + 0.6)
    fig.subplots_adjust(top=1 - 1.0 / fig.get_figheight(), wspace=0.3, hspace=0.45, left=0.2)
    grid = fig.subplots(n_grid, per_row, sharey=True, squeeze=False)
    for ax in grid.flat[len(numeric) :]:
        ax.set_visible(False)
    axes = grid.flat[: len(numeric)]
    names = [str(r.get("name")) for r in rows]
    y = np.arange(len(rows))
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for ax, k in zip(axes, numeric, strict=True):
        vals = [as_float(r["values"][k]) if k < len(r.get("values") or []) else math.nan for r in rows]
        ax.barh(y, np.nan_to_num(vals), color=colors)
        top = max([abs(v) for v in vals if not math.isnan(v)] + [1e-12])
        for yi, v in zip(y, vals, strict=True):
            ax.text(
                0 if math.isnan(v) else v + 0.02 * top,
                yi,
                "n/a" if math.isnan(v) else f"{v:.3g}",
                va="center",
                fontsize=8,
            )
        ax.set_xlim(min(0.0, *[v for v in vals if not math.isnan(v)]) * 1.2, top * 1.3)
        ax.set_title(textwrap.fill(columns[k], 22), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    for ax in grid[:, 0]:
        ax.set_yticks(y, [textwrap.fill(n, 40) for n in names], fontsize=8)
    grid[0, 0].invert_yaxis()
    first = numeric[0]
    scored = [
        (as_float(r["values"][first]), str(r.get("name"))) for r in rows if first < len(r.get("values") or [])
    ]
    scored = [s for s in scored if not math.isnan(s[0])]
    best = max(scored)
    reading = f"highest {columns[first]}: {best[1]} ({best[0]:.3g}) among {len(rows)} guards"
    return "Guards compared (numeric columns of guard eval)", reading


_BUILDERS: Final[tuple[tuple[str, Callable[[Mapping[str, Any], MplFigure], tuple[str, str] | None]], ...]] = (
    ("beliefs_per_layer", _beliefs_per_layer),
    ("beliefs_scatter", _beliefs_scatter),
    ("directions", _directions),
    ("steering_sweep", _steering_sweep),
    ("inversion", _inversion),
    ("jailbreaks", _jailbreaks),
    ("finetune_attack", _finetune_attack),
    ("categories", _categories),
    ("guard_table", _guard_table),
)


def make_figures(
    summary: Mapping[str, Any], out_dir: Path, fmt: str = "png", *, strict: bool = False
) -> list[Figure]:
    """Draw every figure whose section is present and write it to ``out_dir/<key>.<fmt>``.

    Args:
        summary: The parsed ``summary.json``; missing or empty sections are skipped.
        out_dir: Folder for the images (created).
        fmt: Image format understood by matplotlib (``"png"``, ``"svg"``, ``"pdf"``).
        strict: Raise when a figure builder fails on a section (tests), instead of logging a
            warning and leaving the figure out (a report from a partial summary still renders).

    Returns:
        The figures written, in report order.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    for key, build in _BUILDERS:
        fig = plt.figure()
        try:
            made = build(summary, fig)
            if made is None:
                logger.info("figure %s skipped: its section is missing or empty", key)
                continue
            title, reading = made
            fig.suptitle(title, fontsize=11)
            path = out_dir / f"{key}.{fmt}"
            fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight")
        except (AttributeError, KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            if strict:
                raise
            logger.warning("figure %s skipped: malformed section (%s: %s)", key, type(exc).__name__, exc)
            continue
        finally:
            plt.close(fig)
        figures.append(Figure(key=key, path=path, title=title, reading=_one_line(reading)))
    return figures
