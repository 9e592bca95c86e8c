"""Fitting the guards the evaluation compares, on the training set of :mod:`latentguard.guard.training_set`.

The activation guards (the Latent Guard at ``t_inst``, the refusal-direction guard at ``t_post_inst``
and the latter on refused-vs-accepted labels) train on the set :func:`eval_training_set` builds with
:func:`latentguard.guard.training_set.build_training_set`, the builder
:func:`latentguard.guard.fit.fit_guard` uses, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import torch

from latentguard.activations import ActivationSet, ExtractConfig, extract
from latentguard.directions import Directions
from latentguard.experiments.guard_eval.config import EvalConfig
from latentguard.experiments.guard_eval.rows import LATENT_GUARD, REFUSAL_DIRECTION_GUARD, ROW_NAMES
from latentguard.guard.fit import GuardConfig, fit_from_activations
from latentguard.guard.model import LatentGuard
from latentguard.guard.training_set import (
    CLASSES,
    GROUPS,
    HarmlessRows,
    TrainingSet,
    build_training_set,
    builtin_mix,
)
from latentguard.models import LoadedModel

#: Token position of each activation guard fitted with the same method (row key -> position).
ACTIVATION_GUARD_POSITIONS: Final[Mapping[str, str]] = MappingProxyType(
    {LATENT_GUARD: "t_inst", REFUSAL_DIRECTION_GUARD: "t_post_inst"}
)
#: Display name of each of those guards (row key -> name).
ACTIVATION_GUARDS: Final[Mapping[str, str]] = MappingProxyType(
    {key: ROW_NAMES[key] for key in ACTIVATION_GUARD_POSITIONS}
)


def eval_training_set(data: Mapping[str, Any], cfg: EvalConfig, lm: LoadedModel | None = None) -> TrainingSet:
    """The activation guards' training set: :func:`~latentguard.guard.training_set.build_training_set`
    on the plain training prompts of :func:`.data.guard_data`.

    With shared data (and ``cfg.builtin_mix``) the built-in sets are mixed in as
    :func:`~latentguard.guard.fit.fit_guard` does by default
    (:func:`~latentguard.guard.training_set.builtin_mix`); with only the built-in data they are the
    data already.

    Args:
        data: The sets of :func:`.data.guard_data`.
        cfg: ``builtin_mix``, ``n_train_wrapped``, ``n_train_suffixed``, ``n_train_obfuscated`` (scaled
            in quick mode), ``seed``, ``lookalike_weight`` and ``use_shared`` are used.
        lm: The model (draws the random suffixes, drops wrapped prompts longer than its context);
            ``None`` only when ``cfg`` asks for no suffixed prompts.

    Returns:
        The training set.
    """
    harmful, harmless = list(data["train_harmful"]), list(data["train_harmless"])
    lookalikes = list(data.get("train_harmless_lookalike", ()))
    h_src = data.get("train_harmful_sources")
    s_src = data.get("train_harmless_sources")
    if cfg.builtin_mix and data.get("source") != "builtin":
        harmful, harmless, lookalikes, h_src, s_src = builtin_mix(harmful, harmless, lookalikes, h_src, s_src)
    return build_training_set(
        harmful,
        harmless,
        lookalikes=lookalikes,
        n_wrapped=cfg.n_wrapped,
        n_suffixed=cfg.n_suffixed,
        n_obfuscated=cfg.n_obfuscated,
        seed=cfg.seed,
        lookalike_weight=cfg.lookalike_weight,
        lm=lm,
        use_shared=cfg.use_shared,
        harmful_sources=h_src,
        harmless_sources=s_src,
    )


def default_guard(lm: LoadedModel, data: Mapping[str, Any]) -> LatentGuard:
    """What a user gets from ``guard fit`` with no options on the evaluation's plain training sets.

    Args:
        lm: The model.
        data: The sets of :func:`.data.guard_data` (their sources are passed on, for the
            leave-one-source-out layer choice).

    Returns:
        The guard.
    """
    from latentguard.guard.fit import fit_guard

    return fit_guard(
        lm,
        data["train_harmful"],
        data["train_harmless"],
        GuardConfig(),
        lookalikes=data.get("train_harmless_lookalike", ()),
        harmful_sources=data.get("train_harmful_sources"),
        harmless_sources=data.get("train_harmless_sources"),
    )


def training_counts(ts: TrainingSet) -> dict[str, int]:
    """Sizes of the training set's groups under the names ``guard_eval.json`` reports them.

    Args:
        ts: The training set.

    Returns:
        ``{"train_harmful": n, "train_harmless": n, "train_harmful_wrapped": n, ...}``.
    """
    out = {}
    for cls in CLASSES:
        for group, prompts in ts.groups(cls).items():
            out[f"train_{cls}" if group == "plain" else f"train_{cls}_{group}"] = len(prompts)
    return out


def extract_all(lm: LoadedModel, prompts: Sequence[str], bs: int) -> ActivationSet:
    """Hidden states of ``prompts`` at every position and layer (cached).

    Args:
        lm: The model.
        prompts: Instructions.
        bs: Prompts per forward.

    Returns:
        The activation set.
    """
    return extract(lm, list(prompts), ExtractConfig(batch_size=bs, progress=False))


def training_activations(lm: LoadedModel, ts: TrainingSet, bs: int) -> tuple[ActivationSet, ActivationSet]:
    """Harmful and harmless training activations, rows in :meth:`TrainingSet.prompts` order.

    Each group (plain, wrapped, suffixed) is extracted and cached apart, so adding one leaves the
    others' caches valid.

    Args:
        lm: The model.
        ts: The training set.
        bs: Prompts per forward.

    Returns:
        ``(harmful, harmless)`` activation sets.
    """
    out = []
    for cls in CLASSES:
        groups = ts.groups(cls)
        acts = extract_all(lm, groups[GROUPS[0]], bs)
        for group in GROUPS[1:]:
            if groups[group]:
                more = extract_all(lm, groups[group], bs)
                acts = ActivationSet(
                    torch.cat([acts.activations, more.activations]),
                    layers=acts.layers,
                    positions=acts.positions,
                    fingerprint=acts.fingerprint,
                    instructions=acts.instructions + more.instructions,
                )
        out.append(acts)
    return out[0], out[1]


def refusal_direction(harmful: ActivationSet, harmless: ActivationSet, lm: LoadedModel) -> Directions:
    """The refusal direction used for repair: mean(harmful) - mean(harmless) at ``t_post_inst``.

    The organism refuses nearly every harmful training prompt and answers nearly every harmless one,
    so this stands in for mean(refused) - mean(accepted) without generating 1,900 answers.

    Args:
        harmful: Harmful training activations.
        harmless: Harmless training activations.
        lm: The model they come from.

    Returns:
        One direction per decoder block (embeddings left out).
    """
    from latentguard.directions import diff_in_means

    keep = [i for i in harmful.layers if i > 0]
    d = diff_in_means(harmful, harmless, "t_post_inst", "refusal")
    return Directions(
        {i: d.vectors[i] for i in keep},
        kind="refusal",
        position="t_post_inst",
        fingerprint=lm.fingerprint,
        n_pos=d.n_pos,
        n_neg=d.n_neg,
        meta={"source": "training prompts, harmful - harmless at t_post_inst", "layers": "all, each its own"},
    )


def fit_at(
    lm: LoadedModel,
    pos: ActivationSet,
    neg: ActivationSet,
    position: str,
    method: str,
    seed: int,
    *,
    pos_extra: torch.Tensor | None = None,
    keep_neg: torch.Tensor | None = None,
    harmless: HarmlessRows | None = None,
    meta: dict[str, Any] | None = None,
    sources: tuple[Sequence[str], Sequence[str]] | None = None,
) -> LatentGuard:
    """One guard fitted on the decoder blocks' states at ``position`` (embeddings left out).

    Args:
        lm: The model the states come from.
        pos: Harmful training activations.
        neg: Harmless training activations.
        position: Token position read.
        method: ``auto``, ``centroid`` or ``probe``.
        seed: Seed of the train/validation split.
        pos_extra: Bool mask of rows of ``neg`` moved to the positive side (default: none).
        keep_neg: Bool mask of the rows of ``neg`` that stay negative (default: all).
        harmless: Which rows of ``neg`` set the threshold and how much each weighs
            (:meth:`TrainingSet.harmless_rows`); ``None``: all, equally.
        meta: Extra metadata stored with the guard.
        sources: ``(harmful, harmless)`` source of every row (:meth:`TrainingSet.sources`), for the
            leave-one-source-out layer choice; ``None``: the random split alone.

    Returns:
        The fitted guard.
    """
    h_src = list(sources[0]) if sources is not None else None
    s_src = list(sources[1]) if sources is not None else None
    if s_src is not None and h_src is not None:
        if pos_extra is not None:
            h_src += [s for s, f in zip(s_src, pos_extra.tolist(), strict=True) if f]
        if keep_neg is not None:
            s_src = [s for s, k in zip(s_src, keep_neg.tolist(), strict=True) if k]
    layers = [i for i in pos.layers if i > 0]
    sel = [pos.layers.index(i) for i in layers]
    x_pos, x_neg = pos.at(position)[:, sel], neg.at(position)[:, sel]
    if pos_extra is not None:
        x_pos = torch.cat([x_pos, x_neg[pos_extra]])
    if keep_neg is not None:
        x_neg = x_neg[keep_neg]
        harmless = None if harmless is None else harmless.subset(keep_neg)
    return fit_from_activations(
        x_pos,
        x_neg,
        layers,
        GuardConfig(method=method, position=position, seed=seed),
        n_layers=lm.n_layers,
        fingerprint=lm.fingerprint,
        template_hash=lm.template_hash,
        model=lm.spec,
        meta=meta,
        calibrate_on=None if harmless is None else harmless.calibrate_on,
        harmless_weights=None if harmless is None else harmless.weights,
        harmful_sources=h_src,
        harmless_sources=s_src,
    )


def fit_activation_pair(
    lm: LoadedModel,
    tr_h: ActivationSet,
    tr_s: ActivationSet,
    method: str,
    seed: int,
    harmless: HarmlessRows | None = None,
    sources: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, LatentGuard]:
    """The Latent Guard (``t_inst``) and the refusal-direction guard (``t_post_inst``), fitted alike.

    Args:
        lm: The model.
        tr_h: Harmful training activations.
        tr_s: Harmless training activations.
        method: ``auto``, ``centroid`` or ``probe``.
        seed: Seed of the train/validation split.
        harmless: Options of the harmless rows (see :func:`fit_at`).
        sources: Source of every row (see :func:`fit_at`).

    Returns:
        ``{row key: guard}`` for the keys of :data:`ACTIVATION_GUARDS`.
    """
    return {
        key: fit_at(lm, tr_h, tr_s, position, method, seed, harmless=harmless, sources=sources)
        for key, position in ACTIVATION_GUARD_POSITIONS.items()
    }


def fit_behaviour_guard(
    lm: LoadedModel,
    tr_h: ActivationSet,
    tr_s: ActivationSet,
    refused: Mapping[str, bool],
    method: str,
    seed: int,
    harmless: HarmlessRows | None = None,
    sources: tuple[Sequence[str], Sequence[str]] | None = None,
) -> LatentGuard:
    """The same method at ``t_post_inst`` on the refusal direction's own labels: refused vs accepted.

    Harmful training prompts count as refused and harmless ones as accepted, except the harmless
    prompts in ``refused`` (the lookalikes and template-wrapped ones, whose answers were judged): those
    take the model's behaviour.

    Args:
        lm: The model.
        tr_h: Harmful training activations.
        tr_s: Harmless training activations.
        refused: ``{harmless prompt: whether the model refused it}`` for the judged prompts.
        method: ``auto``, ``centroid`` or ``probe``.
        seed: Seed of the train/validation split.
        harmless: Options of the harmless rows (see :func:`fit_at`).
        sources: Source of every row (see :func:`fit_at`).

    Returns:
        The guard; ``meta["refused"]`` counts the harmless rows moved to the refused side.
    """
    flip = torch.tensor([refused.get(p, False) for p in tr_s.instructions], dtype=torch.bool)
    meta = {"labels": "refused vs accepted", "judged_harmless": len(refused), "refused": int(flip.sum())}
    return fit_at(
        lm,
        tr_h,
        tr_s,
        "t_post_inst",
        method,
        seed,
        pos_extra=flip,
        keep_neg=~flip,
        harmless=harmless,
        meta=meta,
        sources=sources,
    )
