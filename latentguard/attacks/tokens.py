"""The token space of adversarial suffixes: exact encode/decode and the tokens a suffix may use.

Shared by :mod:`latentguard.attacks.gcg` (the optimiser's search space) and
:func:`latentguard.attacks.prompts.random_suffix_prompts` (random suffixes from the same space).

Example:
    >>> from latentguard.attacks.tokens import allowed_tokens, decode
    >>> allowed, first = allowed_tokens(lm.tokenizer, 49152)      # doctest: +SKIP
    >>> decode(lm.tokenizer, first.nonzero().flatten()[:1].tolist()).startswith(" ")  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from latentguard.models import LoadedModel

__all__ = ["allowed_tokens", "decode", "encode", "input_embeddings"]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens.

    Args:
        tokenizer: A Hugging Face tokenizer.
        text: The text to encode.

    Returns:
        The ids.
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def input_embeddings(lm: LoadedModel) -> Any:
    """The model's input embedding module.

    Args:
        lm: The model.

    Returns:
        The module returned by ``get_input_embeddings()``.
    """
    model: Any = lm.model
    return model.get_input_embeddings()


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode exactly (no special-token skipping, no clean-up of spaces).

    Args:
        tokenizer: A Hugging Face tokenizer.
        ids: Token ids.

    Returns:
        The text.
    """
    return str(tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))


def allowed_tokens(tokenizer: Any, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over the model's vocabulary: tokens allowed anywhere, and those allowed first.

    Allowed tokens decode to non-empty printable ASCII and are not special or added tokens; the first
    suffix token must also start with the separating space.

    Args:
        tokenizer: A Hugging Face tokenizer.
        vocab_size: Rows of the model's embedding matrix (may exceed ``len(tokenizer)``).

    Returns:
        ``(allowed, first)``: boolean masks of length ``vocab_size``.
    """
    n = min(vocab_size, len(tokenizer))
    seqs = [[i] for i in range(n)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "decode_batch"):
        texts = list(backend.decode_batch(seqs, skip_special_tokens=False))
    else:
        texts = list(tokenizer.batch_decode(seqs, clean_up_tokenization_spaces=False))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", {}) or {}))
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    first = torch.zeros(vocab_size, dtype=torch.bool)
    for i, text in enumerate(texts):
        if i in special or not text.strip() or not (text.isascii() and text.isprintable()):
            continue
        allowed[i] = True
        first[i] = text[0] == " " and text[1] != " "
    return allowed, first
