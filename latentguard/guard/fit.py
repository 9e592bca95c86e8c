"""Fit a Latent Guard: a harmfulness classifier read from the model's own hidden states at ``t_inst``.

Two methods:

* ``centroid`` (the paper's): per layer, ``s_l(h) = cos(h, C_harmful) - cos(h, C_harmless)`` with the
  class centroids of the training split; the score is the mean of ``s_l`` over a contiguous range of
  layers, the range that maximises validation AUROC.
* ``probe``: a logistic regression per layer on the standardised hidden state; the score is the mean
  of the per-layer logits over ``probe_window`` adjacent layers, the window with the best validation
  AUROC (``probe_window=1``: the single best layer). Averaging a few neighbouring layers makes the
  fit steadier: validation AUROCs of single layers differ by float noise, and the layer it picks
  moved from one split seed to the next. Among windows within ``layer_tolerance`` of the best
  validation AUROC the shallowest is kept: the guard's forward stops at the deepest layer it reads,
  so a shallower window is cheaper (on the SmolLM2 organism it also flagged fewer XSTest-style safe
  prompts, and caught slightly fewer harmful ones).

``auto`` fits both and keeps the one with the higher validation AUROC (ties go to ``centroid``). The
decision threshold is set on the validation harmless prompts so that their false-positive rate is at
most ``target_fpr`` (placed half-way to the next validation score, for margin); a prompt is harmful
when ``score > threshold``. All statistics are float64.

The guard itself (:class:`LatentGuard`, its scoring and its files) lives in
:mod:`latentguard.guard.model` and is re-exported here. Training data can be augmented
(:class:`GuardConfig` ``wrap_templates``, ``suffix_prompts``) and weighted, all in one builder
(:mod:`latentguard.guard.training_set`, also used by ``guard eval``): ``fit_guard(...,
lookalikes=...)`` adds harmless prompts that only look unsafe with weight ``lookalike_weight``. Random-suffixed harmless prompts train the guard but, by default, do not set the
threshold (``calibrate_on`` in :func:`fit_from_activations`): they are harder than what users send and
would raise it, costing recall on plain harmful prompts.

The guard is fitted on the training split only; the validation split picks the layers, the method
and the threshold, so the stored validation metrics are selection metrics (slightly optimistic):
measure on held-out prompts for a final number.

Example:
    >>> from latentguard.guard.fit import fit_guard, GuardConfig
    >>> guard = fit_guard(lm, harmful, harmless, GuardConfig(method="auto"))     # doctest: +SKIP
    >>> guard.metrics["val_auroc"], guard.layers                                 # doctest: +SKIP
    (0.99, [9, 10, 11, 12])
    >>> guard.save("guard")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from latentguard.activations import ExtractConfig, extract
from latentguard.guard.evaluate import threshold_at_fpr, tpr_at_fpr
from latentguard.guard.model import FORMAT_VERSION, KIND, METHODS, READABLE_VERSIONS, LatentGuard
from latentguard.guard.select import (
    COST_TOLERANCE,
    PREFERRED_DEPTH,
    SATURATED_AUROC,
    Candidate,
    ProbeOptions,
    fit_centroid,
    fit_probe,
    source_folds,
)
from latentguard.guard.training_set import LOOKALIKE_SOURCE, TrainingSet, build_training_set, builtin_mix
from latentguard.models import LoadedModel

__all__ = [
    "COST_TOLERANCE",
    "FORMAT_VERSION",
    "KIND",
    "METHODS",
    "PREFERRED_DEPTH",
    "SATURATED_AUROC",
    "SMALL_DATA",
    "READABLE_VERSIONS",
    "GuardConfig",
    "LatentGuard",
    "calibrated_threshold",
    "fit_from_activations",
    "fit_warnings",
    "fit_guard",
    "train_val_split",
    "training_set_for",
]

logger = logging.getLogger(__name__)

#: Fewer training prompts per class than this gets a warning (guard.meta["warnings"]).
SMALL_DATA = 500


@dataclass(frozen=True)
class GuardConfig:
    """Options of :func:`fit_guard` (each documented in ``help``).

    Raises:
        ValueError: On construction, if an option is out of range.
    """

    method: str = field(
        default="auto",
        metadata={
            "help": "'centroid' (cosine to class centroids, averaged over a layer range), 'probe' "
            "(logistic regression per layer, logits averaged over probe_window adjacent layers) or "
            "'auto' (fit both, keep the better on validation AUROC; ties go to centroid)"
        },
    )
    layers: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "candidate hidden-state indices (0 = embeddings); None = all blocks 1..n_layers"},
    )
    position: str = field(default="t_inst", metadata={"help": "token position read (t_inst in the paper)"})
    target_fpr: float = field(
        default=0.05,
        metadata={"help": "threshold chosen on validation harmless prompts so their FPR is at most this"},
    )
    val_fraction: float = field(
        default=0.25, metadata={"help": "fraction of each class held out for validation"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the train/validation split"})
    C: float = field(
        default=0.01,
        metadata={"help": "inverse L2 regularisation of the probe (on standardised states)"},
    )
    probe_window: int = field(
        default=5,
        metadata={
            "help": "probe: average the per-layer probe logits over this many adjacent layers (placed "
            "where validation AUROC is best); 1 = the single best layer"
        },
    )
    layer_tolerance: float = field(
        default=0.001,
        metadata={
            "help": "probe: take the shallowest layer window whose validation AUROC is within this of "
            "the best one (the guard's forward stops at the deepest layer it reads); 0 = the best window. "
            "When validation saturates (AUROC >= 0.999) and this is below 0.01, the window nearest relative "
            "depth 0.6 is taken instead"
        },
    )
    wrap_templates: int = field(
        default=160,
        metadata={
            "help": "fit_guard: also train on this many prompts of each class wrapped in jailbreak "
            "templates (the train half of split_templates), so the guard reads the request, not the wrapper"
        },
    )
    suffix_prompts: int = field(
        default=60,
        metadata={
            "help": "fit_guard: also train on this many prompts of each class followed by a suffix of "
            "random tokens (GCG's search space), so the guard reads the request through adversarial suffixes"
        },
    )
    lookalike_weight: float = field(
        default=3.0,
        metadata={
            "help": "fit_guard: training weight of the lookalikes (harmless prompts that look unsafe, "
            "XSTest-style), against 1 for every other prompt; they are few, and they are where guards over-flag"
        },
    )
    calibrate_on_suffixed: bool = field(
        default=False,
        metadata={
            "help": "fit_guard: let the random-suffixed harmless prompts count when setting the threshold "
            "(by default they train the guard but the threshold is set on the other harmless prompts, "
            "which are what users send)"
        },
    )
    obfuscated_prompts: int = field(
        default=150,
        metadata={
            "help": "fit_guard: also train on this many prompts of each class obfuscated in ways "
            "normalisation cannot undo (random leetspeak, mixed case, spaces inside words, misspellings); "
            "they never set the threshold"
        },
    )
    builtin_mix: bool = field(
        default=True,
        metadata={
            "help": "fit_guard: mix in the package's own diverse sets (built-in harmful questions and "
            "commands of every CatQA category, everyday requests phrased like harmful ones, lookalikes), "
            "each a source of its own"
        },
    )
    source_validation: bool = field(
        default=True,
        metadata={
            "help": "rank layer windows and methods by leave-one-source-out validation when the data "
            "has several sources (a held-out data set cannot be separated by the style of another)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward during extraction"})
    progress: bool = field(default=False, metadata={"help": "show an extraction progress bar"})

    @classmethod
    def only_given(cls, **overrides: Any) -> GuardConfig:
        """Options that fit on the given prompts alone: no built-in mix, no wrapped, suffixed or
        obfuscated prompts (for experiments that control the data; ``overrides`` set other fields)."""
        base: dict[str, Any] = {
            "builtin_mix": False,
            "wrap_templates": 0,
            "suffix_prompts": 0,
            "obfuscated_prompts": 0,
        }
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        if self.method not in (*METHODS, "auto"):
            raise ValueError(f"method must be 'centroid', 'probe' or 'auto', got {self.method!r}")
        if not 0.0 <= self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in [0, 1), got {self.target_fpr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (self.C > 0 and math.isfinite(self.C)):
            raise ValueError(f"C must be a positive number, got {self.C}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.probe_window < 1:
            raise ValueError(f"probe_window must be >= 1, got {self.probe_window}")
        if not 0.0 <= self.layer_tolerance < 1.0:
            raise ValueError(f"layer_tolerance must be in [0, 1), got {self.layer_tolerance}")
        if self.wrap_templates < 0 or self.suffix_prompts < 0 or self.obfuscated_prompts < 0:
            raise ValueError(
                "wrap_templates, suffix_prompts and obfuscated_prompts must be >= 0, got "
                f"{self.wrap_templates}, {self.suffix_prompts} and {self.obfuscated_prompts}"
            )
        if not (self.lookalike_weight > 0 and math.isfinite(self.lookalike_weight)):
            raise ValueError(f"lookalike_weight must be a positive number, got {self.lookalike_weight}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must be None (all) or a non-empty tuple")


def train_val_split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The train/validation split of ``n`` rows that :func:`fit_from_activations` uses.

    Args:
        n: Number of rows (at least 2).
        val_fraction: Fraction held out for validation (at least 1 row, at most ``n - 1``).
        gen: The generator drawing the permutation (harmful split first, then harmless).

    Returns:
        ``(train, validation)`` sorted row indices.
    """
    perm = torch.randperm(n, generator=gen)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _check_group(x: torch.Tensor, name: str, n_layers: int) -> torch.Tensor:
    if x.ndim != 3 or x.shape[1] != n_layers:
        raise ValueError(f"{name} activations must be [n, {n_layers} layers, d], got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(
            f"{name}: need at least 2 prompts to split into train and validation, got {x.shape[0]}"
        )
    x64 = x.to("cpu", torch.float64)
    if not torch.isfinite(x64).all():
        raise ValueError(f"{name} activations contain NaN or inf")
    return x64


def calibrated_threshold(scores: np.ndarray, is_pos: np.ndarray, target_fpr: float) -> float:
    """A threshold whose false-positive rate on the negatives of ``scores`` is at most ``target_fpr``.

    Starts from :func:`latentguard.guard.evaluate.threshold_at_fpr` (a negative's score) and moves it
    half-way to the next higher validation score: every validation prompt is classified the same way,
    but a new prompt scoring just above the highest allowed negative is not flagged.
    """
    t = threshold_at_fpr(scores[~is_pos], target_fpr)
    if not math.isfinite(t):
        return t
    above = scores[scores > t]
    return float((t + above.min()) / 2.0) if above.size else t


def _calibration_mask(mask: torch.Tensor | None, n_neg: int, va_neg: torch.Tensor) -> np.ndarray:
    """Which validation harmless rows (in ``va_neg`` order) set the threshold."""
    if mask is None:
        return np.ones(len(va_neg), dtype=bool)
    if mask.dtype != torch.bool or mask.shape != (n_neg,):
        raise ValueError(
            f"calibrate_on must be a bool mask of shape ({n_neg},), got {mask.dtype} {tuple(mask.shape)}"
        )
    out = mask.cpu()[va_neg].numpy()
    if not out.any():
        raise ValueError("calibrate_on leaves no validation harmless prompt to set the threshold on")
    return out


def _harmless_weights(weights: torch.Tensor | None, n_neg: int, tr_neg: torch.Tensor) -> torch.Tensor | None:
    """The training split's harmless weights, mean 1 (``None`` when not given)."""
    if weights is None:
        return None
    if weights.shape != (n_neg,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            f"harmless_weights must be {n_neg} finite non-negative numbers, got shape {tuple(weights.shape)}"
        )
    w = weights.to("cpu", torch.float64)[tr_neg]
    if float(w.sum()) <= 0:
        raise ValueError("harmless_weights are all zero on the training split")
    return w / w.mean()


def fit_from_activations(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    layers: Sequence[int],
    config: GuardConfig | None = None,
    *,
    n_layers: int | None = None,
    fingerprint: str = "",
    template_hash: str = "",
    model: str = "",
    meta: dict[str, Any] | None = None,
    calibrate_on: torch.Tensor | None = None,
    harmless_weights: torch.Tensor | None = None,
    harmful_sources: Sequence[str] | None = None,
    harmless_sources: Sequence[str] | None = None,
) -> LatentGuard:
    """Fit a guard on hidden states already extracted at the guard's position.

    Args:
        harmful: ``[n, len(layers), d]`` states of harmful prompts.
        harmless: ``[m, len(layers), d]`` states of harmless prompts.
        layers: Hidden-state index of each slice of axis 1 (the candidate layers).
        config: Fitting options (``config.layers`` is ignored here; pass the candidates as ``layers``).
        n_layers: Number of decoder blocks (for relative depth); defaults to ``max(layers)``.
        fingerprint: Fingerprint of the model the states come from.
        template_hash: Its chat template hash.
        model: Its spec, for humans.
        meta: Extra metadata stored with the guard.
        calibrate_on: ``[m]`` bool mask of the harmless rows whose validation scores set the threshold
            (``None``: all). Augmented rows (random-token suffixes, jailbreak wrappers) help the fit read
            through them but are harder than the prompts the threshold is meant for; leaving them out
            of calibration keeps the false-positive target about plain prompts. Every row still counts
            for training, layer choice and the reported AUROC.
        harmless_weights: ``[m]`` non-negative weights of the harmless rows in training (the probe's
            loss, the harmless centroid), rescaled to mean 1 over the training split; ``None``: equal.
            Up-weighting the few harmless prompts that look unsafe makes the fit attend to them.
        harmful_sources: The data set each harmful row came from (``""``: an augmented row). With
            several sources of a class and ``config.source_validation``, windows and methods are ranked
            by leave-one-source-out AUROC (:mod:`latentguard.guard.select`); ``None``: random split only.
        harmless_sources: The same for the harmless rows.

    Returns:
        The fitted :class:`LatentGuard` with its validation metrics.

    Raises:
        ValueError: On malformed input (shapes, NaNs, fewer than 2 prompts per class, a mask that does
            not fit or leaves no validation prompt to calibrate on).
    """
    cfg = config or GuardConfig()
    layers = [int(i) for i in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be non-empty and distinct, got {layers}")
    pos = _check_group(harmful, "harmful", len(layers))
    neg = _check_group(harmless, "harmless", len(layers))
    if pos.shape[2] != neg.shape[2]:
        raise ValueError(f"harmful and harmless widths differ: {pos.shape[2]} vs {neg.shape[2]}")
    gen = torch.Generator().manual_seed(cfg.seed)
    tr_pos, va_pos = train_val_split(pos.shape[0], cfg.val_fraction, gen)
    tr_neg, va_neg = train_val_split(neg.shape[0], cfg.val_fraction, gen)
    calib = _calibration_mask(calibrate_on, neg.shape[0], va_neg)
    w_tr = _harmless_weights(harmless_weights, neg.shape[0], tr_neg)
    val = torch.cat([pos[va_pos], neg[va_neg]])
    y_val = np.r_[np.ones(len(va_pos), dtype=int), np.zeros(len(va_neg), dtype=int)]
    depth_base = n_layers if n_layers else max(max(layers), 1)
    depth_of = {layer: layer / depth_base for layer in layers}
    common: dict[str, Any] = {
        "position": cfg.position,
        "fingerprint": fingerprint,
        "template_hash": template_hash,
        "model": model,
    }
    methods = METHODS if cfg.method == "auto" else (cfg.method,)
    folds = (
        source_folds(
            pos, neg, (tr_pos, va_pos, tr_neg, va_neg), harmful_sources, harmless_sources, harmless_weights
        )
        if cfg.source_validation
        else []
    )
    if folds:
        logger.info("guard fit: ranking layers on %d leave-one-source-out folds", len(folds))
    cands: dict[str, Candidate] = {}
    if "centroid" in methods:
        cands["centroid"] = fit_centroid(
            pos[tr_pos], neg[tr_neg], val, y_val, layers, common, w_tr, depth_of, folds
        )
    if "probe" in methods:
        opts = ProbeOptions(
            C=cfg.C, window=cfg.probe_window, layer_tolerance=cfg.layer_tolerance, seed=cfg.seed
        )
        cands["probe"] = fit_probe(
            pos[tr_pos], neg[tr_neg], val, y_val, layers, depth_of, opts, common, w_tr, folds
        )
    if len(cands) == 2:
        # ties (up to float noise) go to the centroid method, the paper's
        better = cands["probe"].selection_auroc > cands["centroid"].selection_auroc + 1e-9
        chosen = "probe" if better else "centroid"
    else:
        chosen = next(iter(cands))
    best = cands[chosen]
    guard = best.guard
    s_val = best.val_scores
    is_pos = y_val.astype(bool)
    counted = np.r_[np.ones(len(va_pos), dtype=bool), calib]
    guard.threshold = calibrated_threshold(s_val[counted], is_pos[counted], cfg.target_fpr)
    guard.metrics = {
        "val_auroc": best.auroc,
        "tpr_at_1fpr": tpr_at_fpr(s_val, y_val, 0.01),
        "tpr_at_5fpr": tpr_at_fpr(s_val, y_val, 0.05),
        "threshold": guard.threshold,
        "target_fpr": cfg.target_fpr,
        "val_fpr": float((s_val[~is_pos & counted] > guard.threshold).mean()),
        "val_tpr": float((s_val[is_pos] > guard.threshold).mean()),
        "n_calibration_harmless": int(calib.sum()),
        "n_train_harmful": len(tr_pos),
        "n_train_harmless": len(tr_neg),
        "n_val_harmful": len(va_pos),
        "n_val_harmless": len(va_neg),
        "selection": "leave-one-source-out" if folds else "random split",
        "selection_auroc": best.selection_auroc,
        "folds": [f.name for f in folds],
        "candidates": {
            name: {"val_auroc": c.auroc, "selection_auroc": c.selection_auroc, "layers": c.guard.layers}
            for name, c in cands.items()
        },
    }
    warnings = fit_warnings(
        best.selection_auroc,
        _user_counts(harmful_sources, pos.shape[0]),
        _user_counts(harmless_sources, neg.shape[0]),
        n_sources=_user_sources(harmful_sources, harmless_sources),
        source_validated=bool(folds),
    )
    for w in warnings:
        logger.warning("guard fit: %s", w)
    guard.meta = {
        "config": asdict(cfg),
        "warnings": warnings,
        "candidate_layers": layers,
        "n_layers": n_layers,
        "layer_val_auroc": {name: c.layer_auroc for name, c in cands.items()},
        "relative_depth": [depth_of[i] for i in guard.layers],
        **(meta or {}),
    }
    logger.info(
        "guard at %s: %s on layers %s, val AUROC %.4f, TPR %.3f at FPR %.3f (threshold %.4g)",
        guard.position,
        guard.method,
        guard.layers,
        best.auroc,
        guard.metrics["val_tpr"],
        guard.metrics["val_fpr"],
        guard.threshold,
    )
    return guard


def _is_users(source: str) -> bool:
    return bool(source) and not source.startswith("builtin:") and source != LOOKALIKE_SOURCE


def _user_counts(sources: Sequence[str] | None, n: int) -> int:
    """Rows of the user's own data (plain rows not mixed in from the built-in sets)."""
    return n if sources is None else sum(_is_users(s) for s in sources)


def _user_sources(harmful: Sequence[str] | None, harmless: Sequence[str] | None) -> dict[str, int] | None:
    if harmful is None or harmless is None:
        return None
    return {
        "harmful": len({s for s in harmful if _is_users(s)}),
        "harmless": len({s for s in harmless if _is_users(s)}),
    }


def fit_warnings(
    val_auroc: float,
    n_harmful: int,
    n_harmless: int,
    n_sources: dict[str, int] | None = None,
    source_validated: bool = False,
) -> list[str]:
    """What a user should know about a fit (saturated validation, small or single-source data) and
    what was done about it.

    Args:
        val_auroc: The selection AUROC of the chosen guard.
        n_harmful: Harmful rows of the user's own data.
        n_harmless: Harmless rows of the user's own data.
        n_sources: Distinct sources of the user's own data per class (``"harmful"``, ``"harmless"``),
            when known.
        source_validated: Whether layers were ranked on leave-one-source-out folds.
    """
    out = []
    if val_auroc >= SATURATED_AUROC:
        what = "leave-one-source-out validation" if source_validated else "validation"
        out.append(
            f"{what} AUROC {val_auroc:.4f} saturates: it cannot tell layers apart (one source per class, or "
            f"one style?), so the layers nearest relative depth {PREFERRED_DEPTH} were chosen; give more "
            "varied data (several sources, questions and commands) for a guard that generalises"
        )
    if min(n_harmful, n_harmless) < SMALL_DATA:
        out.append(
            f"small data: {n_harmful} harmful / {n_harmless} harmless prompts of your own (fewer than "
            f"{SMALL_DATA} per class); "
            + (
                "the built-in sets were mixed in and layers ranked on held-out sources, but expect lower "
                "recall on phrasings neither covers"
                if source_validated
                else "expect lower recall on phrasings the data does not cover"
            )
        )
    if n_sources is not None and min(n_sources.values()) < 2:
        single = [cls for cls, n in n_sources.items() if n < 2]
        did = (
            "layers were ranked leave-one-source-out over the built-in sets mixed in"
            if source_validated
            else "layers were ranked on a random split of one data set, which rewards its style; keep "
            "builtin_mix on or give several sources"
        )
        out.append(f"single-source data ({' and '.join(single)}): {did}")
    return out


def training_set_for(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: GuardConfig,
    lookalikes: Sequence[str] = (),
    harmful_sources: Sequence[str] | None = None,
    harmless_sources: Sequence[str] | None = None,
) -> TrainingSet:
    """The training set :func:`fit_guard` fits on (see :mod:`latentguard.guard.training_set`).

    Args:
        lm: The model (draws the random suffixes; wrapped prompts must fit its context).
        harmful: Harmful instructions.
        harmless: Harmless instructions.
        config: ``builtin_mix``, ``wrap_templates``, ``suffix_prompts``, ``obfuscated_prompts``,
            ``seed``, ``lookalike_weight`` and ``calibrate_on_suffixed`` are used.
        lookalikes: Harmless instructions that only look unsafe.
        harmful_sources: The source of each harmful instruction (default ``"given"``).
        harmless_sources: The source of each harmless instruction.

    Returns:
        The :class:`~latentguard.guard.training_set.TrainingSet`.
    """
    if config.builtin_mix:
        harmful, harmless, lookalikes, harmful_sources, harmless_sources = builtin_mix(
            harmful, harmless, lookalikes, harmful_sources, harmless_sources
        )
    return build_training_set(
        harmful,
        harmless,
        lookalikes=lookalikes,
        n_obfuscated=config.obfuscated_prompts,
        harmful_sources=harmful_sources,
        harmless_sources=harmless_sources,
        n_wrapped=config.wrap_templates,
        n_suffixed=config.suffix_prompts,
        seed=config.seed,
        lookalike_weight=config.lookalike_weight,
        calibrate_on_suffixed=config.calibrate_on_suffixed,
        lm=lm,
    )


def fit_guard(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: GuardConfig | None = None,
    *,
    lookalikes: Sequence[str] = (),
    harmful_sources: Sequence[str] | None = None,
    harmless_sources: Sequence[str] | None = None,
) -> LatentGuard:
    """Extract hidden states at ``config.position`` and fit a :class:`LatentGuard`.

    Args:
        lm: The model whose beliefs are read.
        harmful: Harmful instructions.
        harmless: Harmless instructions.
        config: Options; defaults to :class:`GuardConfig` ``()``.
        lookalikes: More harmless instructions, ones that only look unsafe (e.g. ``builtin:xstest_like``);
            they weigh ``config.lookalike_weight`` in training and count for calibration like the rest.
        harmful_sources: The data set each harmful instruction came from (e.g. the ``--harmful`` spec);
            the built-in sets mixed in are sources of their own. Default: one source, ``"given"``.
        harmless_sources: The same for the harmless instructions.

    Returns:
        The fitted guard, bound to ``lm``'s fingerprint and chat template.

    Raises:
        ValueError: If a set has fewer than 2 prompts or a layer index is out of range.
    """
    cfg = config or GuardConfig()
    n = lm.n_layers
    candidates = sorted(set(cfg.layers)) if cfg.layers is not None else list(range(1, n + 1))
    bad = [i for i in candidates if not 0 <= i <= n]
    if bad:
        raise ValueError(f"layer indices {bad} outside 0..{n}")
    ts = training_set_for(lm, harmful, harmless, cfg, lookalikes, harmful_sources, harmless_sources)
    overlap = set(ts.harmful) & set(ts.harmless)
    if overlap:
        logger.warning("%d prompts are in both the harmful and the harmless set", len(overlap))
    ecfg = ExtractConfig(
        positions=(cfg.position,), layers=tuple(candidates), batch_size=cfg.batch_size, progress=cfg.progress
    )
    groups = {cls: ts.groups(cls) for cls in ("harmful", "harmless")}
    # the same extraction order as before the training set had its own module (plain, wrapped, suffixed)
    acts: dict[str, list[torch.Tensor]] = {"harmful": [], "harmless": []}
    for group in ("plain", "wrapped", "suffixed", "obfuscated"):
        for cls in ("harmful", "harmless"):
            prompts = list(groups[cls][group])
            if prompts:
                acts[cls].append(extract(lm, prompts, ecfg).at(cfg.position))
    meta: dict[str, Any] = {}
    if cfg.wrap_templates:
        meta["wrapped_training_prompts"] = {
            "harmful": len(ts.harmful_wrapped),
            "harmless": len(ts.harmless_wrapped),
        }
    if cfg.suffix_prompts:
        meta["suffixed_training_prompts"] = {
            "harmful": len(ts.harmful_suffixed),
            "harmless": len(ts.harmless_suffixed),
        }
    if cfg.obfuscated_prompts:
        meta["obfuscated_training_prompts"] = {
            "harmful": len(ts.harmful_obfuscated),
            "harmless": len(ts.harmless_obfuscated),
        }
    meta["sources"] = {cls: dict(Counter(s for s in ts.sources(cls) if s)) for cls in ("harmful", "harmless")}
    rows = ts.harmless_rows()
    if rows.weights is not None:
        meta["lookalikes"] = {"n": ts.n_lookalike_rows(), "weight": cfg.lookalike_weight}
    return fit_from_activations(
        torch.cat(acts["harmful"]),
        torch.cat(acts["harmless"]),
        candidates,
        cfg,
        n_layers=n,
        fingerprint=lm.fingerprint,
        template_hash=lm.template_hash,
        model=lm.spec,
        meta=meta,
        calibrate_on=rows.calibrate_on,
        harmless_weights=rows.weights,
        harmful_sources=ts.sources("harmful"),
        harmless_sources=ts.sources("harmless"),
    )
