"""The Latent Guard artifact: a fitted harmfulness classifier on hidden states, its scoring and its files.

:class:`LatentGuard` holds the fitted vectors (class centroids, or per-layer probe weights with their
standardisation), scores hidden states at the guard's position, and saves/loads itself as a pair
``<path>.safetensors`` (vectors) + ``<path>.json`` (everything else, with the SHA-256 of the tensor
file). Format version 2 is written; versions 1 and 2 are read. Fitting lives in
:mod:`latentguard.guard.fit`.

Example:
    >>> from latentguard.guard.model import LatentGuard
    >>> guard = LatentGuard.load("guard", lm=lm)                                 # doctest: +SKIP
    >>> guard.method, guard.layers, guard.threshold                              # doctest: +SKIP
    ('probe', [9, 10, 11, 12, 13], 1.27)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors_bytes

from latentguard.guard.categories import CategoryHead
from latentguard.io import ArtifactError, atomic_save_tensors, atomic_write_text
from latentguard.models import LoadedModel

FORMAT_VERSION = 2
#: Older format versions :meth:`LatentGuard.load` still reads.
READABLE_VERSIONS = (1, 2)
KIND = "latentguard.guard"
METHODS = ("centroid", "probe")
_EPS = 1e-12


def cosine(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``h`` ``[n, d]`` with ``c`` ``[d]``, in float64.

    Args:
        h: ``[n, d]`` vectors.
        c: ``[d]`` vector.

    Returns:
        ``[n]`` float64 cosines (norms clamped away from 0).
    """
    h64, c64 = h.to(torch.float64), c.to(device=h.device, dtype=torch.float64)
    return (h64 @ c64) / (h64.norm(dim=-1) * c64.norm()).clamp_min(_EPS)


@dataclass
class LatentGuard:
    """A fitted harmfulness classifier on hidden states.

    Attributes:
        method: ``"centroid"`` or ``"probe"``.
        layers: Hidden-state indices the score reads (the centroid range, or ``[probe_layer]``).
        position: Token position read (``t_inst``).
        threshold: A prompt is harmful when ``score > threshold``.
        centroids_harmful: Centroid method: ``{layer: [d]}`` mean harmful state.
        centroids_harmless: Centroid method: ``{layer: [d]}`` mean harmless state.
        probe_weights: Probe method: ``{layer: [d]}`` logistic-regression weights on standardised
            features; the score is the mean over :attr:`layers` of the per-layer logits.
        probe_biases: Probe method: ``{layer: intercept}``.
        feature_means: Probe method: ``{layer: [d]}`` training mean used for standardising.
        feature_stds: Probe method: ``{layer: [d]}`` training standard deviation used for standardising.
        fingerprint: Fingerprint of the model it was fitted on.
        template_hash: Hash of that model's chat template.
        model: The model spec (for humans).
        metrics: Validation AUROC, TPR at 1%/5% FPR, threshold, split sizes...
        meta: Everything else (config, per-layer validation AUROC, ...).
        categories: Optional per-category head (:mod:`latentguard.guard.categories`) at one of
            :attr:`layers`; stored in the same pair of files.
    """

    method: str
    layers: list[int]
    position: str
    threshold: float
    centroids_harmful: dict[int, torch.Tensor] | None = None
    centroids_harmless: dict[int, torch.Tensor] | None = None
    probe_weights: dict[int, torch.Tensor] | None = None
    probe_biases: dict[int, float] | None = None
    feature_means: dict[int, torch.Tensor] | None = None
    feature_stds: dict[int, torch.Tensor] | None = None
    fingerprint: str = ""
    template_hash: str = ""
    model: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    categories: CategoryHead | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ArtifactError(f"unknown guard method {self.method!r}; expected one of {METHODS}")
        self.layers = [int(i) for i in self.layers]
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ArtifactError(f"guard layers must be non-empty and distinct, got {self.layers}")
        if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold):
            raise ArtifactError(f"guard threshold must be a number, got {self.threshold!r}")
        self.threshold = float(self.threshold)
        tensors: list[tuple[str, torch.Tensor]] = []
        if self.method == "centroid":
            if self.centroids_harmful is None or self.centroids_harmless is None:
                raise ArtifactError("a centroid guard needs both centroid sets")
            for name, cents in (("harmful", self.centroids_harmful), ("harmless", self.centroids_harmless)):
                if sorted(cents) != sorted(self.layers):
                    raise ArtifactError(
                        f"{name} centroids cover layers {sorted(cents)}, but the guard reads {self.layers}"
                    )
                tensors += [(f"{name} centroid at layer {i}", v) for i, v in cents.items()]
        else:
            parts = {
                "weights": self.probe_weights,
                "biases": self.probe_biases,
                "feature means": self.feature_means,
                "feature stds": self.feature_stds,
            }
            for name, per in parts.items():
                if per is None:
                    raise ArtifactError(
                        "a probe guard needs per-layer weights, biases, feature means and stds"
                    )
                if sorted(int(i) for i in per) != sorted(self.layers):
                    raise ArtifactError(
                        f"probe {name} cover layers {sorted(per)}, but the guard reads {self.layers}"
                    )
            assert self.probe_biases is not None and self.probe_weights is not None
            assert self.feature_means is not None and self.feature_stds is not None
            biases = {int(i): b for i, b in self.probe_biases.items()}
            if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in biases.values()):
                raise ArtifactError("a probe bias is not a finite number")
            self.probe_biases = {i: float(b) for i, b in biases.items()}
            for i in self.layers:
                tensors += [
                    (f"probe weight at layer {i}", self.probe_weights[i]),
                    (f"feature mean at layer {i}", self.feature_means[i]),
                    (f"feature std at layer {i}", self.feature_stds[i]),
                ]
                if bool((self.feature_stds[i] <= 0).any()):
                    raise ArtifactError(f"feature std at layer {i} must be positive")
        dims = {tuple(t.shape) for _, t in tensors}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ArtifactError(f"guard vectors must all be 1-D of one size, got shapes {sorted(dims)}")
        for name, t in tensors:
            if not torch.isfinite(t).all():
                raise ArtifactError(f"the guard's {name} contains NaN or inf")
        head = self.categories
        if head is not None and (head.layer not in self.layers or head.d_model != next(iter(dims))[0]):
            raise ArtifactError(
                f"the category head reads layer {head.layer} (width {head.d_model}); the guard reads "
                f"{self.layers} (width {next(iter(dims))[0]})"
            )

    @property
    def d_model(self) -> int:
        """Width of the hidden states the guard reads."""
        if self.method == "centroid":
            assert self.centroids_harmful is not None
            return int(next(iter(self.centroids_harmful.values())).shape[0])
        assert self.probe_weights is not None
        return int(next(iter(self.probe_weights.values())).shape[0])

    def score_activations(
        self, acts: torch.Tensor, stored_layers: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Score hidden states.

        Args:
            acts: ``[n, len(stored_layers), d]`` hidden states at the guard's position.
            stored_layers: The hidden-state index of each slice of axis 1; must include :attr:`layers`.

        Returns:
            ``(score, per_layer)``: the ``[n]`` float64 score (higher = more harmful) and ``{layer: [n]}``
            per-layer scores (for a probe, each layer's logit; the score is their mean).

        Raises:
            ValueError: If the shape is wrong or a needed layer is missing.
        """
        stored = [int(i) for i in stored_layers]
        if acts.ndim != 3 or acts.shape[1] != len(stored):
            raise ValueError(f"acts must be [n, {len(stored)} stored layers, d], got {tuple(acts.shape)}")
        if acts.shape[2] != self.d_model:
            raise ValueError(f"acts have width {acts.shape[2]}, the guard expects {self.d_model}")
        where = {layer: k for k, layer in enumerate(stored)}
        missing = [i for i in self.layers if i not in where]
        if missing:
            raise ValueError(f"the guard needs layers {missing}, which are not among {stored}")
        x = acts.to(torch.float64)
        per: dict[int, torch.Tensor] = {}
        if self.method == "centroid":
            assert self.centroids_harmful is not None and self.centroids_harmless is not None
            for i in self.layers:
                h = x[:, where[i]]
                per[i] = cosine(h, self.centroids_harmful[i]) - cosine(h, self.centroids_harmless[i])
            score = torch.stack([per[i] for i in self.layers]).mean(0)
        else:
            assert self.probe_weights is not None and self.probe_biases is not None
            assert self.feature_means is not None and self.feature_stds is not None
            dev = x.device
            for i in self.layers:
                mean = self.feature_means[i].to(dev, torch.float64)
                std = self.feature_stds[i].to(dev, torch.float64)
                z = (x[:, where[i]] - mean) / std
                per[i] = z @ self.probe_weights[i].to(dev, torch.float64) + self.probe_biases[i]
            score = torch.stack([per[i] for i in self.layers]).mean(0)
        return score, per

    def is_harmful(self, score: torch.Tensor | float) -> torch.Tensor | bool:
        """Whether ``score`` (a float or a tensor) is above the threshold."""
        if isinstance(score, torch.Tensor):
            return score > self.threshold
        return bool(score > self.threshold)

    def summary(self) -> dict[str, Any]:
        """A small JSON-friendly description (method, layers, threshold, key metrics, fit warnings)."""
        keys = ("val_auroc", "tpr_at_1fpr", "tpr_at_5fpr", "val_fpr", "val_tpr")
        return {
            "method": self.method,
            "layers": list(self.layers),
            "position": self.position,
            "threshold": self.threshold,
            "fingerprint": self.fingerprint,
            "model": self.model,
            **{k: self.metrics[k] for k in keys if k in self.metrics},
            **({"warnings": list(self.meta["warnings"])} if self.meta.get("warnings") else {}),
            **({"categories": list(self.categories.names)} if self.categories is not None else {}),
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.method == "centroid":
            assert self.centroids_harmful is not None and self.centroids_harmless is not None
            for i in self.layers:
                out[f"centroid_harmful.{i}"] = self.centroids_harmful[i]
                out[f"centroid_harmless.{i}"] = self.centroids_harmless[i]
        else:
            assert self.probe_weights is not None
            assert self.feature_means is not None and self.feature_stds is not None
            for i in self.layers:
                out[f"probe_weight.{i}"] = self.probe_weights[i]
                out[f"feature_mean.{i}"] = self.feature_means[i]
                out[f"feature_std.{i}"] = self.feature_stds[i]
        if self.categories is not None:
            out.update(self.categories.tensors())
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` (vectors) and ``<path>.json`` (everything else).

        ``path`` may end in either suffix or none; an existing directory gets ``guard.*`` inside. The
        JSON records the SHA-256 of the tensor file, so a mismatched or damaged pair is detected on load.

        Returns:
            The path of the JSON file.
        """
        base = _base_path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        tensor_path = base.with_suffix(".safetensors")
        atomic_save_tensors(self._tensors(), tensor_path, metadata={"kind": KIND, "method": self.method})
        digest = hashlib.sha256(tensor_path.read_bytes()).hexdigest()
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "layers": self.layers,
            "position": self.position,
            "threshold": self.threshold,
            "probe_biases": None
            if self.probe_biases is None
            else {str(i): b for i, b in self.probe_biases.items()},
            "d_model": self.d_model,
            "fingerprint": self.fingerprint,
            "template_hash": self.template_hash,
            "model": self.model,
            "metrics": self.metrics,
            "meta": self.meta,
            **({"categories": self.categories.meta()} if self.categories is not None else {}),
            "tensors_sha256": digest,
            "layer_convention": "index 0 = embedding output; index i = output of decoder block i "
            "(last index after the final norm), as output_hidden_states",
        }
        atomic_write_text(base.with_suffix(".json"), json.dumps(meta, indent=1, default=_json_default))
        return base.with_suffix(".json")

    @classmethod
    def load(cls, path: str | os.PathLike[str], lm: LoadedModel | None = None) -> LatentGuard:
        """Read a guard written by :meth:`save`.

        Args:
            path: The base path, or either file of the pair.
            lm: If given, the guard must have been fitted on this exact model and chat template.

        Raises:
            ArtifactError: If the files are missing, corrupt or inconsistent, or do not match ``lm``.
        """
        base = _base_path(path)
        json_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            raw = tensor_path.read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read guard {base}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise ArtifactError(f"{json_path} is not a latentguard guard file")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ArtifactError(
                f"{json_path} has format version {version}, this code reads {list(READABLE_VERSIONS)}"
            )
        if hashlib.sha256(raw).hexdigest() != meta.get("tensors_sha256"):
            raise ArtifactError(
                f"{tensor_path} does not match {json_path} (checksum differs): the file is damaged "
                "or belongs to another guard"
            )
        try:
            tensors = load_tensors_bytes(raw)
            layers = [int(i) for i in meta["layers"]]
            method = meta["method"]
            kwargs: dict[str, Any] = {}
            if method == "centroid":
                kwargs["centroids_harmful"] = {i: tensors[f"centroid_harmful.{i}"] for i in layers}
                kwargs["centroids_harmless"] = {i: tensors[f"centroid_harmless.{i}"] for i in layers}
            elif method == "probe" and version == 1:  # one layer, unsuffixed tensor names
                (i,) = layers
                kwargs.update(
                    probe_weights={i: tensors["probe_weight"]},
                    feature_means={i: tensors["feature_mean"]},
                    feature_stds={i: tensors["feature_std"]},
                    probe_biases={i: float(meta["probe_bias"])},
                )
            elif method == "probe":
                biases = meta["probe_biases"]
                kwargs.update(
                    probe_weights={i: tensors[f"probe_weight.{i}"] for i in layers},
                    feature_means={i: tensors[f"feature_mean.{i}"] for i in layers},
                    feature_stds={i: tensors[f"feature_std.{i}"] for i in layers},
                    probe_biases={i: float(biases[str(i)]) for i in layers},
                )
            guard = cls(
                method=method,
                layers=layers,
                position=str(meta["position"]),
                threshold=float(meta["threshold"]),
                fingerprint=str(meta["fingerprint"]),
                template_hash=str(meta["template_hash"]),
                model=str(meta.get("model", "")),
                metrics=dict(meta.get("metrics", {})),
                meta=dict(meta.get("meta", {})),
                categories=CategoryHead.from_parts(meta["categories"], tensors)
                if meta.get("categories")
                else None,
                **kwargs,
            )
        except ArtifactError as exc:
            raise ArtifactError(f"{base}: {exc}") from exc
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"guard {base} is malformed: {type(exc).__name__}: {exc}") from exc
        if guard.d_model != meta.get("d_model"):
            raise ArtifactError(
                f"{base}: vectors have width {guard.d_model}, its JSON says {meta.get('d_model')}"
            )
        if lm is not None:
            guard.check_model(lm, source=str(base))
        return guard

    def check_model(self, lm: LoadedModel, source: str = "this guard") -> None:
        """Raise :class:`ArtifactError` unless ``lm`` is the model (and chat template) it was fitted on."""
        problems = []
        if self.fingerprint != lm.fingerprint:
            problems.append(
                f"model fingerprint {self.fingerprint} ({self.model or '?'}) != loaded {lm.fingerprint} ({lm.spec})"
            )
        if self.template_hash != lm.template_hash:
            problems.append(f"chat template hash {self.template_hash} != loaded {lm.template_hash}")
        if problems:
            raise ArtifactError(
                f"{source} was fitted on a different model: "
                + "; ".join(problems)
                + ". Refit the guard on this model, or load it without lm= to apply it anyway."
            )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LatentGuard:
        """A copy with its vectors on another device/dtype (scores are still computed in float64)."""

        def mvd(d: dict[int, torch.Tensor] | None) -> dict[int, torch.Tensor] | None:
            return None if d is None else {i: v.to(device=device, dtype=dtype) for i, v in d.items()}

        return LatentGuard(
            method=self.method,
            layers=list(self.layers),
            position=self.position,
            threshold=self.threshold,
            centroids_harmful=mvd(self.centroids_harmful),
            centroids_harmless=mvd(self.centroids_harmless),
            probe_weights=mvd(self.probe_weights),
            probe_biases=None if self.probe_biases is None else dict(self.probe_biases),
            feature_means=mvd(self.feature_means),
            feature_stds=mvd(self.feature_stds),
            fingerprint=self.fingerprint,
            template_hash=self.template_hash,
            model=self.model,
            metrics=dict(self.metrics),
            meta=dict(self.meta),
            categories=self.categories,
        )


def _base_path(path: str | os.PathLike[str]) -> Path:
    base = Path(path)
    if base.is_dir():
        return base / "guard"
    if base.suffix in (".safetensors", ".json"):
        return base.with_suffix("")
    return base


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)
