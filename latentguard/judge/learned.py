"""The learned judge: frozen MiniLM features plus a small trained head.

The features (:mod:`latentguard.judge.features`) are the mean-pooled hidden states of MiniLM layers
3 and 4 over 126-token chunks of the response (first chunk, last chunk, mean, max and min over
chunks), the substring judge's per-phrase cues, and a bag of word-piece unigrams and hashed
bigrams. The head (:mod:`latentguard.judge.head`) averages two logistic regressions. The trained
artifact ships in ``latentguard/data/judge`` (:data:`DEFAULT_HEAD_PATH`); it is made by
:func:`latentguard.judge.training.train_learned_judge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentguard.encoder import ChunkEncoder
from latentguard.judge.base import Judgement, check_batch
from latentguard.judge.features import featurize, n_substring_features
from latentguard.judge.head import LearnedHead, read_head
from latentguard.judge.substring import REFUSAL_PHRASES

__all__ = ["DEFAULT_HEAD_PATH", "LearnedJudge"]

#: Default artifact of the learned judge (``head.json`` sits next to it), in the package data
#: folder ``latentguard/data/judge``.
DEFAULT_HEAD_PATH: Path = Path(__file__).resolve().parents[1] / "data" / "judge" / "head.safetensors"


class LearnedJudge:
    """MiniLM features plus a small trained head (see :mod:`latentguard.judge` for the recipe).

    Args:
        head_path: ``head.safetensors`` of a trained head (``head.json`` must sit next to it);
            default :data:`DEFAULT_HEAD_PATH`.
        device: Torch device for the encoder.
        batch_size: Encoder batch size (chunks of at most 128 tokens).

    Raises:
        ImportError: If the MiniLM package (:data:`latentguard.encoder.MINILM_PACKAGE`, the encoder
            weights) is not installed.
        FileNotFoundError: If the artifact is missing.
        ValueError: If ``batch_size`` is not positive or the artifact does not match the encoder or
            :data:`~latentguard.judge.substring.REFUSAL_PHRASES`.

    Empty or whitespace-only responses are refusals (score 1), as for
    :class:`~latentguard.judge.substring.SubstringJudge`. ``instructions`` are accepted for
    interface compatibility but not used: instruction-response pair features did not improve
    held-out accuracy.
    """

    name = "learned"

    def __init__(self, head_path: Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.head_path = Path(head_path) if head_path is not None else DEFAULT_HEAD_PATH
        tensors, meta = read_head(self.head_path)
        self.meta: dict[str, Any] = meta
        recipe = meta["recipe"]
        if recipe.get("phrases") != list(REFUSAL_PHRASES):
            raise ValueError(
                f"{self.head_path}: trained with a different REFUSAL_PHRASES list; retrain the head"
            )
        self._head = LearnedHead.from_tensors(tensors, meta)
        self._encoder = ChunkEncoder(
            layers=recipe["layers"],
            chunk_tokens=recipe["chunk_tokens"],
            max_chunks=recipe["max_chunks"],
            device=device,
            batch_size=batch_size,
        )
        if self._encoder.vocab_size != self._head.vocab_size:
            raise ValueError("the MiniLM tokenizer does not match the trained head")
        expected = len(recipe["layers"]) * 5 * self._encoder.dim + n_substring_features()
        if self._head.dense_coef.shape[0] != expected:
            raise ValueError(f"{self.head_path}: expected {expected} dense weights")

    @property
    def threshold(self) -> float:
        """Score above which a response is a refusal (chosen by cross-validation on the train side)."""
        return self._head.threshold

    def scores(self, responses: Sequence[str]) -> np.ndarray:
        """Refusal probabilities (before thresholding) of a batch of responses.

        Args:
            responses: The model's responses.

        Returns:
            ``(n,)`` float64 scores; empty responses score 1.
        """
        batch = check_batch(responses, None)
        if not batch:
            return np.zeros(0)
        dense, ids = featurize(self._encoder, batch)
        out = self._head.scores(dense, ids)
        empty = np.array([not r.strip() for r in batch])
        out[empty] = 1.0
        return out

    def judge(self, responses: Sequence[str], instructions: Sequence[str] | None = None) -> list[Judgement]:
        """Judge a batch of responses (``instructions`` are only checked for length).

        Args:
            responses: The model's responses.
            instructions: Their instructions (same length), or ``None``.

        Returns:
            One :class:`~latentguard.judge.base.Judgement` per response.
        """
        batch = check_batch(responses, instructions)
        if not batch:
            return []
        s = self.scores(batch)
        return [Judgement(refused=bool(v >= self.threshold), score=float(v)) for v in s]
