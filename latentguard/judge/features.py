"""Features of the learned judge: MiniLM chunk states, substring cues and word-piece n-grams.

A response becomes a dense vector (:func:`featurize`: the :class:`~latentguard.encoder.ChunkEncoder`
summary followed by :func:`substring_features`) and a sparse TF-IDF row over its word-piece unigrams
and hashed bigrams (:func:`ngram_indices`, :func:`tfidf_rows`).

Example:
    >>> import numpy as np
    >>> ngram_indices(np.array([7, 8, 9]), 100, 4)[:3].tolist()
    [7, 8, 9]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from latentguard.judge.base import normalise
from latentguard.judge.substring import REFUSAL_PHRASES, SUBSTRING_WINDOW, has_refusal_phrase

if TYPE_CHECKING:
    from latentguard.encoder import ChunkEncoder

__all__ = ["featurize", "n_substring_features", "ngram_indices", "substring_features", "tfidf_rows"]

_PHRASES_LOWER: tuple[str, ...] = tuple(p.lower() for p in REFUSAL_PHRASES)
_NUMBERED_LIST = re.compile(r"\n\s*\d+[.)]")


def substring_features(response: str) -> list[float]:
    """Hand-made features: per-phrase hits in the first and last 300 characters, plus shape cues.

    Args:
        response: One response.

    Returns:
        :func:`n_substring_features` floats.
    """
    text = normalise(response)
    head, tail = text[:SUBSTRING_WINDOW], text[-SUBSTRING_WINDOW:]
    feats = [float(p in head) for p in _PHRASES_LOWER]
    feats += [float(p in tail) for p in _PHRASES_LOWER]
    n = max(1, len(response))
    feats += [
        sum(text.count(p) for p in _PHRASES_LOWER) / (1.0 + len(text) / 500.0),
        math.log1p(len(response)),
        float(bool(_NUMBERED_LIST.search(response))),
        sum(ord(c) > 127 for c in response) / n,
        float(not response.strip() or has_refusal_phrase(text)),
        100.0 * response.count("\n") / n,
    ]
    return feats


def n_substring_features() -> int:
    """Length of :func:`substring_features`'s output."""
    return 2 * len(REFUSAL_PHRASES) + 6


def ngram_indices(ids: np.ndarray, vocab_size: int, bigram_bits: int) -> np.ndarray:
    """Feature indices of a word-piece sequence: unigram ids, then Fibonacci-hashed bigrams.

    Args:
        ids: Word-piece ids.
        vocab_size: Size of the vocabulary (bigram indices start there).
        bigram_bits: Bigrams are hashed into ``2**bigram_bits`` buckets.

    Returns:
        ``int64`` indices: ``len(ids)`` unigrams, then ``len(ids) - 1`` bigrams.
    """
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size < 2:
        return ids.astype(np.int64)
    key = ids[:-1] * np.uint64(vocab_size) + ids[1:]
    with np.errstate(over="ignore"):
        hashed = (key * np.uint64(11400714819323198485)) >> np.uint64(64 - bigram_bits)
    return np.concatenate([ids.astype(np.int64), hashed.astype(np.int64) + vocab_size])


def tfidf_rows(
    token_ids: Sequence[np.ndarray], idf: np.ndarray, vocab_size: int, bigram_bits: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sparse L2-normalised sublinear TF-IDF rows as ``(indices, values)`` pairs.

    Args:
        token_ids: Word-piece ids of each text.
        idf: Inverse document frequency of every n-gram index.
        vocab_size: Size of the vocabulary.
        bigram_bits: Bigram hash width (see :func:`ngram_indices`).

    Returns:
        One ``(sorted unique indices, values)`` pair per text.
    """
    rows = []
    for ids in token_ids:
        idx = ngram_indices(ids, vocab_size, bigram_bits)
        if idx.size == 0:
            rows.append((np.zeros(0, np.int64), np.zeros(0, np.float64)))
            continue
        uniq, counts = np.unique(idx, return_counts=True)
        vals = (1.0 + np.log(counts)) * idf[uniq]
        norm = float(np.linalg.norm(vals))
        rows.append((uniq, vals / norm if norm > 0 else vals))
    return rows


def featurize(encoder: ChunkEncoder, responses: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dense features (encoder chunks + substring features) and word-piece ids of each response.

    Args:
        encoder: The MiniLM chunk encoder.
        responses: The responses.

    Returns:
        ``(dense, ids)``: a ``(n, d)`` float array and the word-piece ids of each response.
    """
    ids = encoder.tokenize(responses)
    emb = encoder.chunk_features(ids)
    sub = np.array([substring_features(r) for r in responses], dtype=np.float32)
    return np.hstack([emb, sub]), ids
