"""Batched greedy generation and first-token log-probabilities on templated prompts.

Prompts are templated with the model's chat template (see :mod:`latentguard.positions`), sorted by
length, left-padded, and decoded greedily until a stop token. Any active steering hooks (see
:mod:`latentguard.steering`) apply.

Example:
    >>> from latentguard.generation import generate, GenerationConfig
    >>> generate(lm, ["How do I bake bread?"], GenerationConfig(max_new_tokens=20))   # doctest: +SKIP
    ['Baking bread is a fun and rewarding craft...']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentguard.activations import forward_inputs
from latentguard.batching import Batch, length_batches, pad_batch
from latentguard.models import LoadedModel
from latentguard.positions import Positions, locate_for
from latentguard.prefix import PrefixCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """Options of :func:`generate`."""

    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per prompt"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    system: str | None = field(default=None, metadata={"help": "system prompt (else the template default)"})
    question: str | None = field(default=None, metadata={"help": "question appended to each instruction"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def stop_token_ids(lm: LoadedModel) -> list[int]:
    """EOS ids from the tokenizer and the generation config (e.g. ``<|im_end|>``, ``<|eot_id|>``)."""
    ids: set[int] = set()
    eos = lm.tokenizer.eos_token_id
    if isinstance(eos, int):
        ids.add(eos)
    gen_cfg = getattr(lm.model, "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif isinstance(cfg_eos, list):
        ids.update(int(i) for i in cfg_eos)
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>"):
        tid = lm.tokenizer.convert_tokens_to_ids(tok)
        if (
            isinstance(tid, int)
            and tid != lm.tokenizer.unk_token_id
            and tid >= 0
            and tok in lm.tokenizer.get_vocab()
        ):
            ids.add(tid)
    return sorted(ids)


def greedy_batch(
    lm: LoadedModel, batch: Batch, max_new_tokens: int, stops: Sequence[int], **kwargs: Any
) -> torch.Tensor:
    """One greedy ``generate`` call on a left-padded batch; returns the new token ids on CPU.

    Extra keyword arguments (e.g. ``stopping_criteria``) go to ``generate``.
    """
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev = lm.device
    hf_generate: Callable[..., torch.Tensor] = lm.model.generate  # type: ignore[assignment]
    with torch.inference_mode():
        gen = hf_generate(
            input_ids=batch.input_ids.to(dev),
            attention_mask=batch.attention_mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=list(stops) or None,
            temperature=None,
            top_p=None,
            top_k=None,
            **kwargs,
        )
    return gen[:, batch.input_ids.shape[1] :].to("cpu")


def decode_until_stop(lm: LoadedModel, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Text of ``ids`` up to the first stop token."""
    cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    return str(lm.tokenizer.decode(list(ids[:cut]), skip_special_tokens=True)).strip()


def generate_from_positions(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations of already-templated prompts, in input order."""
    from tqdm.auto import tqdm

    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(lm)
    out: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress, leave=False) as bar:
        for idx in length_batches([len(p) for p in prompts], batch_size):
            batch = pad_batch([prompts[i].input_ids for i in idx], pad_id, "left")
            new = greedy_batch(lm, batch, max_new_tokens, stops)
            for row, i in enumerate(idx):
                out[i] = decode_until_stop(lm, new[row].tolist(), stops)
            bar.update(len(idx))
    return out


def generate_plain(
    lm: LoadedModel, texts: Sequence[str], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of raw text prompts: no chat template (a base model's completion frame).

    Each text is tokenised without special tokens and gets the tokenizer's BOS token, if it has one.
    """
    bos = lm.tokenizer.bos_token_id
    ids = [
        ([bos] if isinstance(bos, int) else []) + list(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
        for t in texts
    ]
    if any(len(x) == 0 for x in ids):
        raise ValueError("a prompt tokenised to nothing")
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(lm)
    out: list[str] = [""] * len(ids)
    for idx in length_batches([len(x) for x in ids], batch_size):
        new = greedy_batch(lm, pad_batch([ids[i] for i in idx], pad_id, "left"), max_new_tokens, stops)
        for row, i in enumerate(idx):
            out[i] = decode_until_stop(lm, new[row].tolist(), stops)
    return out


def generate(
    lm: LoadedModel, instructions: Sequence[str], config: GenerationConfig | None = None
) -> list[str]:
    """Greedy responses to ``instructions``, templated with the model's chat template."""
    cfg = config or GenerationConfig()
    if not instructions:
        return []
    prompts = locate_for(lm, instructions, question=cfg.question, system=cfg.system)
    return generate_from_positions(lm, prompts, cfg.max_new_tokens, cfg.batch_size, cfg.progress)


def first_token_logits(
    lm: LoadedModel, prompts: Sequence[Positions], batch_size: int = 16, prefix: PrefixCache | None = None
) -> torch.Tensor:
    """Next-token log-probabilities after each prompt: ``[n, vocab]`` float32 on CPU.

    One forward per batch (no generation); the LM head runs on the last position only. With a
    ``prefix`` cache (:func:`latentguard.prefix.build_prefix_cache`) the template prefix is not run
    again; it is ignored while steering hooks are active.
    """
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for idx in length_batches([len(p) for p in prompts], batch_size):
        sub = [prompts[i] for i in idx]
        inputs = forward_inputs(lm, sub, [[len(p) - 1] for p in sub], "left", prefix)
        with torch.inference_mode():
            logits = lm.model(**inputs.kwargs, logits_to_keep=1).logits[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1).to("cpu")
        for row, i in enumerate(idx):
            out[i] = logp[row]
    return torch.stack(out)


def answer_token_ids(tokenizer: Any, words: Sequence[str]) -> dict[str, list[int]]:
    """First-token ids for each answer word, with and without a leading space / capital."""
    out: dict[str, list[int]] = {}
    for w in words:
        ids: set[int] = set()
        for variant in {w, " " + w, w.lower(), " " + w.lower(), w.capitalize(), " " + w.capitalize()}:
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if toks:
                ids.add(int(toks[0]))
        out[w] = sorted(ids)
    return out
