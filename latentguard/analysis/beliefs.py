"""Clusters and beliefs (paper Fig. 2-3): centroid-cosine belief scores per layer and position.

For each layer ``l``, the centroids of the refused-harmful and accepted-harmless groups define the
belief score ``s_l(h) = cos(h, C_refused_harmful) - cos(h, C_accepted_harmless)``. Averaged over
layers it gives ``Δharmful`` at ``t_inst`` and ``Δrefuse`` at ``t_post_inst``.

Example:
    >>> cents = Centroids.fit(acts_rh, acts_ah, position="t_inst")          # doctest: +SKIP
    >>> s = cents.scores(acts_misbehaving.at("t_inst"))                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentguard.activations import ActivationSet


@dataclass
class Centroids:
    """Per-layer centroids of the harmful-refused and harmless-accepted groups at one position."""

    harmful: torch.Tensor  # [layers, d] float64
    harmless: torch.Tensor  # [layers, d] float64
    layers: list[int]
    position: str

    @classmethod
    def fit(
        cls, refused_harmful: ActivationSet, accepted_harmless: ActivationSet, position: str
    ) -> Centroids:
        """Mean hidden state of each reference group at ``position``, per stored layer."""
        if len(refused_harmful) == 0 or len(accepted_harmless) == 0:
            raise ValueError("both reference groups need at least one prompt")
        if refused_harmful.layers != accepted_harmless.layers:
            raise ValueError("reference groups were extracted at different layers")
        return cls(
            harmful=refused_harmful.at(position).double().mean(0),
            harmless=accepted_harmless.at(position).double().mean(0),
            layers=list(refused_harmful.layers),
            position=position,
        )

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Belief score per prompt and layer: ``[n, layers]`` float64 from ``[n, layers, d]``."""
        h = hidden.double()
        if h.ndim != 3 or h.shape[1:] != self.harmful.shape:
            raise ValueError(
                f"hidden states {tuple(h.shape)} do not match centroids {tuple(self.harmful.shape)}"
            )
        cos_h = torch.nn.functional.cosine_similarity(h, self.harmful.unsqueeze(0), dim=-1)
        cos_s = torch.nn.functional.cosine_similarity(h, self.harmless.unsqueeze(0), dim=-1)
        return cos_h - cos_s

    def delta(self, hidden: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Mean belief score over ``layers`` (default: all but the embedding layer): ``[n]``."""
        s = self.scores(hidden)
        use = [
            k for k, layer in enumerate(self.layers) if (layer in layers if layers is not None else layer > 0)
        ]
        if not use:
            raise ValueError("no layer left to average over")
        return s[:, use].mean(1)


def default_belief_layers(n_layers: int) -> list[int]:
    """Layers averaged into Δ scores: all blocks' outputs (1..n_layers)."""
    return list(range(1, n_layers + 1))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation, None when undefined."""
    if len(x) < 3:
        return None
    a = torch.tensor(list(x), dtype=torch.float64)
    b = torch.tensor(list(y), dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else None


def belief_analysis(
    groups: Mapping[str, ActivationSet],
    belief_layers: Sequence[int],
) -> tuple[dict[str, Any], dict[str, Centroids]]:
    """Belief scores per layer for every group at both positions, Δ points, correlation, fractions.

    Args:
        groups: Activation sets keyed by behaviour group (needs refused_harmful and accepted_harmless).
        belief_layers: Layers averaged into Δharmful / Δrefuse.

    Returns:
        (the ``beliefs`` summary section, the centroids per position).
    """
    rh, ah = groups["refused_harmful"], groups["accepted_harmless"]
    cents = {pos: Centroids.fit(rh, ah, pos) for pos in ("t_inst", "t_post_inst")}
    per_layer: dict[str, dict[str, Any]] = {}
    fractions: dict[str, dict[str, float]] = {}
    for pos, c in cents.items():
        per_layer[pos] = {}
        fractions[pos] = {}
        for name, acts in groups.items():
            if len(acts) == 0:
                continue
            s = c.scores(acts.at(pos))
            per_layer[pos][name] = {
                "mean": s.mean(0).tolist(),
                "std": s.std(0, unbiased=False).tolist(),
                "n": len(acts),
            }
            d = c.delta(acts.at(pos), belief_layers)
            fractions[pos][name] = float((d > 0).double().mean())
    points = []
    xs: list[float] = []
    ys: list[float] = []
    for name, acts in groups.items():
        if len(acts) == 0:
            continue
        dh = cents["t_inst"].delta(acts.at("t_inst"), belief_layers)
        dr = cents["t_post_inst"].delta(acts.at("t_post_inst"), belief_layers)
        for inst, a, b in zip(acts.instructions, dh.tolist(), dr.tolist(), strict=True):
            points.append({"group": name, "instruction": inst, "delta_harmful": a, "delta_refuse": b})
            xs.append(a)
            ys.append(b)
    section = {
        "layers": list(rh.layers),
        "belief_layers": list(belief_layers),
        "per_layer": per_layer,
        "points": points,
        "corr": pearson(xs, ys),
        "fractions": fractions,
    }
    return section, cents


def deltas(
    cents: Mapping[str, Centroids], acts: ActivationSet, belief_layers: Sequence[int]
) -> list[dict[str, float]]:
    """Δharmful and Δrefuse of each prompt of ``acts`` under the given centroids."""
    dh = cents["t_inst"].delta(acts.at("t_inst"), belief_layers).tolist()
    dr = cents["t_post_inst"].delta(acts.at("t_post_inst"), belief_layers).tolist()
    return [{"delta_harmful": a, "delta_refuse": b} for a, b in zip(dh, dr, strict=True)]
