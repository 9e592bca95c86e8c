"""The learned judge's head: two logistic regressions (dense features; TF-IDF n-grams), averaged.

:class:`LearnedHead` holds the parameters and scores precomputed features; :func:`fit_head` fits one
(threshold by grouped cross-validation); :func:`read_head` loads a stored artifact
(``head.safetensors`` + ``head.json``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentguard.judge.features import ngram_indices, tfidf_rows

__all__ = ["LearnedHead", "fit_head", "read_head", "sigmoid", "standardised_logistic"]

logger = logging.getLogger(__name__)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, clipped against overflow."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))


def standardised_logistic(
    x: np.ndarray, y: np.ndarray, C: float, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A logistic regression on standardised features.

    Args:
        x: ``(n, d)`` features.
        y: 0/1 labels.
        C: Inverse L2 strength.
        sample_weight: Optional weight of each row.

    Returns:
        ``(mean, scale, coef, intercept)``: score new rows as ``((x - mean) / scale) @ coef + intercept``.
    """
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    lr = LogisticRegression(C=C, max_iter=5000).fit((x - mean) / scale, y, sample_weight=sample_weight)
    return mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


@dataclass
class LearnedHead:
    """Parameters of the learned head (two logistic regressions whose probabilities are averaged).

    Attributes:
        dense_mean: Mean of the dense features (standardisation).
        dense_scale: Their standard deviation (standardisation).
        dense_coef: Dense logistic-regression weights.
        dense_intercept: Its intercept.
        ngram_idf: Inverse document frequency of every n-gram index.
        ngram_coef: N-gram logistic-regression weights.
        ngram_intercept: Its intercept.
        ngram_weight: Weight of the n-gram probability in the average.
        threshold: Score at or above which a response is a refusal.
        vocab_size: Size of the encoder's vocabulary.
        bigram_bits: Bigram hash width.
    """

    dense_mean: np.ndarray
    dense_scale: np.ndarray
    dense_coef: np.ndarray
    dense_intercept: float
    ngram_idf: np.ndarray
    ngram_coef: np.ndarray
    ngram_intercept: float
    ngram_weight: float
    threshold: float
    vocab_size: int
    bigram_bits: int

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays to store (n-gram arrays in float16 to keep the artifact small)."""
        return {
            "dense_mean": self.dense_mean.astype(np.float32),
            "dense_scale": self.dense_scale.astype(np.float32),
            "dense_coef": self.dense_coef.astype(np.float32),
            "dense_intercept": np.array([self.dense_intercept], np.float32),
            "ngram_idf": self.ngram_idf.astype(np.float16),
            "ngram_coef": self.ngram_coef.astype(np.float16),
            "ngram_intercept": np.array([self.ngram_intercept], np.float32),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], meta: dict[str, Any]) -> LearnedHead:
        """Rebuild from stored arrays and the ``head.json`` recipe."""
        return cls(
            dense_mean=t["dense_mean"].astype(np.float64),
            dense_scale=t["dense_scale"].astype(np.float64),
            dense_coef=t["dense_coef"].astype(np.float64),
            dense_intercept=float(t["dense_intercept"][0]),
            ngram_idf=t["ngram_idf"].astype(np.float64),
            ngram_coef=t["ngram_coef"].astype(np.float64),
            ngram_intercept=float(t["ngram_intercept"][0]),
            ngram_weight=float(meta["ngram_weight"]),
            threshold=float(meta["threshold"]),
            vocab_size=int(meta["vocab_size"]),
            bigram_bits=int(meta["bigram_bits"]),
        )

    def rounded(self) -> LearnedHead:
        """This head with its arrays rounded as they are stored."""
        return LearnedHead.from_tensors(self.tensors(), self.meta())

    def meta(self) -> dict[str, Any]:
        """The scalars stored in ``head.json``."""
        return {
            "ngram_weight": self.ngram_weight,
            "threshold": self.threshold,
            "vocab_size": self.vocab_size,
            "bigram_bits": self.bigram_bits,
        }

    def scores(self, dense: np.ndarray, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """Refusal probabilities for precomputed features.

        Args:
            dense: ``(n, d)`` dense features (:func:`latentguard.judge.features.featurize`).
            token_ids: Word-piece ids of each response.

        Returns:
            ``(n,)`` float64 probabilities.
        """
        z_dense = ((dense - self.dense_mean) / self.dense_scale) @ self.dense_coef + self.dense_intercept
        rows = tfidf_rows(token_ids, self.ngram_idf, self.vocab_size, self.bigram_bits)
        z_ngram = np.array([float(v @ self.ngram_coef[i]) for i, v in rows]) + self.ngram_intercept
        w = self.ngram_weight
        return np.asarray((1.0 - w) * sigmoid(z_dense) + w * sigmoid(z_ngram), dtype=np.float64)


def read_head(head_path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load ``head.safetensors`` and the ``head.json`` next to it.

    Args:
        head_path: The ``.safetensors`` file.

    Returns:
        ``(tensors, meta)``.

    Raises:
        FileNotFoundError: If either file is missing.
    """
    from safetensors.numpy import load_file

    meta_path = head_path.with_suffix(".json")
    if not head_path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"learned judge artifact not found: {head_path} / {meta_path.name}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return load_file(str(head_path)), meta


def fit_head(
    dense: np.ndarray,
    token_ids: Sequence[np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    vocab_size: int,
    bigram_bits: int,
    hp: dict[str, float],
    cv_folds: int = 3,
) -> LearnedHead:
    """Fit both logistic regressions; pick the threshold by grouped CV on these rows.

    Args:
        dense: ``(n, d)`` dense features.
        token_ids: Word-piece ids of each row.
        y: 1 for a refusal, 0 otherwise.
        groups: Group of each row (for the cross-validation folds).
        vocab_size: Size of the encoder's vocabulary.
        bigram_bits: Bigram hash width.
        hp: ``dense_C``, ``ngram_C`` and ``ngram_weight``.
        cv_folds: Folds of the threshold search (``<= 1``: the threshold is 0.5).

    Returns:
        The head fitted on all rows, rounded as it is stored.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    def fit(idx: np.ndarray, threshold: float) -> LearnedHead:
        mean, scale, dense_coef, dense_intercept = standardised_logistic(dense[idx], y[idx], hp["dense_C"])
        n_feat = vocab_size + (1 << bigram_bits)
        df = np.zeros(n_feat)
        for i in idx:
            df[np.unique(ngram_indices(token_ids[i], vocab_size, bigram_bits))] += 1
        idf = np.log((1.0 + len(idx)) / (1.0 + df)) + 1.0
        rows = tfidf_rows([token_ids[i] for i in idx], idf, vocab_size, bigram_bits)
        mat = sparse.csr_matrix(
            (
                np.concatenate([v for _, v in rows]),
                np.concatenate([c for c, _ in rows]),
                np.cumsum([0] + [len(c) for c, _ in rows]),
            ),
            shape=(len(idx), n_feat),
        )
        nlr = LogisticRegression(C=hp["ngram_C"], max_iter=5000).fit(mat, y[idx])
        return LearnedHead(
            dense_mean=mean,
            dense_scale=scale,
            dense_coef=dense_coef,
            dense_intercept=dense_intercept,
            ngram_idf=idf,
            ngram_coef=nlr.coef_[0].astype(np.float64),
            ngram_intercept=float(nlr.intercept_[0]),
            ngram_weight=hp["ngram_weight"],
            threshold=threshold,
            vocab_size=vocab_size,
            bigram_bits=bigram_bits,
        )

    threshold = 0.5
    if cv_folds > 1:
        oof = np.zeros(len(y))
        for tr, te in GroupKFold(min(cv_folds, len(np.unique(groups)))).split(dense, y, groups):
            oof[te] = fit(tr, 0.5).rounded().scores(dense[te], [token_ids[i] for i in te])
        grid = np.round(np.arange(0.2, 0.801, 0.01), 2)
        accs = np.array([((oof >= t) == y).mean() for t in grid])
        best = np.flatnonzero(accs >= accs.max() - 1e-12)
        threshold = float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
        logger.info(
            "threshold %.2f (grouped %d-fold CV accuracy %.4f; at 0.5: %.4f)",
            threshold,
            cv_folds,
            accs.max(),
            ((oof >= 0.5) == y).mean(),
        )
    return fit(np.arange(len(y)), threshold).rounded()
