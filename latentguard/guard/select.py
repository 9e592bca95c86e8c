"""Choose a guard's layers: fit each method's candidate windows and rank them on validation.

:func:`fit_centroid` and :func:`fit_probe` fit one method on a training split and pick its layer
window. The ranking AUROC (the *selection* AUROC) is, when the training data has several sources
(:func:`source_folds`), the mean over leave-one-source-out folds: each fold trains on every other
source and validates on the held-out one, so a window that only separates the classes by the style
of one data set (AdvBench's imperatives against Alpaca's requests) ranks low. Without folds it is the
AUROC on the random validation split. When the selection AUROC still saturates
(:data:`SATURATED_AUROC`), the window nearest relative depth :data:`PREFERRED_DEPTH` is taken (the
middle layers hold the harmfulness belief), not the shallowest tie.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentguard.guard.evaluate import auroc, separation
from latentguard.guard.model import LatentGuard, cosine

__all__ = [
    "COST_TOLERANCE",
    "MIN_FOLD_ROWS",
    "PREFERRED_DEPTH",
    "SATURATED_AUROC",
    "Candidate",
    "Fold",
    "ProbeOptions",
    "fit_centroid",
    "fit_probe",
    "source_folds",
]

#: Relative depth preferred when probe layers tie on validation AUROC and separation, and for every
#: method when validation saturates (the middle layers hold the harmfulness belief).
PREFERRED_DEPTH = 0.6
#: A selection AUROC from this up cannot tell layers apart (the split is too easy).
SATURATED_AUROC = 0.999
#: A probe ``layer_tolerance`` from this up asks for the cheapest (shallowest) window even when
#: validation saturates; below it the tolerance only absorbs float noise.
COST_TOLERANCE = 0.01
#: A source with fewer plain rows than this gets no fold of its own.
MIN_FOLD_ROWS = 10


@dataclass(frozen=True)
class Candidate:
    """The best fit of one method.

    Attributes:
        guard: The fitted guard (threshold not yet set).
        val_scores: ``[n_val_harmful + n_val_harmless]`` scores on the random validation split.
        auroc: AUROC of those scores.
        layer_auroc: Validation AUROC of each single layer.
        selection_auroc: The AUROC the window was ranked by (the fold mean, or ``auroc``).
    """

    guard: LatentGuard
    val_scores: np.ndarray
    auroc: float
    layer_auroc: dict[int, float]
    selection_auroc: float


@dataclass(frozen=True)
class Fold:
    """One held-out source: train on the rest, validate on it against the other class's validation rows.

    Attributes:
        name: ``"harmful:SOURCE"`` or ``"harmless:SOURCE"``.
        train_pos: ``[n, L, d]`` harmful training states.
        train_neg: ``[m, L, d]`` harmless training states.
        neg_weight: ``[m]`` harmless training weights (mean 1), or ``None``.
        val: ``[k, L, d]`` validation states, harmful first.
        y_val: ``[k]`` labels (1 harmful).
    """

    name: str
    train_pos: torch.Tensor
    train_neg: torch.Tensor
    neg_weight: torch.Tensor | None
    val: torch.Tensor
    y_val: np.ndarray


@dataclass(frozen=True)
class ProbeOptions:
    """The probe's fitting options (from :class:`~latentguard.guard.fit.GuardConfig`)."""

    C: float
    window: int
    layer_tolerance: float
    seed: int


def source_folds(
    pos: torch.Tensor,
    neg: torch.Tensor,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    harmful_sources: Sequence[str] | None,
    harmless_sources: Sequence[str] | None,
    harmless_weights: torch.Tensor | None = None,
) -> list[Fold]:
    """Leave-one-source-out folds over the plain rows (source ``""`` marks augmented rows, never used).

    A class gets folds only when it has at least two sources; a source needs :data:`MIN_FOLD_ROWS`
    rows. The other class trains on its training split and validates on its validation split.

    Args:
        pos: ``[n, L, d]`` harmful states.
        neg: ``[m, L, d]`` harmless states.
        splits: ``(train_pos, val_pos, train_neg, val_neg)`` row indices of the random split.
        harmful_sources: Source of each harmful row, or ``None`` (no folds).
        harmless_sources: Source of each harmless row, or ``None``.
        harmless_weights: ``[m]`` training weights of the harmless rows, or ``None``.

    Returns:
        The folds (possibly none).
    """
    if harmful_sources is None or harmless_sources is None:
        return []
    if len(harmful_sources) != pos.shape[0] or len(harmless_sources) != neg.shape[0]:
        raise ValueError("harmful_sources / harmless_sources must name every row")
    tr_pos, va_pos, tr_neg, va_neg = (set(t.tolist()) for t in splits)
    src = {"harmful": np.array(list(harmful_sources)), "harmless": np.array(list(harmless_sources))}
    plain = {k: np.flatnonzero(v != "") for k, v in src.items()}

    def weights(rows: np.ndarray) -> torch.Tensor | None:
        if harmless_weights is None:
            return None
        w = harmless_weights.to(torch.float64)[torch.as_tensor(rows)]
        return w / w.mean() if float(w.sum()) > 0 else None

    folds = []
    for cls in ("harmful", "harmless"):
        names = [s for s in dict.fromkeys(src[cls][plain[cls]].tolist())]
        if len(names) < 2:
            continue
        other = "harmless" if cls == "harmful" else "harmful"
        o_train = np.array([i for i in plain[other] if i in (tr_neg if other == "harmless" else tr_pos)])
        o_val = np.array([i for i in plain[other] if i in (va_neg if other == "harmless" else va_pos)])
        for name in names:
            held = plain[cls][src[cls][plain[cls]] == name]
            rest = plain[cls][src[cls][plain[cls]] != name]
            if len(held) < MIN_FOLD_ROWS or len(o_val) < 2 or len(rest) < 2:
                continue
            if cls == "harmful":
                t_pos, t_neg, v = pos[rest], neg[o_train], torch.cat([pos[held], neg[o_val]])
                y = np.r_[np.ones(len(held), int), np.zeros(len(o_val), int)]
                w = weights(o_train)
            else:
                t_pos, t_neg, v = pos[o_train], neg[rest], torch.cat([pos[o_val], neg[held]])
                y = np.r_[np.ones(len(o_val), int), np.zeros(len(held), int)]
                w = weights(rest)
            folds.append(Fold(f"{cls}:{name}", t_pos, t_neg, w, v, y))
    return folds


def _centroids(
    train_pos: torch.Tensor, train_neg: torch.Tensor, neg_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    c_pos = train_pos.mean(0)
    if neg_weight is None:
        return c_pos, train_neg.mean(0)
    w = neg_weight.to(torch.float64)
    return c_pos, torch.einsum("n,nld->ld", w, train_neg) / w.sum()


def _centroid_layer_scores(val: torch.Tensor, c_pos: torch.Tensor, c_neg: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [cosine(val[:, k], c_pos[k]) - cosine(val[:, k], c_neg[k]) for k in range(val.shape[1])], dim=1
    )


def _window_scores(per_layer: np.ndarray, start: int, width: int) -> np.ndarray:
    return per_layer[:, start : start + width].mean(1)


def _fold_mean(
    folds: Sequence[Fold], windows: Sequence[tuple[int, int]], layer_scores: Callable[[Fold], np.ndarray]
) -> dict[tuple[int, int], float] | None:
    """Mean AUROC over the folds of every ``(start, width)`` window, or ``None`` without folds."""
    if not folds:
        return None
    total = dict.fromkeys(windows, 0.0)
    for f in folds:
        per_layer = layer_scores(f)
        csum = np.concatenate([np.zeros((per_layer.shape[0], 1)), per_layer.cumsum(1)], axis=1)
        for start, width in windows:
            total[(start, width)] += auroc((csum[:, start + width] - csum[:, start]) / width, f.y_val)
    return {k: v / len(folds) for k, v in total.items()}


def fit_centroid(
    train_pos: torch.Tensor,
    train_neg: torch.Tensor,
    val: torch.Tensor,
    y_val: np.ndarray,
    layers: list[int],
    common: dict[str, Any],
    neg_weight: torch.Tensor | None,
    depth_of: dict[int, float],
    folds: Sequence[Fold] = (),
) -> Candidate:
    """The centroid method on its best contiguous layer window (see the module docstring)."""
    c_pos, c_neg = _centroids(train_pos, train_neg, neg_weight)
    per_layer = _centroid_layer_scores(val, c_pos, c_neg).numpy()
    layer_auc = {layer: auroc(per_layer[:, k], y_val) for k, layer in enumerate(layers)}
    keys = [(start, width) for width in range(1, len(layers) + 1) for start in range(len(layers) - width + 1)]

    def fold_scores(f: Fold) -> np.ndarray:
        return _centroid_layer_scores(f.val, *_centroids(f.train_pos, f.train_neg, f.neg_weight)).numpy()

    sel = _fold_mean(folds, keys, fold_scores)
    rows = []
    for start, width in keys:
        s = _window_scores(per_layer, start, width)
        auc = auroc(s, y_val)
        sel_auc = sel[(start, width)] if sel is not None else auc
        centre = float(np.mean([depth_of[layers[start + j]] for j in range(width)]))
        rows.append(
            (
                (round(sel_auc, 9), round(auc, 9), separation(s, y_val), width),
                start,
                width,
                s,
                auc,
                sel_auc,
                centre,
            )
        )
    best = max(rows, key=lambda r: r[0])
    if best[5] >= SATURATED_AUROC:
        # saturated: nearest the preferred depth, then the widest window, then separation
        best = max(
            (r for r in rows if r[5] >= SATURATED_AUROC),
            key=lambda r: (-round(abs(r[6] - PREFERRED_DEPTH), 3), -r[2], r[0][2]),
        )
    _, start, width, scores, auc, sel_auc, _ = best
    chosen = layers[start : start + width]
    guard = LatentGuard(
        method="centroid",
        layers=chosen,
        threshold=0.0,
        centroids_harmful={layer: c_pos[start + k].clone() for k, layer in enumerate(chosen)},
        centroids_harmless={layer: c_neg[start + k].clone() for k, layer in enumerate(chosen)},
        **common,
    )
    return Candidate(guard, scores, auc, layer_auc, sel_auc)


def _probe_fits(
    train_pos: torch.Tensor, train_neg: torch.Tensor, neg_weight: torch.Tensor | None, opts: ProbeOptions
) -> list[tuple[np.ndarray, float, np.ndarray, np.ndarray]]:
    """Per layer: ``(weight, bias, feature mean, feature std)`` of a logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([train_pos, train_neg]).numpy()
    y = np.r_[np.ones(train_pos.shape[0], dtype=int), np.zeros(train_neg.shape[0], dtype=int)]
    w_neg = np.ones(train_neg.shape[0]) if neg_weight is None else neg_weight.numpy().astype(np.float64)
    sample_weight = np.r_[np.ones(train_pos.shape[0]), w_neg]
    fits = []
    for k in range(x.shape[1]):
        mean = x[:, k].mean(0)
        std = x[:, k].std(0)
        std = np.where(std > 1e-8, std, 1.0)
        clf = LogisticRegression(C=opts.C, max_iter=2000, random_state=opts.seed)
        clf.fit((x[:, k] - mean) / std, y, sample_weight=sample_weight)
        fits.append((np.asarray(clf.coef_[0], dtype=np.float64), float(clf.intercept_[0]), mean, std))
    return fits


def _probe_logits(
    val: torch.Tensor, fits: Sequence[tuple[np.ndarray, float, np.ndarray, np.ndarray]]
) -> np.ndarray:
    x = val.numpy()
    return np.stack([((x[:, k] - m) / sd) @ w + b for k, (w, b, m, sd) in enumerate(fits)], axis=1)


def fit_probe(
    train_pos: torch.Tensor,
    train_neg: torch.Tensor,
    val: torch.Tensor,
    y_val: np.ndarray,
    layers: list[int],
    depth_of: dict[int, float],
    opts: ProbeOptions,
    common: dict[str, Any],
    neg_weight: torch.Tensor | None,
    folds: Sequence[Fold] = (),
) -> Candidate:
    """The probe method on its best window of ``opts.window`` adjacent layers (see the module docstring)."""
    fits = _probe_fits(train_pos, train_neg, neg_weight, opts)
    val_logits = _probe_logits(val, fits)
    layer_auc = {layer: auroc(val_logits[:, k], y_val) for k, layer in enumerate(layers)}
    width = min(opts.window, len(layers))
    keys = [(start, width) for start in range(len(layers) - width + 1)]
    sel = _fold_mean(
        folds, keys, lambda f: _probe_logits(f.val, _probe_fits(f.train_pos, f.train_neg, f.neg_weight, opts))
    )
    windows = []
    for start, _ in keys:
        s = _window_scores(val_logits, start, width)
        auc = auroc(s, y_val)
        sel_auc = sel[(start, width)] if sel is not None else auc
        centre = float(np.mean([depth_of[layers[start + j]] for j in range(width)]))
        key = (round(sel_auc, 9), round(auc, 9), separation(s, y_val), -abs(centre - PREFERRED_DEPTH))
        windows.append((key, start, s, auc, sel_auc))
    top = max(w[4] for w in windows)
    # the forward stops at the deepest layer read: among windows within the tolerance of the best
    # selection AUROC, take the shallowest (the best one when the tolerance is 0)
    near = [w for w in windows if w[4] >= top - opts.layer_tolerance]
    if top >= SATURATED_AUROC and opts.layer_tolerance < COST_TOLERANCE:
        # saturated: every window separates the split; take the one nearest the preferred depth
        # (a tolerance of COST_TOLERANCE or more asks for the cheapest window: that rule stays)
        best = max((w for w in windows if w[4] >= SATURATED_AUROC), key=lambda w: (w[0][3], w[0][2]))
    elif opts.layer_tolerance > 0:
        best = min(near, key=lambda w: w[1])
    else:
        best = max(near, key=lambda w: w[0])
    _, start, scores, auc, sel_auc = best
    chosen = layers[start : start + width]

    def as_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64).copy())

    guard = LatentGuard(
        method="probe",
        layers=chosen,
        threshold=0.0,
        probe_weights={layer: as_tensor(fits[start + k][0]) for k, layer in enumerate(chosen)},
        probe_biases={layer: fits[start + k][1] for k, layer in enumerate(chosen)},
        feature_means={layer: as_tensor(fits[start + k][2]) for k, layer in enumerate(chosen)},
        feature_stds={layer: as_tensor(fits[start + k][3]) for k, layer in enumerate(chosen)},
        **common,
    )
    return Candidate(guard, scores, auc, layer_auc, sel_auc)
