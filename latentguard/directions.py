"""Difference-in-means directions per layer (harmfulness at ``t_inst``, refusal at ``t_post_inst``).

All statistics are computed in float64 with shape and NaN checks; vectors are stored in float32.

Example:
    >>> harm = harmfulness_direction(harmful_acts, harmless_acts)       # doctest: +SKIP
    >>> ref = refusal_direction(refused_acts, accepted_acts)            # doctest: +SKIP
    >>> cosine_per_layer(harm, ref)[15]                                 # doctest: +SKIP
    0.12
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from latentguard.activations import ActivationSet
from latentguard.io import ArtifactError, atomic_save_tensors, atomic_write_text

FORMAT_VERSION = 1


@dataclass
class Directions:
    """One direction per layer, plus where and how it was measured.

    Attributes:
        vectors: ``{hidden_state_index: [d] tensor}``.
        kind: e.g. ``"harmfulness"``, ``"refusal"``, ``"harmfulness:Malware Viruses"``.
        position: The token position the means were taken at.
        fingerprint: Fingerprint of the model.
        n_pos: Size of the positive group (e.g. harmful).
        n_neg: Size of the negative group (e.g. harmless).
        meta: Anything else.
    """

    vectors: dict[int, torch.Tensor]
    kind: str
    position: str
    fingerprint: str
    n_pos: int = 0
    n_neg: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ArtifactError("Directions needs at least one layer")
        dims = {tuple(v.shape) for v in self.vectors.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ArtifactError(f"direction vectors must all be 1-D of one size, got {dims}")
        for layer, v in self.vectors.items():
            if not torch.isfinite(v).all():
                raise ArtifactError(f"direction at layer {layer} has NaN or inf")

    @property
    def layers(self) -> list[int]:
        """The layer indices, sorted."""
        return sorted(self.vectors)

    @property
    def d_model(self) -> int:
        """Vector width."""
        return int(next(iter(self.vectors.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.vectors[layer]

    def stack(self) -> torch.Tensor:
        """``[n_layers, d]`` in :attr:`layers` order."""
        return torch.stack([self.vectors[i] for i in self.layers])

    def norms(self) -> dict[int, float]:
        """L2 norm per layer."""
        return {i: float(self.vectors[i].double().norm()) for i in self.layers}

    def unit(self, layer: int) -> torch.Tensor:
        """The unit vector at ``layer``."""
        v = self.vectors[layer]
        return v / v.norm().clamp_min(1e-12)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Directions:
        """A copy on another device/dtype."""
        return Directions(
            vectors={i: v.to(device=device, dtype=dtype) for i, v in self.vectors.items()},
            kind=self.kind,
            position=self.position,
            fingerprint=self.fingerprint,
            n_pos=self.n_pos,
            n_neg=self.n_neg,
            meta=dict(self.meta),
        )

    def negated(self) -> Directions:
        """The reversed direction."""
        out = self.to()
        out.vectors = {i: -v for i, v in self.vectors.items()}
        out.kind = f"-{self.kind}" if not self.kind.startswith("-") else self.kind[1:]
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` (``path`` may have either suffix or none)."""
        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "position": self.position,
            "fingerprint": self.fingerprint,
            "layers": self.layers,
            "d_model": self.d_model,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "norms": self.norms(),
            "meta": self.meta,
        }
        atomic_save_tensors(
            {"directions": self.stack().to(torch.float32).contiguous()},
            base.with_suffix(".safetensors"),
            metadata={"fingerprint": self.fingerprint, "kind": self.kind},
        )
        atomic_write_text(base.with_suffix(".json"), json.dumps(meta, indent=1))
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect_fingerprint: str | None = None) -> Directions:
        """Read a :meth:`save`-d artifact, checking shapes, NaNs and (optionally) the model."""
        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        try:
            meta = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
            stacked = load_file(str(base.with_suffix(".safetensors")))["directions"]
        except (OSError, json.JSONDecodeError, SafetensorError, KeyError) as exc:
            raise ArtifactError(f"cannot read directions {base}: {exc}") from exc
        layers = [int(i) for i in meta["layers"]]
        if stacked.ndim != 2 or stacked.shape[0] != len(layers) or stacked.shape[1] != meta["d_model"]:
            raise ArtifactError(f"{base}: tensor shape {tuple(stacked.shape)} does not match its JSON")
        if expect_fingerprint is not None and meta["fingerprint"] != expect_fingerprint:
            raise ArtifactError(
                f"{base} belongs to model {meta['fingerprint']}, not the loaded model {expect_fingerprint}"
            )
        return cls(
            vectors={i: stacked[k] for k, i in enumerate(layers)},
            kind=meta["kind"],
            position=meta["position"],
            fingerprint=meta["fingerprint"],
            n_pos=int(meta.get("n_pos", 0)),
            n_neg=int(meta.get("n_neg", 0)),
            meta=dict(meta.get("meta", {})),
        )


def _check_group(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [n, layers, d], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: a mean needs at least one example")
    x64 = x.to(torch.float64)
    if not torch.isfinite(x64).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x64


def mean_difference(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) - mean(neg)`` over axis 0 in float64; inputs ``[n, layers, d]``."""
    p = _check_group(pos, "positive group")
    n = _check_group(neg, "negative group")
    if p.shape[1:] != n.shape[1:]:
        raise ValueError(f"group shapes differ: {tuple(p.shape[1:])} vs {tuple(n.shape[1:])}")
    return p.mean(0) - n.mean(0)


def diff_in_means(
    pos: ActivationSet,
    neg: ActivationSet,
    position: str,
    kind: str,
    meta: Mapping[str, Any] | None = None,
) -> Directions:
    """Difference of group means at ``position`` for every stored layer."""
    if pos.fingerprint != neg.fingerprint:
        raise ArtifactError(f"groups come from different models ({pos.fingerprint} vs {neg.fingerprint})")
    if pos.layers != neg.layers:
        raise ValueError("groups were extracted at different layers")
    diff = mean_difference(pos.at(position), neg.at(position))
    return Directions(
        vectors={layer: diff[k].to(torch.float32) for k, layer in enumerate(pos.layers)},
        kind=kind,
        position=position,
        fingerprint=pos.fingerprint,
        n_pos=len(pos),
        n_neg=len(neg),
        meta=dict(meta or {}),
    )


def harmfulness_direction(
    harmful: ActivationSet, harmless: ActivationSet, position: str = "t_inst"
) -> Directions:
    """mean(harmful) - mean(harmless) at ``t_inst``, per layer."""
    return diff_in_means(harmful, harmless, position, "harmfulness")


def refusal_direction(
    refused: ActivationSet, accepted: ActivationSet, position: str = "t_post_inst"
) -> Directions:
    """mean(refused) - mean(accepted) at ``t_post_inst``, per layer."""
    return diff_in_means(refused, accepted, position, "refusal")


def cosine_per_layer(a: Directions, b: Directions) -> dict[int, float]:
    """Cosine similarity of two directions at each shared layer (float64)."""
    shared = sorted(set(a.vectors) & set(b.vectors))
    if not shared:
        raise ValueError("the two directions share no layer")
    out = {}
    for i in shared:
        u, v = a.vectors[i].double(), b.vectors[i].double()
        denom = (u.norm() * v.norm()).clamp_min(1e-30)
        out[i] = float(u @ v / denom)
    return out


def category_directions(
    acts: ActivationSet,
    categories: list[str],
    baseline: ActivationSet,
    position: str = "t_inst",
    kind: str = "harmfulness",
    min_size: int = 2,
) -> dict[str, Directions]:
    """One direction per category: mean(category rows) - mean(baseline) at ``position``."""
    if len(categories) != len(acts):
        raise ValueError("one category per row is needed")
    out: dict[str, Directions] = {}
    for cat in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == cat]
        if len(idx) < min_size:
            continue
        out[cat] = diff_in_means(acts.subset(idx), baseline, position, f"{kind}:{cat}")
    return out


def cosine_matrix(dirs: Mapping[str, Directions], layer: int) -> tuple[list[str], torch.Tensor]:
    """Pairwise cosine of several directions at one layer: (names, ``[k, k]`` matrix)."""
    names = list(dirs)
    vs = torch.stack([dirs[n].vectors[layer].double() for n in names])
    vs = vs / vs.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return names, vs @ vs.T
