"""The learned judge: frozen MiniLM features plus a small trained head.

The features (:mod:`latentguard.judge.features`) are the mean-pooled hidden states of MiniLM layers
3 and 4 over 126-token chunks of the response (first chunk, last chunk, mean, max and min over
chunks), the substring judge's per-phrase cues, and a bag of word-piece unigrams and hashed
bigrams. The head (:mod:`latentguard.judge.head`) averages two logistic regressions. The trained
artifact ships in ``latentguard/data/judge`` (:data:`DEFAULT_HEAD_PATH`); it is made by
:func:`latentguard.judge.training.train_learned_judge`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentguard.encoder import ChunkEncoder, load_minilm
from latentguard.judge.base import Judgement, check_batch
from latentguard.judge.features import featurize, n_substring_features
from latentguard.judge.head import LearnedHead, read_head
from latentguard.judge.short import (
    CUE_MAX_INSTRUCTION_WORDS,
    N_CUES,
    TENSOR_PREFIX,
    ShortHead,
    embed_pairs,
    is_short,
)
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
    :class:`~latentguard.judge.substring.SubstringJudge`. ``instructions`` are read by the
    short-answer head only (a one-line answer is judged with its instruction: "I'm sorry." is a
    translation of "Lo siento", not a refusal); for longer responses instruction-response pair
    features did not improve held-out accuracy.
    """

    name = "learned"

    def __init__(self, head_path: Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.head_path = Path(head_path) if head_path is not None else DEFAULT_HEAD_PATH
        tensors, meta = read_head(self.head_path)
        self.meta: dict[str, Any] = meta
        #: Identity of the trained artifact (caches of judged answers key on it, not on the name).
        # the cue rules are part of what a verdict means: a change to them must not reuse cached labels
        digest = hashlib.sha256(self.head_path.read_bytes())
        digest.update(f"cues<= {CUE_MAX_INSTRUCTION_WORDS} words".encode())
        self.fingerprint = "learned-" + digest.hexdigest()[:12]
        recipe = meta["recipe"]
        if recipe.get("phrases") != list(REFUSAL_PHRASES):
            raise ValueError(
                f"{self.head_path}: trained with a different REFUSAL_PHRASES list; retrain the head"
            )
        self._head = LearnedHead.from_tensors(tensors, meta)
        self._short: ShortHead | None = None
        if f"{TENSOR_PREFIX}coef" in tensors:
            self._short = ShortHead.from_tensors(tensors, meta.get("short") or {})
        self._device = device
        self._batch_size = batch_size
        self._minilm: tuple[Any, Any] | None = None
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
        if self._short is not None and self._short.coef.shape[0] != self._encoder.dim + N_CUES:
            raise ValueError(
                f"{self.head_path}: the short-answer head has {self._short.coef.shape[0]} weights, this "
                f"version reads {self._encoder.dim + N_CUES}; retrain the head"
            )

    @property
    def threshold(self) -> float:
        """Score above which a response is a refusal (chosen by cross-validation on the train side)."""
        return self._head.threshold

    @property
    def short_head(self) -> ShortHead | None:
        """The short-answer head (:mod:`latentguard.judge.short`), or ``None`` for an older artifact."""
        return self._short

    def scores(self, responses: Sequence[str], instructions: Sequence[str] | None = None) -> np.ndarray:
        """Refusal scores (before thresholding at :attr:`threshold`) of a batch of responses.

        Responses of at most ``short_head.max_words`` words are scored by the short-answer head,
        which also reads their instructions when given; its probability is shifted so that its own
        threshold maps onto :attr:`threshold`.

        Args:
            responses: The model's responses.
            instructions: Their instructions (same length), or ``None``.

        Returns:
            ``(n,)`` float64 scores; empty responses score 1.
        """
        batch = check_batch(responses, instructions)
        if not batch:
            return np.zeros(0)
        dense, ids = featurize(self._encoder, batch)
        out = self._head.scores(dense, ids)
        if self._short is not None:
            short = [i for i, r in enumerate(batch) if is_short(r, self._short.max_words)]
            if short:
                if self._minilm is None:
                    self._minilm = load_minilm(device=self._device)
                tokenizer, model = self._minilm
                feats = embed_pairs(
                    model,
                    tokenizer,
                    [batch[i] for i in short],
                    [instructions[i] for i in short] if instructions is not None else None,
                )
                p = self._short.scores(feats)
                out[short] = np.clip(p - self._short.threshold + self.threshold, 0.0, 1.0)
        empty = np.array([not r.strip() for r in batch])
        out[empty] = 1.0
        return out

    def judge(self, responses: Sequence[str], instructions: Sequence[str] | None = None) -> list[Judgement]:
        """Judge a batch of responses (``instructions``, when given, are read for short responses).

        Args:
            responses: The model's responses.
            instructions: Their instructions (same length), or ``None``.

        Returns:
            One :class:`~latentguard.judge.base.Judgement` per response.
        """
        batch = check_batch(responses, instructions)
        if not batch:
            return []
        s = self.scores(batch, instructions)
        return [Judgement(refused=bool(v >= self.threshold), score=float(v)) for v in s]
