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

Training data can be augmented (:class:`GuardConfig` ``wrap_templates``, ``suffix_prompts``) and
weighted: ``fit_guard(..., lookalikes=...)`` adds harmless prompts that only look unsafe with weight
``lookalike_weight``. Random-suffixed harmless prompts train the guard but, by default, do not set the
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

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors_bytes

from latentguard.activations import ExtractConfig, extract
from latentguard.guard.evaluate import auroc, separation, threshold_at_fpr, tpr_at_fpr
from latentguard.io import ArtifactError, atomic_save_tensors, atomic_write_text
from latentguard.models import LoadedModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: Older format versions :meth:`LatentGuard.load` still reads.
READABLE_VERSIONS = (1, 2)
KIND = "latentguard.guard"
METHODS = ("centroid", "probe")
#: Relative depth preferred when probe layers tie on validation AUROC and separation.
PREFERRED_DEPTH = 0.6
_EPS = 1e-12


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
            "the best one (the guard's forward stops at the deepest layer it reads); 0 = the best window"
        },
    )
    wrap_templates: int = field(
        default=0,
        metadata={
            "help": "fit_guard: also train on this many prompts of each class wrapped in jailbreak "
            "templates (the train half of split_templates), so the guard reads the request, not the wrapper"
        },
    )
    suffix_prompts: int = field(
        default=0,
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
    batch_size: int = field(default=16, metadata={"help": "prompts per forward during extraction"})
    progress: bool = field(default=False, metadata={"help": "show an extraction progress bar"})

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
        if self.wrap_templates < 0 or self.suffix_prompts < 0:
            raise ValueError(
                f"wrap_templates and suffix_prompts must be >= 0, got {self.wrap_templates} and {self.suffix_prompts}"
            )
        if not (self.lookalike_weight > 0 and math.isfinite(self.lookalike_weight)):
            raise ValueError(f"lookalike_weight must be a positive number, got {self.lookalike_weight}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must be None (all) or a non-empty tuple")


def _cosine(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``h`` ``[n, d]`` with ``c`` ``[d]``, float64."""
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
                per[i] = _cosine(h, self.centroids_harmful[i]) - _cosine(h, self.centroids_harmless[i])
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
        """A small JSON-friendly description (method, layers, threshold, key metrics)."""
        keys = ("val_auroc", "tpr_at_1fpr", "tpr_at_5fpr", "val_fpr", "val_tpr")
        return {
            "method": self.method,
            "layers": list(self.layers),
            "position": self.position,
            "threshold": self.threshold,
            "fingerprint": self.fingerprint,
            "model": self.model,
            **{k: self.metrics[k] for k in keys if k in self.metrics},
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


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class _Candidate:
    """The best fit of one method on the validation split."""

    guard: LatentGuard
    val_scores: np.ndarray  # [n_val_harmful + n_val_harmless], harmful first
    auroc: float
    layer_auroc: dict[int, float]


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def _rank_key(auc: float, sep: float) -> tuple[float, float]:
    # round AUROC so float noise cannot beat a real difference in separation
    return (round(auc, 9), sep)


def _fit_centroid(
    train_pos: torch.Tensor,
    train_neg: torch.Tensor,
    val: torch.Tensor,
    y_val: np.ndarray,
    layers: list[int],
    common: dict[str, Any],
    neg_weight: torch.Tensor | None = None,
) -> _Candidate:
    c_pos = train_pos.mean(0)  # [L, d]
    if neg_weight is None:
        c_neg = train_neg.mean(0)
    else:
        w = neg_weight.to(torch.float64)
        c_neg = torch.einsum("n,nld->ld", w, train_neg) / w.sum()
    per_layer = torch.stack(
        [_cosine(val[:, k], c_pos[k]) - _cosine(val[:, k], c_neg[k]) for k in range(len(layers))], dim=1
    )  # [n_val, L]
    layer_auc = {layer: auroc(per_layer[:, k], y_val) for k, layer in enumerate(layers)}
    csum = torch.cat([torch.zeros(per_layer.shape[0], 1, dtype=torch.float64), per_layer.cumsum(1)], dim=1)
    best: tuple[tuple[float, float, int], int, int, np.ndarray, float] | None = None
    for width in range(1, len(layers) + 1):
        for start in range(0, len(layers) - width + 1):
            s = ((csum[:, start + width] - csum[:, start]) / width).numpy()
            auc = auroc(s, y_val)
            key = (*_rank_key(auc, separation(s, y_val)), width)
            if best is None or key > best[0]:
                best = (key, start, width, s, auc)
    assert best is not None
    _, start, width, scores, auc = best
    chosen = layers[start : start + width]
    guard = LatentGuard(
        method="centroid",
        layers=chosen,
        threshold=0.0,
        centroids_harmful={layer: c_pos[start + k].clone() for k, layer in enumerate(chosen)},
        centroids_harmless={layer: c_neg[start + k].clone() for k, layer in enumerate(chosen)},
        **common,
    )
    return _Candidate(guard=guard, val_scores=scores, auroc=auc, layer_auroc=layer_auc)


def _fit_probe(
    train_pos: torch.Tensor,
    train_neg: torch.Tensor,
    val: torch.Tensor,
    y_val: np.ndarray,
    layers: list[int],
    depth_of: dict[int, float],
    config: GuardConfig,
    common: dict[str, Any],
    neg_weight: torch.Tensor | None = None,
) -> _Candidate:
    from sklearn.linear_model import LogisticRegression

    x_train = torch.cat([train_pos, train_neg]).numpy()
    y_train = np.r_[np.ones(train_pos.shape[0], dtype=int), np.zeros(train_neg.shape[0], dtype=int)]
    w_neg = np.ones(train_neg.shape[0]) if neg_weight is None else neg_weight.numpy().astype(np.float64)
    sample_weight = np.r_[np.ones(train_pos.shape[0]), w_neg]
    x_val = val.numpy()
    fits: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []  # (weight, bias, mean, std)
    val_logits = np.zeros((x_val.shape[0], len(layers)))
    for k in range(len(layers)):
        mean = x_train[:, k].mean(0)
        std = x_train[:, k].std(0)
        std = np.where(std > 1e-8, std, 1.0)
        clf = LogisticRegression(C=config.C, max_iter=2000, random_state=config.seed)
        clf.fit((x_train[:, k] - mean) / std, y_train, sample_weight=sample_weight)
        weight = np.asarray(clf.coef_[0], dtype=np.float64)
        fits.append((weight, float(clf.intercept_[0]), mean, std))
        val_logits[:, k] = ((x_val[:, k] - mean) / std) @ weight + float(clf.intercept_[0])
    layer_auc = {layer: auroc(val_logits[:, k], y_val) for k, layer in enumerate(layers)}
    width = min(config.probe_window, len(layers))
    windows = []
    for start in range(0, len(layers) - width + 1):
        s = val_logits[:, start : start + width].mean(1)
        auc = auroc(s, y_val)
        centre = float(np.mean([depth_of[layers[start + j]] for j in range(width)]))
        key = (*_rank_key(auc, separation(s, y_val)), -abs(centre - PREFERRED_DEPTH))
        windows.append((key, start, s, auc))
    top = max(w[3] for w in windows)
    # the forward stops at the deepest layer read: among windows within the tolerance of the best
    # validation AUROC, take the shallowest (the best one when the tolerance is 0)
    near = [w for w in windows if w[3] >= top - config.layer_tolerance]
    if config.layer_tolerance > 0:
        _, start, scores, auc = min(near, key=lambda w: w[1])
    else:
        _, start, scores, auc = max(near, key=lambda w: w[0])
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
    return _Candidate(guard=guard, val_scores=scores, auroc=auc, layer_auroc=layer_auc)


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
    tr_pos, va_pos = _split(pos.shape[0], cfg.val_fraction, gen)
    tr_neg, va_neg = _split(neg.shape[0], cfg.val_fraction, gen)
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
    cands: dict[str, _Candidate] = {}
    if "centroid" in methods:
        cands["centroid"] = _fit_centroid(pos[tr_pos], neg[tr_neg], val, y_val, layers, common, w_tr)
    if "probe" in methods:
        cands["probe"] = _fit_probe(pos[tr_pos], neg[tr_neg], val, y_val, layers, depth_of, cfg, common, w_tr)
    if len(cands) == 2:
        # ties (up to float noise) go to the centroid method, the paper's
        chosen = "probe" if cands["probe"].auroc > cands["centroid"].auroc + 1e-9 else "centroid"
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
        "candidates": {name: {"val_auroc": c.auroc, "layers": c.guard.layers} for name, c in cands.items()},
    }
    guard.meta = {
        "config": asdict(cfg),
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


def _fitting(lm: LoadedModel, prompts: list[str]) -> list[str]:
    """The prompts whose templated form fits the model's context (long jailbreak templates may not)."""
    from latentguard.positions import PromptTooLongError, locate, model_max_length

    limit = model_max_length(lm.model, lm.tokenizer)
    keep = []
    for p in prompts:
        try:
            locate(lm.tokenizer, p, max_length=limit)
        except PromptTooLongError:
            continue
        keep.append(p)
    if len(keep) < len(prompts):
        logger.info(
            "%d of %d wrapped prompts are longer than the context; skipped",
            len(prompts) - len(keep),
            len(prompts),
        )
    return keep


def fit_guard(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: GuardConfig | None = None,
    *,
    lookalikes: Sequence[str] = (),
) -> LatentGuard:
    """Extract hidden states at ``config.position`` and fit a :class:`LatentGuard`.

    Args:
        lm: The model whose beliefs are read.
        harmful: Harmful instructions.
        harmless: Harmless instructions.
        config: Options; defaults to :class:`GuardConfig` ``()``.
        lookalikes: More harmless instructions, ones that only look unsafe (e.g. ``builtin:xstest_like``);
            they weigh ``config.lookalike_weight`` in training and count for calibration like the rest.

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
    looks = set(lookalikes)
    plain = set(harmless)
    harmless = list(harmless) + [p for p in dict.fromkeys(lookalikes) if p not in plain]
    if len(harmful) < 2 or len(harmless) < 2:
        raise ValueError(
            f"need at least 2 harmful and 2 harmless prompts, got {len(harmful)} and {len(harmless)}"
        )
    for name, group in (("harmful", harmful), ("harmless", harmless)):
        for i, p in enumerate(group):
            if not isinstance(p, str):
                raise TypeError(
                    f"{name} prompt #{i} is {type(p).__name__}, not str (pass the instruction text)"
                )
    overlap = set(harmful) & set(harmless)
    if overlap:
        logger.warning("%d prompts are in both the harmful and the harmless set", len(overlap))
    ecfg = ExtractConfig(
        positions=(cfg.position,), layers=tuple(candidates), batch_size=cfg.batch_size, progress=cfg.progress
    )
    pos = extract(lm, list(harmful), ecfg).at(cfg.position)
    neg = extract(lm, list(harmless), ecfg).at(cfg.position)
    meta: dict[str, Any] = {}
    calibrate_on: torch.Tensor | None = None
    if cfg.wrap_templates:
        from latentguard.attacks import wrapped_training_prompts

        w_pos = _fitting(lm, wrapped_training_prompts(harmful, cfg.wrap_templates, seed=cfg.seed))
        w_neg = _fitting(lm, wrapped_training_prompts(harmless, cfg.wrap_templates, seed=cfg.seed))
        if w_pos:
            pos = torch.cat([pos, extract(lm, w_pos, ecfg).at(cfg.position)])
        if w_neg:
            neg = torch.cat([neg, extract(lm, w_neg, ecfg).at(cfg.position)])
        meta["wrapped_training_prompts"] = {"harmful": len(w_pos), "harmless": len(w_neg)}
    if cfg.suffix_prompts:
        from latentguard.attacks import random_suffix_prompts

        s_pos = random_suffix_prompts(lm, harmful, cfg.suffix_prompts, seed=cfg.seed)
        s_neg = random_suffix_prompts(lm, harmless, cfg.suffix_prompts, seed=cfg.seed)
        pos = torch.cat([pos, extract(lm, s_pos, ecfg).at(cfg.position)])
        n_before = neg.shape[0]
        neg = torch.cat([neg, extract(lm, s_neg, ecfg).at(cfg.position)])
        meta["suffixed_training_prompts"] = {"harmful": len(s_pos), "harmless": len(s_neg)}
        if not cfg.calibrate_on_suffixed:
            calibrate_on = torch.arange(neg.shape[0]) < n_before
    weights = None
    if looks and cfg.lookalike_weight != 1.0:
        # the plain rows come first; wrapped and suffixed rows weigh 1
        is_look = torch.zeros(neg.shape[0], dtype=torch.bool)
        is_look[: len(harmless)] = torch.tensor([p in looks for p in harmless])
        weights = torch.where(is_look, cfg.lookalike_weight, 1.0).to(torch.float64)
        meta["lookalikes"] = {"n": int(is_look.sum()), "weight": cfg.lookalike_weight}
    return fit_from_activations(
        pos,
        neg,
        candidates,
        cfg,
        n_layers=n,
        fingerprint=lm.fingerprint,
        template_hash=lm.template_hash,
        model=lm.spec,
        meta=meta,
        calibrate_on=calibrate_on,
        harmless_weights=weights,
    )
