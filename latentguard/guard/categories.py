"""The guard's category head: which of the 11 CatQA risk categories a prompt belongs to, from its states.

One logistic regression per category (one against the rest: the other categories and harmless prompts)
on the standardised hidden state at the guard's position and one of its layers, so the scores come from
the same forward as the guard's verdict. It is fitted at ``guard fit --categories shared:harmful_catqa``
time from the rows' ``category`` field (:func:`fit_categories`) and stored in the guard artifact
(:mod:`latentguard.guard.model`).

The categories and their keys (:data:`CATEGORY_KEYS`, in :data:`latentguard.data.HARM_CATEGORIES` order):

==============================  ==============================
CatQA category                  key
==============================  ==============================
Illegal Activity                ``illegal_activity``
Child Abuse                     ``child_abuse``
Hate/Harass/Violence            ``hate_harass_violence``
Malware Viruses                 ``malware_viruses``
Physical Harm                   ``physical_harm``
Economic Harm                   ``economic_harm``
Fraud/Deception                 ``fraud_deception``
Adult Content                   ``adult_content``
Political Campaigning           ``political_campaigning``
Privacy Violation Activity      ``privacy_violation_activity``
Tailored Financial Advice       ``tailored_financial_advice``
==============================  ==============================

Example:
    >>> category_key("Hate/Harass/Violence")
    'hate_harass_violence'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentguard.activations import ExtractConfig, extract
from latentguard.data import HARM_CATEGORIES
from latentguard.io import ArtifactError
from latentguard.models import LoadedModel

logger = logging.getLogger(__name__)

__all__ = ["CATEGORY_KEYS", "CategoryHead", "category_key", "fit_categories", "fit_category_head"]


def category_key(name: str) -> str:
    """The key of a category name: lower case, runs of non-letters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


#: The keys of the 11 CatQA risk categories, in :data:`latentguard.data.HARM_CATEGORIES` order.
CATEGORY_KEYS: tuple[str, ...] = tuple(category_key(c) for c in HARM_CATEGORIES)
_TENSORS = ("category_weight", "category_bias", "category_mean", "category_std")


@dataclass
class CategoryHead:
    """Per-category logistic regressions on the hidden state at one layer.

    Attributes:
        names: Category keys, in the order of the rows of ``weight``.
        layer: The hidden-state index read (one of the guard's layers).
        weight: ``[k, d]`` weights on standardised features.
        bias: ``[k]`` intercepts.
        mean: ``[d]`` feature mean.
        std: ``[d]`` feature standard deviation.
        metrics: Held-out accuracy per category and overall.
    """

    names: list[str]
    layer: int
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.names)
        if k == 0 or len(set(self.names)) != k:
            raise ArtifactError("a category head needs distinct category names")
        d = self.mean.shape[-1]
        shapes = (
            tuple(self.weight.shape),
            tuple(self.bias.shape),
            tuple(self.mean.shape),
            tuple(self.std.shape),
        )
        if shapes != ((k, d), (k,), (d,), (d,)):
            raise ArtifactError(f"category head tensors have shapes {shapes} for {k} categories")
        for t in (self.weight, self.bias, self.mean, self.std):
            if not torch.isfinite(t).all():
                raise ArtifactError("the category head contains NaN or inf")
        if bool((self.std <= 0).any()):
            raise ArtifactError("category head feature stds must be positive")

    @property
    def d_model(self) -> int:
        """Width of the states read."""
        return int(self.mean.shape[-1])

    def probabilities(self, states: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` probability per category of ``[n, d]`` states at :attr:`layer`."""
        x = (states.to(torch.float64) - self.mean.to(torch.float64)) / self.std.to(torch.float64)
        return torch.sigmoid(x @ self.weight.to(torch.float64).T + self.bias.to(torch.float64))

    def scores(self, states: torch.Tensor) -> list[dict[str, float]]:
        """One ``{key: probability}`` per row of ``[n, d]`` states."""
        p = self.probabilities(states).tolist()
        return [{name: round(float(v), 6) for name, v in zip(self.names, row, strict=True)} for row in p]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors, as the guard artifact stores them."""
        values = (self.weight, self.bias, self.mean, self.std)
        return {
            name: t.detach().to("cpu", torch.float32).contiguous()
            for name, t in zip(_TENSORS, values, strict=True)
        }

    def meta(self) -> dict[str, Any]:
        """Everything but the tensors (JSON-friendly)."""
        return {"names": list(self.names), "layer": self.layer, "metrics": self.metrics}

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CategoryHead:
        """Rebuild a head from :meth:`meta` and :meth:`tensors`.

        Raises:
            ArtifactError: If a part is missing or malformed.
        """
        try:
            weight, bias, mean, std = (tensors[name] for name in _TENSORS)
            return cls(
                names=[str(x) for x in meta["names"]],
                layer=int(meta["layer"]),
                weight=weight,
                bias=bias,
                mean=mean,
                std=std,
                metrics=dict(meta.get("metrics", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"malformed category head: {type(exc).__name__}: {exc}") from exc


def fit_category_head(
    harmful: torch.Tensor,
    categories: Sequence[str],
    harmless: torch.Tensor,
    layer: int,
    *,
    val_fraction: float = 0.25,
    seed: int = 0,
) -> CategoryHead:
    """Fit one-vs-rest logistic regressions on ``[n, d]`` harmful and ``[m, d]`` harmless states.

    A stratified ``val_fraction`` of the harmful rows is held out: the accuracy of the arg-max category
    on them (overall and per category) goes to :attr:`CategoryHead.metrics`; the head is then refitted on
    every row.

    Args:
        harmful: Hidden states of harmful prompts.
        categories: Their category keys (or names; :func:`category_key` is applied).
        harmless: Hidden states of harmless prompts (negatives of every category).
        layer: The hidden-state index they come from.
        val_fraction: Held-out fraction per category.
        seed: Split seed.

    Returns:
        The head.

    Raises:
        ValueError: If there are fewer than 2 categories or a category has fewer than 4 rows.
    """
    from sklearn.linear_model import LogisticRegression

    keys = [category_key(c) for c in categories]
    if len(keys) != harmful.shape[0]:
        raise ValueError("one category per harmful row is needed")
    names = [k for k in CATEGORY_KEYS if k in set(keys)] + sorted(set(keys) - set(CATEGORY_KEYS))
    small = [k for k in names if keys.count(k) < 4]
    if len(names) < 2 or small:
        raise ValueError(f"need at least 2 categories of at least 4 rows each (too few: {small})")
    x_all = torch.cat([harmful, harmless]).to(torch.float64).numpy()
    y_all = np.array(keys + [""] * harmless.shape[0])
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y_all), dtype=bool)
    for k in names:
        idx = np.flatnonzero(y_all == k)
        val[rng.permutation(idx)[: max(1, int(round(len(idx) * val_fraction)))]] = True

    def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / std
        w, b = [], []
        for k in names:
            clf = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")
            clf.fit(z, (y == k).astype(int))
            w.append(clf.coef_[0])
            b.append(clf.intercept_[0])
        return np.stack(w), np.array(b), mean, std

    w, b, mean, std = fit(x_all[~val], y_all[~val])
    z_val = (x_all[val] - mean) / std
    pred = np.array(names)[np.argmax(z_val @ w.T + b, axis=1)]
    truth = y_all[val]
    per = {k: float(np.mean(pred[truth == k] == k)) for k in names}
    metrics = {
        "val_accuracy": float(np.mean(pred == truth)),
        "val_accuracy_per_category": per,
        "n_train": int((~val).sum()),
        "n_val": int(val.sum()),
    }
    w, b, mean, std = fit(x_all, y_all)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    return CategoryHead(
        names=names, layer=layer, weight=t(w), bias=t(b), mean=t(mean), std=t(std), metrics=metrics
    )


def fit_categories(
    lm: LoadedModel,
    harmful: Sequence[tuple[str, str]],
    harmless: Sequence[str],
    *,
    position: str,
    layer: int,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> CategoryHead:
    """Extract states at ``position`` / ``layer`` and fit a :class:`CategoryHead`.

    Args:
        lm: The model.
        harmful: ``(instruction, category)`` pairs (e.g. ``shared:harmful_catqa``).
        harmless: Harmless instructions.
        position: The guard's position.
        layer: One of the guard's layers.
        batch_size: Prompts per forward.
        seed: Split seed.
        progress: Show progress bars.

    Returns:
        The head.
    """
    cfg = ExtractConfig(positions=(position,), layers=(layer,), batch_size=batch_size, progress=progress)
    pos = extract(lm, [p for p, _ in harmful], cfg).at(position)[:, 0]
    neg = extract(lm, list(harmless), cfg).at(position)[:, 0]
    head = fit_category_head(pos, [c for _, c in harmful], neg, layer, seed=seed)
    logger.info("category head at layer %d: held-out accuracy %.3f", layer, head.metrics["val_accuracy"])
    return head
