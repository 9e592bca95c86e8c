"""Add, subtract or ablate a direction in the residual stream, as a handle or a context manager.

Layer indices follow the ``output_hidden_states`` convention used everywhere in latentguard: steering
at index ``i < n_layers`` changes the input of decoder block ``i`` (the same residual stream that
:mod:`latentguard.activations` reads at index ``i``); index ``n_layers`` changes the last block's
output.

Which tokens are steered is decided inside the hook from the token's absolute index, read from the
KV cache, so nothing in the hook changes between calls:

* ``prompt_mask`` (``[batch, prompt_len]`` bools, in left-padded coordinates) selects prompt
  positions; ``None`` means every prompt position.
* ``steps`` is the number of decoding steps steered: 1 (the paper's default) steers only the
  prefill, which decides the first generated token; ``None`` steers every step.

Example:
    >>> with steer(lm, {12: direction}, coefficient=4.0):       # doctest: +SKIP
    ...     replies = generate(lm, prompts)
    >>> handle = add_steering(lm, {12: direction}, coefficient=-4.0)   # doctest: +SKIP
    >>> handle.remove()                                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from latentguard.hooks import residual_hook
from latentguard.models import LoadedModel

MODES = ("add", "ablate")


@dataclass
class SteeringHandle:
    """The hooks of one steering intervention; :meth:`remove` removes exactly those."""

    handles: list[RemovableHandle] = field(default_factory=list)

    def remove(self) -> None:
        """Remove this intervention's hooks (idempotent)."""
        while self.handles:
            self.handles.pop().remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self.handles)

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _past_length(kwargs: Mapping[str, Any], layer_index: int) -> int:
    for key in ("past_key_values", "cache", "past_key_value", "layer_past"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            try:
                return int(cache.get_seq_length(layer_index))
            except (TypeError, IndexError):
                return int(cache.get_seq_length())
    return 0


def token_mask(
    batch: int,
    seq: int,
    past: int,
    prompt_mask: torch.Tensor | None,
    steps: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    """``[batch, seq]`` bools of the tokens to steer in this forward, or None for all of them."""
    if prompt_mask is None and steps is None:
        return None
    if prompt_mask is None:
        # steps == 1 (checked at registration): steer the first forward (the prefill) only
        return torch.full((batch, seq), past == 0, dtype=torch.bool, device=device)
    prompt_len = prompt_mask.shape[1]
    absolute = torch.arange(past, past + seq, device=device)
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    in_prompt = absolute < prompt_len
    if in_prompt.any():
        pm = prompt_mask.to(device)
        if pm.shape[0] != batch:
            raise ValueError(f"prompt_mask has {pm.shape[0]} rows for a batch of {batch}")
        cols = absolute[in_prompt]
        mask[:, in_prompt] = pm[:, cols]
    gen_step = absolute - prompt_len + 1  # 1 = the token fed after the prefill (second decoding step)
    allowed_gen = (~in_prompt) & ((gen_step < steps) if steps is not None else torch.ones_like(in_prompt))
    mask[:, allowed_gen] = True
    return mask


def _make_hook(
    vector: torch.Tensor,
    coefficient: float,
    mode: str,
    layer_index: int,
    prompt_mask: torch.Tensor | None,
    steps: int | None,
) -> Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]:
    def apply(hidden: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
        v = vector.to(device=hidden.device, dtype=hidden.dtype)
        if mode == "add":
            delta = coefficient * v
            change = delta.expand_as(hidden)
        else:
            unit = v / v.norm().clamp_min(1e-12)
            change = -(hidden @ unit).unsqueeze(-1) * unit
        mask = token_mask(
            hidden.shape[0],
            hidden.shape[1],
            _past_length(kwargs, layer_index),
            prompt_mask,
            steps,
            hidden.device,
        )
        if mask is not None:
            change = change * mask.unsqueeze(-1).to(hidden.dtype)
        return hidden + change

    def hook(hidden: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
        return apply(hidden, kwargs)

    return hook


def add_steering(
    lm: LoadedModel,
    vectors: Mapping[int, torch.Tensor],
    coefficient: float = 1.0,
    *,
    mode: str = "add",
    prompt_mask: torch.Tensor | None = None,
    steps: int | None = None,
) -> SteeringHandle:
    """Register steering hooks and return their handle.

    Args:
        lm: The model.
        vectors: ``{hidden_state_index: [d] vector}``; one or several layers.
        coefficient: Scale of the added vector (negative subtracts). Unused for ``ablate``.
        mode: ``"add"`` adds ``coefficient * v``; ``"ablate"`` projects the direction out.
        prompt_mask: ``[batch, prompt_len]`` bools selecting prompt tokens (left-padded coordinates).
        steps: Decoding steps to steer (1 = prefill only); ``None`` = all.

    Returns:
        A :class:`SteeringHandle`; call ``remove()`` or use it as a context manager.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if prompt_mask is not None and prompt_mask.dtype != torch.bool:
        raise TypeError("prompt_mask must be a bool tensor")
    if prompt_mask is None and steps is not None and steps != 1:
        raise ValueError("steps > 1 needs a prompt_mask (its width tells where the prompt ends)")
    n = lm.n_layers
    handle = SteeringHandle()
    try:
        for index, vec in sorted(vectors.items()):
            if not 0 <= index <= n:
                raise ValueError(f"layer index {index} outside 0..{n}")
            if vec.ndim != 1 or vec.shape[0] != lm.d_model:
                raise ValueError(
                    f"steering vector at {index} has shape {tuple(vec.shape)}, expected ({lm.d_model},)"
                )
            frozen = vec.detach().clone()
            # the cache length is read from the hooked block: block `index`, or the last one at n
            hook = _make_hook(frozen, coefficient, mode, min(index, n - 1), prompt_mask, steps)
            handle.handles.append(residual_hook(lm, index, hook, normed=False))
    except BaseException:
        handle.remove()
        raise
    return handle


@contextmanager
def steer(
    lm: LoadedModel,
    vectors: Mapping[int, torch.Tensor],
    coefficient: float = 1.0,
    *,
    mode: str = "add",
    prompt_mask: torch.Tensor | None = None,
    steps: int | None = None,
) -> Iterator[SteeringHandle]:
    """Context-manager form of :func:`add_steering`; the hooks are removed on exit, even on error."""
    handle = add_steering(lm, vectors, coefficient, mode=mode, prompt_mask=prompt_mask, steps=steps)
    try:
        yield handle
    finally:
        handle.remove()
