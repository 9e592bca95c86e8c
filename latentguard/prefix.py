"""Reuse the chat template's shared prefix across prompts (prefix key/value caching).

Every prompt rendered with one chat template starts with the same tokens: the BOS token, a default
system turn if the template has one, and the user turn's header. Their keys and values do not
depend on what follows, so they are computed once; a forward then runs only the tokens after them.
For SmolLM2 that is 24 of the ~40 tokens of a short prompt.

The result is the same as a full forward up to floating-point reassociation. It is not the same if
other hooks change the forward (steering, ablation): the cached prefix was computed without them.
:func:`usable` therefore refuses a cache while any decoder block carries a hook, and a forward
that cannot use the cache simply runs the whole prompt.

Example:
    >>> from latentguard.prefix import build_prefix_cache
    >>> prefix = build_prefix_cache(lm)                                # doctest: +SKIP
    >>> len(prefix)                                                    # doctest: +SKIP
    24
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentguard.models import LoadedModel, decoder_of, unwrap
from latentguard.positions import Positions, locate_for

logger = logging.getLogger(__name__)

# Two instructions that differ from their first character on: the template tokens both renderings
# share are the ones the template writes before any instruction.
_PROBES = ("Alpha", "Zulu?")


@dataclass(frozen=True)
class PrefixCache:
    """Keys and values of the template prefix ``ids`` (batch 1), for one model.

    Attributes:
        ids: The prefix token ids.
        past: A transformers ``Cache`` holding their keys and values (never modified; see
            :meth:`for_batch`).
        fingerprint: The fingerprint of the model it was computed with.
        system: The system prompt it was rendered with (``None``: the template's default).
    """

    ids: tuple[int, ...]
    past: Any
    fingerprint: str
    system: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def covers(self, prompt: Positions, first_read: int) -> bool:
        """Whether ``prompt`` starts with the prefix and the first position read lies after it."""
        n = len(self.ids)
        return first_read >= n and len(prompt.input_ids) > n and tuple(prompt.input_ids[:n]) == self.ids

    def for_batch(self, batch_size: int) -> Any:
        """A fresh copy of the cache repeated ``batch_size`` times (a forward appends to it)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode():
            past = copy.deepcopy(self.past)
            if batch_size > 1:
                past.batch_repeat_interleave(batch_size)
        return past


def template_prefix_ids(lm: LoadedModel, system: str | None = None) -> tuple[int, ...]:
    """Token ids that the chat template writes before every instruction.

    Computed from the model's own template: two instructions are rendered and tokenised as
    :mod:`latentguard.positions` does, and their common leading tokens (before either ``t_inst``)
    are the prefix. Empty if they share none.
    """
    a, b = locate_for(lm, list(_PROBES), system=system)
    n = 0
    for x, y in zip(a.input_ids, b.input_ids, strict=False):
        if x != y:
            break
        n += 1
    return tuple(a.input_ids[: min(n, a.t_inst, b.t_inst)])


def cache_kwarg(module: torch.nn.Module) -> str:
    """The keyword ``module.forward`` takes a key/value cache under (transformers 5.x renamed it)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a transformers forward returned, or ``None``."""
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def decoder_hooked(lm: LoadedModel) -> bool:
    """Whether a decoder block, the decoder or the embeddings carry forward hooks."""
    modules = [*lm.layers, decoder_of(lm.model), unwrap(lm.model).get_input_embeddings()]
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def build_prefix_cache(lm: LoadedModel, system: str | None = None) -> PrefixCache | None:
    """Run the template prefix once and keep its keys and values.

    Args:
        lm: The model.
        system: The system prompt the prompts will be rendered with (``None``: the default).

    Returns:
        The cache, or ``None`` if the template has no shared prefix, hooks are active on the model
        (the cache would hold their effect), or the model's forward does not return a cache.
    """
    ids = template_prefix_ids(lm, system)
    if not ids:
        return None
    if decoder_hooked(lm):
        logger.debug("hooks are active on the model; no prefix cache")
        return None
    from transformers import DynamicCache

    config = getattr(unwrap(lm.model), "config", None)
    try:
        past = DynamicCache(config=config)
    except (TypeError, ValueError, AttributeError):
        past = DynamicCache()
    dev = lm.device
    x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
    decoder = decoder_of(lm.model)
    with torch.inference_mode():
        out = decoder(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            position_ids=torch.arange(len(ids), device=dev)[None],
            use_cache=True,
            **{cache_kwarg(decoder): past},
        )
    filled = returned_cache(out)
    if filled is None or filled.get_seq_length() != len(ids):
        logger.warning("the model did not return a usable key/value cache; prompts run in full")
        return None
    return PrefixCache(ids=ids, past=filled, fingerprint=lm.fingerprint, system=system)


def usable(
    prefix: PrefixCache | None, lm: LoadedModel, prompts: Sequence[Positions], first_reads: Sequence[int]
) -> bool:
    """Whether one forward over ``prompts`` may start after ``prefix``.

    Raises:
        ValueError: If the cache was computed with a different model.
    """
    if prefix is None:
        return False
    if prefix.fingerprint != lm.fingerprint:
        raise ValueError(
            f"this prefix cache belongs to model {prefix.fingerprint}, not {lm.fingerprint}; build one "
            "with build_prefix_cache(lm)"
        )
    if decoder_hooked(lm):
        return False
    return all(prefix.covers(p, r) for p, r in zip(prompts, first_reads, strict=True))
