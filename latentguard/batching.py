"""Batches: padding token-id lists, and length-sorted batches whose results go back in input order.

Every batched loop in latentguard (extraction, generation, scoring, the sweeps, the Ray driver,
the sentence encoder) walks :func:`length_batches`, so rows of similar length share a batch and
pad little, and writes each row's result back at its input index.

Example:
    >>> length_batches([3, 9, 5, 1], 2)
    [[1, 2], [0, 3]]
    >>> map_batches(["bb", "a", "ccc"], [2, 1, 3], 2, lambda xs: [x.upper() for x in xs])
    ['BB', 'A', 'CCC']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batch:
    """A padded batch of token-id lists.

    Attributes:
        input_ids: ``[b, width]`` ids, padded with the pad id.
        attention_mask: ``[b, width]``, 1 on real tokens.
        position_ids: ``[b, width]``, counting real tokens only (0 on left padding).
        offsets: ``[b]`` index of each row's first real token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: torch.Tensor


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left") -> Batch:
    """Pad token-id lists into a batch; position ids count real tokens only."""
    if padding_side not in ("left", "right"):
        raise ValueError("padding_side must be 'left' or 'right'")
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        start = width - len(s) if padding_side == "left" else 0
        ids[i, start : start + len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, start : start + len(s)] = 1
        offsets[i] = start
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids=ids, attention_mask=mask, position_ids=position_ids, offsets=offsets)


def length_batches(lengths: Sequence[int], batch_size: int, *, longest_first: bool = True) -> list[list[int]]:
    """Input indices sorted by length (stable), cut into batches of ``batch_size``.

    Longest first by default, so the first batch shows the peak memory at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=longest_first)
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def map_batches(
    items: Sequence[T],
    lengths: Sequence[int],
    batch_size: int,
    fn: Callable[[list[T]], Sequence[R]],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> list[R]:
    """Apply ``fn`` to length-sorted batches of ``items``; return one result per item, in input order.

    Raises:
        ValueError: ``fn`` returned a different number of results than it was given items.
    """
    if len(items) != len(lengths):
        raise ValueError("one length per item is needed")
    out: list[R | None] = [None] * len(items)
    for idx in length_batches(lengths, batch_size):
        results = fn([items[i] for i in idx])
        if len(results) != len(idx):
            raise ValueError(f"batch function returned {len(results)} results for {len(idx)} items")
        for i, r in zip(idx, results, strict=True):
            out[i] = r
        if on_batch is not None:
            on_batch(len(idx))
    return out  # type: ignore[return-value]
