"""Batched generation and first-token log-probabilities on templated prompts.

Prompts are templated with the model's chat template (see :mod:`latentguard.positions`), sorted by
length, left-padded, and decoded greedily until a stop token. Any active steering hooks (see
:mod:`latentguard.steering`) apply.

:class:`Sampling` asks for seeded nucleus sampling instead (temperature above 0) and for stop strings;
:func:`finish` turns generated ids into a :class:`Completion` (text, finish reason, token count), and
:class:`TextStream` streams the same text while it is generated: at temperature 0 the streamed deltas
join to exactly the text :func:`finish` returns.

Example:
    >>> from latentguard.generation import generate, GenerationConfig
    >>> generate(lm, ["How do I bake bread?"], GenerationConfig(max_new_tokens=20))   # doctest: +SKIP
    ['Baking bread is a fun and rewarding craft...']
"""

from __future__ import annotations

import logging
import math
import secrets
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


@dataclass(frozen=True)
class Sampling:
    """How tokens are picked, and where generation stops early.

    Attributes:
        temperature: 0 is greedy; above 0 samples from the tempered distribution (at most 2).
        top_p: Nucleus sampling mass, in (0, 1] (sampling only).
        seed: Sampling seed; the same seed gives the same text. ``None`` draws a fresh one per call.
        stop: Up to 4 non-empty strings; the text ends before the first one generated.

    Raises:
        ValueError: On construction, if a value is out of range.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > 4 or any(not isinstance(x, str) or not x for x in self.stop):
            raise ValueError("stop takes at most 4 non-empty strings")

    @property
    def greedy(self) -> bool:
        """Whether tokens are picked greedily (temperature 0)."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    """Generated text for one prompt.

    Attributes:
        text: The answer, up to the first stop token or stop string, stripped.
        finish_reason: ``"stop"`` (a stop token or string ended it) or ``"length"`` (the budget did).
        tokens: Tokens generated, up to the cut (a stop token included).
    """

    text: str
    finish_reason: str
    tokens: int


def greedy_batch(
    lm: LoadedModel, batch: Batch, max_new_tokens: int, stops: Sequence[int], **kwargs: Any
) -> torch.Tensor:
    """One greedy ``generate`` call on a left-padded batch; returns the new token ids on CPU.

    Extra keyword arguments (e.g. ``stopping_criteria``) go to ``generate``.
    """
    return generate_batch(lm, batch, max_new_tokens, stops, None, **kwargs)


def generate_batch(
    lm: LoadedModel,
    batch: Batch,
    max_new_tokens: int,
    stops: Sequence[int],
    sampling: Sampling | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """One ``generate`` call on a left-padded batch; returns the new token ids on CPU.

    Greedy unless ``sampling`` has a temperature above 0; then sampled under ``sampling.seed`` with the
    global random state forked (:func:`torch.random.fork_rng`), so callers' random streams are untouched.
    Extra keyword arguments (``stopping_criteria``, ``streamer``) go to ``generate``.
    """
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev = lm.device
    hf_generate: Callable[..., torch.Tensor] = lm.model.generate  # type: ignore[assignment]
    common: dict[str, Any] = dict(
        input_ids=batch.input_ids.to(dev),
        attention_mask=batch.attention_mask.to(dev),
        max_new_tokens=max_new_tokens,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=list(stops) or None,
        **kwargs,
    )
    if sampling is None or sampling.greedy:
        with torch.inference_mode():
            gen = hf_generate(do_sample=False, temperature=None, top_p=None, top_k=None, **common)
    else:
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        device = torch.device(dev)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            torch.manual_seed(seed)
            gen = hf_generate(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common
            )
    return gen[:, batch.input_ids.shape[1] :].to("cpu")


def _cut_at_stop_strings(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [k for k in (text.find(x) for x in stop) if k >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def finish(
    lm: LoadedModel,
    ids: Sequence[int],
    stops: Sequence[int],
    stop_strings: Sequence[str] = (),
    max_new_tokens: int | None = None,
) -> Completion:
    """The completion that generated ``ids`` make: cut at the first stop token, then the first stop string.

    Args:
        lm: The model (its tokenizer decodes).
        ids: The generated token ids.
        stops: Stop token ids (:func:`stop_token_ids`).
        stop_strings: Stop strings (:attr:`Sampling.stop`).
        max_new_tokens: The budget; reaching it without a stop is ``finish_reason="length"``.

    Returns:
        The :class:`Completion`.
    """
    cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    text = str(lm.tokenizer.decode(list(ids[:cut]), skip_special_tokens=True))
    text, hit = _cut_at_stop_strings(text, stop_strings)
    stopped = hit or cut < len(ids) or max_new_tokens is None or len(ids) < max_new_tokens
    return Completion(
        text=text.strip(), finish_reason="stop" if stopped else "length", tokens=min(len(ids), cut + 1)
    )


def decode_until_stop(lm: LoadedModel, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Text of ``ids`` up to the first stop token."""
    return finish(lm, ids, stops).text


class StopStrings:
    """Stopping criterion: a row is done once its new text holds one of ``stop`` (or a stop token)."""

    def __init__(self, lm: LoadedModel, stop: Sequence[str], width: int, stops: Sequence[int]) -> None:
        """Watch the tokens after the first ``width`` columns of the batch for ``stop`` strings."""
        self.lm = lm
        self.stop = tuple(stop)
        self.width = width
        self.stops = list(stops)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One flag per row."""
        done = []
        for row in input_ids[:, self.width :].tolist():
            cut = next((k for k, t in enumerate(row) if t in self.stops), len(row))
            text = str(self.lm.tokenizer.decode(row[:cut], skip_special_tokens=True))
            done.append(_cut_at_stop_strings(text, self.stop)[1])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TextStream:
    """A ``generate(streamer=...)`` for one prompt: hands text deltas to ``on_text`` as tokens come.

    The deltas join to exactly :func:`finish`'s text for the same ids: leading whitespace is dropped,
    trailing whitespace, an unfinished UTF-8 character and a possible start of a stop string are held
    back until the next token shows what they are, and nothing after a stop token or stop string is sent.
    """

    def __init__(
        self,
        lm: LoadedModel,
        stops: Sequence[int],
        on_text: Callable[[str], None],
        stop_strings: Sequence[str] = (),
    ) -> None:
        """Stream ``lm``'s answer to ``on_text``."""
        self.lm = lm
        self.stops = list(stops)
        self.stop_strings = tuple(stop_strings)
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False
        self._done = False

    def put(self, value: torch.Tensor) -> None:
        """Take the next token(s); the first call (the prompt) is skipped."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self._done:
            return
        for t in value.reshape(-1).tolist():
            if t in self.stops:
                self._done = True
                break
            self.ids.append(int(t))
        self._emit(final=False)

    def end(self) -> None:
        """Send what was held back."""
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        if final:
            text = finish(self.lm, self.ids, self.stops, self.stop_strings).text
        else:
            raw = str(self.lm.tokenizer.decode(self.ids, skip_special_tokens=True))
            raw, hit = _cut_at_stop_strings(raw, self.stop_strings)
            self._done = self._done or hit
            text = raw.lstrip().rstrip().rstrip("\ufffd")
            for x in self.stop_strings:  # hold back a possible start of a stop string
                for k in range(min(len(x) - 1, len(text)), 0, -1):
                    if text.endswith(x[:k]):
                        text = text[:-k].rstrip()
                        break
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) :], text
            self.on_text(delta)
        elif final and text != self.sent:
            logger.warning(
                "streamed text differs from the decoded answer (tokenizer decode is not prefix-stable)"
            )


def complete_from_positions(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    max_new_tokens: int,
    batch_size: int = 16,
    sampling: Sampling | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Completion]:
    """Completions of already-templated prompts, in input order (greedy unless ``sampling`` says).

    With ``on_text`` (one prompt only) the answer is streamed through a :class:`TextStream`.

    Raises:
        ValueError: If ``on_text`` is given for more than one prompt.
    """
    if on_text is not None and len(prompts) != 1:
        raise ValueError("streaming (on_text) takes exactly one prompt")
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(lm)
    stop_strings = sampling.stop if sampling is not None else ()
    out: list[Completion | None] = [None] * len(prompts)
    for idx in length_batches([len(p) for p in prompts], batch_size):
        batch = pad_batch([prompts[i].input_ids for i in idx], pad_id, "left")
        kwargs: dict[str, Any] = {}
        if stop_strings:
            from transformers import StoppingCriteriaList

            width = batch.input_ids.shape[1]
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopStrings(lm, stop_strings, width, stops)])
        if on_text is not None:
            kwargs["streamer"] = TextStream(lm, stops, on_text, stop_strings)
        new = generate_batch(lm, batch, max_new_tokens, stops, sampling, **kwargs)
        for row, i in enumerate(idx):
            out[i] = finish(lm, new[row].tolist(), stops, stop_strings, max_new_tokens)
    return [c for c in out if c is not None]


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
