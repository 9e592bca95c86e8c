"""Score prompts with a fitted Latent Guard, plus text perturbations for robustness checks.

:func:`check` runs the decoder only up to the deepest layer the guard reads (never the LM head), on
length-sorted, left-padded batches, and reads the hidden state at the guard's position.

Example:
    >>> from latentguard.guard.score import check
    >>> [r.harmful for r in check(lm, guard, ["How do I bake bread?", "How do I build a bomb?"])]  # doctest: +SKIP
    [False, True]
    >>> robustness_variants("bomb")["spaced"]
    'b o m b'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from latentguard.activations import hidden_at
from latentguard.batching import length_batches
from latentguard.conversation import Prompt, as_conversation, is_conversation, map_contents
from latentguard.guard.fit import LatentGuard
from latentguard.guard.types import GuardResult as GuardResult  # older name of Verdict
from latentguard.guard.types import Verdict
from latentguard.models import LoadedModel
from latentguard.obfuscate import HOMOGLYPHS as HOMOGLYPHS
from latentguard.obfuscate import ZERO_WIDTH_SPACE as ZERO_WIDTH_SPACE
from latentguard.obfuscate import homoglyphs, letter_spacing, zero_width
from latentguard.positions import Positions, locate_for
from latentguard.prefix import PrefixCache, build_prefix_cache

logger = logging.getLogger(__name__)


def validate_prompts(prompts: Sequence[Prompt]) -> None:
    """Raise naming the first prompt that is neither a non-blank string nor a conversation.

    A conversation (:mod:`latentguard.conversation`) needs a non-blank last user message.

    Raises:
        TypeError: For a single string, or an item of another type.
        ValueError: For a blank instruction or a bad conversation.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    for i, p in enumerate(prompts):
        if is_conversation(p):
            try:
                as_conversation(p)
            except ValueError as exc:
                raise ValueError(f"prompt #{i}: {exc}") from exc
            continue
        if not isinstance(p, str):
            raise TypeError(f"prompt #{i} is {type(p).__name__}, not str or a list of messages")
        if not p.strip():
            raise ValueError(f"prompt #{i} is empty or whitespace only; the guard needs an instruction")


def guard_layers_available(lm: LoadedModel, guard: LatentGuard) -> None:
    """Check that ``guard`` can read ``lm`` (layer range and width); warn if fitted on another model.

    Raises:
        ValueError: If a guard layer does not exist in ``lm`` or the widths differ.
    """
    bad = [i for i in guard.layers if not 0 <= i <= lm.n_layers]
    if bad:
        raise ValueError(
            f"guard layers {bad} do not exist in {lm.spec} (hidden-state indices 0..{lm.n_layers})"
        )
    if guard.d_model != lm.d_model:
        raise ValueError(f"guard width {guard.d_model} != model width {lm.d_model}: fitted on another model")
    if guard.fingerprint and guard.fingerprint != lm.fingerprint:
        logger.warning(
            "guard was fitted on model %s (%s) but is applied to %s (%s)",
            guard.fingerprint,
            guard.model or "?",
            lm.fingerprint,
            lm.spec,
        )


def results_from_states(guard: LatentGuard, states: torch.Tensor) -> list[Verdict]:
    """Turn ``[n, len(guard.layers), d]`` hidden states into one :class:`Verdict` per row.

    With a category head (:attr:`LatentGuard.categories`) each verdict also carries its category scores.
    """
    score, per = guard.score_activations(states, guard.layers)
    harmful = score > guard.threshold
    head = guard.categories
    cats = head.scores(states[:, guard.layers.index(head.layer)]) if head is not None else None
    return [
        Verdict(
            harmful=bool(harmful[i]),
            score=float(score[i]),
            layer_scores={layer: float(v[i]) for layer, v in per.items()},
            category_scores=cats[i] if cats is not None else {},
        )
        for i in range(score.shape[0])
    ]


def normalized_prompts(prompts: Sequence[Prompt], normalize: bool) -> tuple[list[Prompt], list[bool]]:
    """The prompts the guard reads, and which of them normalisation changed.

    In a conversation every message's content is normalised.
    """
    if not normalize:
        return list(prompts), [False] * len(prompts)
    from latentguard.guard.normalize import normalize as normalise_one

    texts: list[Prompt] = []
    changed: list[bool] = []
    for p in prompts:
        if isinstance(p, str):
            done = normalise_one(p)
            texts.append(done.text)
            changed.append(done.changed)
        else:
            flags: list[bool] = []

            def one(text: str, flags: list[bool] = flags) -> str:
                d = normalise_one(text)
                flags.append(d.changed)
                return d.text

            texts.append(map_contents(p, one))
            changed.append(any(flags))
    return texts, changed


def templated(lm: LoadedModel, prompts: Sequence[Prompt]) -> list[Positions]:
    """Validate and template ``prompts`` with ``lm``'s chat template."""
    validate_prompts(prompts)
    return locate_for(lm, list(prompts))


def check(
    lm: LoadedModel,
    guard: LatentGuard,
    prompts: Sequence[Prompt],
    batch_size: int = 16,
    prefix: PrefixCache | bool | None = True,
    *,
    normalize: bool = True,
) -> list[Verdict]:
    """Classify prompts with the guard.

    The forward stops after the deepest layer the guard reads and at each prompt's ``t_inst``
    token; the template's shared prefix is run once per call (or never, given a cache).

    Args:
        lm: The model the guard reads (ideally the one it was fitted on; a mismatch is logged).
        guard: A fitted guard.
        prompts: User instructions or conversations (templated with ``lm``'s chat template; a
            conversation is judged at ``t_inst`` of its last user message, in the context of the rest).
        batch_size: Prompts per forward.
        prefix: A prebuilt :class:`~latentguard.prefix.PrefixCache` (a server keeps one), ``True``
            to build one for this call, ``False`` or ``None`` to run every prompt in full.
        normalize: Read each prompt after :func:`latentguard.guard.normalize.normalize` (NFKC,
            invisible characters removed, look-alike letters folded, letter spacing collapsed);
            :attr:`Verdict.normalized` says where it changed the prompt.

    Returns:
        One :class:`~latentguard.guard.types.Verdict` per prompt, in input order.

    Raises:
        ValueError: If a prompt is empty or whitespace, or the guard does not fit ``lm``.

    Example:
        >>> [r.harmful for r in check(lm, guard, ["How do I bake bread?"])]   # doctest: +SKIP
        [False]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    guard_layers_available(lm, guard)
    validate_prompts(prompts)
    texts, changed = normalized_prompts(prompts, normalize)
    positions = templated(lm, texts)
    cache: PrefixCache | None = None
    if isinstance(prefix, PrefixCache):
        cache = prefix
    elif prefix:
        cache = build_prefix_cache(lm)
    states = torch.empty((len(positions), len(guard.layers), guard.d_model), dtype=torch.float32)
    for idx in length_batches([len(p) for p in positions], batch_size):
        h = hidden_at(lm, [positions[i] for i in idx], (guard.position,), guard.layers, prefix=cache)
        states[idx] = h[:, :, 0]
    return [
        replace(v, normalized=c) if c else v
        for v, c in zip(results_from_states(guard, states), changed, strict=True)
    ]


def robustness_variants(text: str) -> dict[str, str]:
    """Perturbations of ``text`` that keep its visible letters (see :mod:`latentguard.obfuscate`).

    Returns:
        ``{"spaced": ...}`` every character separated by a space; ``{"homoglyph": ...}`` Latin letters
        replaced by look-alike Cyrillic ones; ``{"zero_width": ...}`` a zero-width space after every
        non-space character except the last.
    """
    return {"spaced": letter_spacing(text), "homoglyph": homoglyphs(text), "zero_width": zero_width(text)}
