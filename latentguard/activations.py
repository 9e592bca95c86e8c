"""Extract residual-stream hidden states at named token positions, batched, cached and resumable.

Layer convention (the same as ``output_hidden_states``): index 0 is the embedding output (the input
of the first decoder block) and index ``i`` is the output of decoder block ``i``; the last index has
the model's final norm applied, exactly as transformers reports it.

The forward runs the decoder only (never the LM head) and stops right after the deepest layer that
is needed. Prompts are processed in chunks; each chunk is written atomically to a content-addressed
cache, so a killed run resumes where it stopped and an identical second call does no forward at all.

Example:
    >>> from latentguard import models, activations
    >>> lm = models.load("default")                                    # doctest: +SKIP
    >>> acts = activations.extract(lm, ["How do I bake bread?"])       # doctest: +SKIP
    >>> acts.activations.shape                                         # doctest: +SKIP
    torch.Size([1, 31, 2, 576])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from latentguard.batching import length_batches, pad_batch
from latentguard.conversation import Prompt, prompt_key
from latentguard.hooks import residual_hook
from latentguard.io import ArtifactError, atomic_save_tensors, atomic_write_text, cache_dir
from latentguard.models import LoadedModel, decoder_of
from latentguard.positions import POSITION_NAMES, Positions, locate_for
from latentguard.prefix import PrefixCache, build_prefix_cache, cache_kwarg, usable

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class _StopForward(Exception):
    """Raised inside a hook to end the forward after the deepest needed layer."""


@dataclass
class ActivationSet:
    """Hidden states of ``n`` prompts at some layers and positions.

    Attributes:
        activations: ``[n, n_layers_stored, n_positions, d_model]``.
        positions: Position names, in the order of axis 2.
        layers: The ``output_hidden_states`` indices stored, in the order of axis 1.
        instructions: The ``n`` prompts: instructions, or conversations as compact JSON
            (:func:`latentguard.conversation.prompt_key`).
        fingerprint: Fingerprint of the model that produced them.
        meta: Everything else (dtype, prompt hash, template hash, question...).
    """

    activations: torch.Tensor
    positions: tuple[str, ...]
    layers: list[int]
    instructions: list[str]
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = self.activations
        if a.ndim != 4:
            raise ArtifactError(f"activations must be 4-D [n, layers, positions, d], got {tuple(a.shape)}")
        if a.shape[0] != len(self.instructions):
            raise ArtifactError(f"{a.shape[0]} activation rows for {len(self.instructions)} instructions")
        if a.shape[1] != len(self.layers) or a.shape[2] != len(self.positions):
            raise ArtifactError("activation shape does not match layers/positions")

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def d_model(self) -> int:
        """Width of the stored hidden states."""
        return int(self.activations.shape[-1])

    def at(self, position: str) -> torch.Tensor:
        """``[n, n_layers_stored, d]`` at one named position."""
        if position not in self.positions:
            raise KeyError(f"position {position!r} not extracted; have {self.positions}")
        return self.activations[:, :, self.positions.index(position)]

    def subset(self, index: Sequence[int] | torch.Tensor) -> ActivationSet:
        """The rows at ``index``, as a new set."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ActivationSet(
            activations=self.activations[idx],
            positions=self.positions,
            layers=list(self.layers),
            instructions=[self.instructions[int(i)] for i in idx],
            fingerprint=self.fingerprint,
            meta=dict(self.meta),
        )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ActivationSet:
        """A copy on another device/dtype."""
        return ActivationSet(
            activations=self.activations.to(device=device, dtype=dtype),
            positions=self.positions,
            layers=list(self.layers),
            instructions=list(self.instructions),
            fingerprint=self.fingerprint,
            meta=dict(self.meta),
        )

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``activations.safetensors`` and ``meta.json`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "positions": list(self.positions),
            "layers": list(self.layers),
            "layer_convention": "index 0 = embedding output; index i = output of decoder block i "
            "(last index after the final norm), as output_hidden_states",
            "shape": list(self.activations.shape),
            "dtype": str(self.activations.dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint,
            "prompt_hash": prompt_hash(self.instructions),
            "instructions": self.instructions,
            **{k: v for k, v in self.meta.items() if k not in {"instructions"}},
        }
        atomic_save_tensors({"activations": self.activations.contiguous()}, out / "activations.safetensors")
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, in_dir: str | os.PathLike[str], expect_fingerprint: str | None = None) -> ActivationSet:
        """Read a set written by :meth:`save`, checking shape, NaNs and (optionally) the model."""
        d = Path(in_dir)
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            tensors = load_file(str(d / "activations.safetensors"))
        except (OSError, json.JSONDecodeError, SafetensorError) as exc:
            raise ArtifactError(f"cannot read activation set in {d}: {exc}") from exc
        acts = tensors.get("activations")
        if acts is None or list(acts.shape) != meta.get("shape"):
            raise ArtifactError(f"{d}: activations missing or shape differs from meta.json")
        if not torch.isfinite(acts).all():
            raise ArtifactError(f"{d}: activations contain NaN or inf")
        if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
            raise ArtifactError(
                f"{d} was extracted from model {meta.get('fingerprint')}, not the loaded model {expect_fingerprint}"
            )
        extra = {
            k: v for k, v in meta.items() if k not in {"positions", "layers", "instructions", "fingerprint"}
        }
        return cls(
            activations=acts,
            positions=tuple(meta["positions"]),
            layers=list(meta["layers"]),
            instructions=list(meta["instructions"]),
            fingerprint=str(meta["fingerprint"]),
            meta=extra,
        )


def prompt_hash(instructions: Sequence[str]) -> str:
    """Order-sensitive hash of a list of prompts."""
    h = hashlib.sha256()
    for s in instructions:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ForwardInputs:
    """Model inputs for a batch of templated prompts, cut after the last position read.

    Attributes:
        kwargs: Keyword arguments for the decoder or the causal LM (ids, mask, positions and, when
            the prefix cache is used, the cache).
        gather: ``[b, k]`` index, in the batch's columns, of each requested position.
        prefix_len: Tokens served from the prefix cache (0 if it was not used).
    """

    kwargs: dict[str, Any]
    gather: torch.Tensor
    prefix_len: int


def forward_inputs(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    reads: Sequence[Sequence[int]],
    padding_side: str = "left",
    prefix: PrefixCache | None = None,
) -> ForwardInputs:
    """Pad ``prompts`` into one batch that reads token indices ``reads[i]`` of prompt ``i``.

    Tokens after a prompt's last read position cannot change its hidden states (causal attention),
    so they are dropped. With a usable ``prefix`` (see :func:`latentguard.prefix.usable`) the
    template prefix comes from the cache and only the tokens after it are run; a left-padded batch
    does so only if it needs no padding, since pads between the prefix and the prompt would widen
    sliding-window distances.
    """
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if len(reads) != len(prompts) or any(not r for r in reads):
        raise ValueError("give at least one read position per prompt")
    first = [min(r) for r in reads]
    n_pre = len(prefix) if prefix is not None and usable(prefix, lm, prompts, first) else 0
    seqs = [p.input_ids[n_pre : max(r) + 1] for p, r in zip(prompts, reads, strict=True)]
    if n_pre and padding_side == "left" and len({len(x) for x in seqs}) > 1:
        # Padding between the cached prefix and the prompt would count as distance for
        # sliding-window attention (it counts cache slots), so such a batch runs in full.
        n_pre = 0
        seqs = [p.input_ids[: max(r) + 1] for p, r in zip(prompts, reads, strict=True)]
    batch = pad_batch(seqs, pad_id, padding_side)
    gather = torch.tensor([list(r) for r in reads], dtype=torch.long) - n_pre + batch.offsets[:, None]
    dev = lm.device
    mask, positions = batch.attention_mask, batch.position_ids
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids.to(dev)}
    if n_pre and prefix is not None:
        mask = torch.cat([torch.ones((len(prompts), n_pre), dtype=mask.dtype), mask], dim=1)
        positions = positions + n_pre
        kwargs[cache_kwarg(decoder_of(lm.model))] = prefix.for_batch(len(prompts))
        kwargs["use_cache"] = True
    else:
        kwargs["use_cache"] = False
    kwargs["attention_mask"] = mask.to(dev)
    kwargs["position_ids"] = positions.to(dev)
    return ForwardInputs(kwargs=kwargs, gather=gather, prefix_len=n_pre)


def hidden_at(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    names: Sequence[str],
    layers: Sequence[int],
    padding_side: str = "left",
    prefix: PrefixCache | None = None,
) -> torch.Tensor:
    """One batched forward returning ``[b, len(layers), len(names), d]`` float32 on CPU.

    Hooks read the residual stream at the requested indices; the forward stops after the deepest
    one, and the LM head is never run. Tokens after the last requested position are not run, and
    with a ``prefix`` cache (:func:`latentguard.prefix.build_prefix_cache`) neither is the template
    prefix.
    """
    n_layers = lm.n_layers
    for i in layers:
        if not 0 <= i <= n_layers:
            raise ValueError(f"layer index {i} outside 0..{n_layers}")
    # right padding with a prefix: nothing sits between the cached prefix and the prompt
    side = "right" if prefix is not None else padding_side
    inputs = forward_inputs(lm, prompts, [[p.index(n) for n in names] for p in prompts], side, prefix)
    gather = inputs.gather
    rows = torch.arange(len(prompts))[:, None]
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def make_reader(index: int) -> Callable[[torch.Tensor, Any], None]:
        def read(hidden: torch.Tensor, _kwargs: Any) -> None:
            sel = hidden[rows.to(hidden.device), gather.to(hidden.device)]
            captured[index] = sel.detach().to("cpu", torch.float32)
            if index == deepest:
                raise _StopForward

        return read

    handles = []
    try:
        for i in sorted(set(layers)):
            handles.append(residual_hook(lm, i, make_reader(i)))
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            decoder_of(lm.model)(**inputs.kwargs)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in layers if i not in captured]
    if missing:
        raise RuntimeError(f"hooks did not fire for layers {missing}")
    return torch.stack([captured[i] for i in layers], dim=1)


@dataclass(frozen=True)
class ExtractConfig:
    """Options of :func:`extract` (each documented in ``help``)."""

    positions: tuple[str, ...] = field(default=POSITION_NAMES, metadata={"help": "named token positions"})
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "hidden-state indices; None = all"}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward"})
    chunk_size: int = field(default=128, metadata={"help": "prompts per cached, atomically written chunk"})
    padding_side: str = field(default="left", metadata={"help": "'left' or 'right'"})
    question: str | None = field(default=None, metadata={"help": "question appended (reply inversion)"})
    system: str | None = field(default=None, metadata={"help": "system prompt (else the template default)"})
    use_cache: bool = field(default=True, metadata={"help": "read/write the chunk cache"})
    reuse_prefix: bool = field(
        default=True,
        metadata={"help": "run the chat template's shared prefix once per chunk (prefix key/value cache)"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def _cache_key(
    lm: LoadedModel, instructions: Sequence[str], cfg: ExtractConfig, layers: Sequence[int]
) -> str:
    return cache_key_for_hash(lm, prompt_hash(instructions), cfg, layers)


def cache_key_for_hash(lm: LoadedModel, prompts_hash: str, cfg: ExtractConfig, layers: Sequence[int]) -> str:
    """Key of the chunk cache of one :func:`extract` call, given :func:`prompt_hash` of all its prompts.

    A worker that sees only some chunks (the Ray engine) computes the same key as :func:`extract`.
    """
    payload = json.dumps(
        {
            "v": FORMAT_VERSION,
            "fp": lm.fingerprint,
            "tpl": lm.template_hash,
            "dtype": str(lm.dtype),
            "prompts": prompts_hash,
            "positions": list(cfg.positions),
            "layers": list(layers),
            "question": cfg.question,
            "system": cfg.system,
            "chunk": cfg.chunk_size,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def chunk_path(key: str, chunk: int) -> Path:
    """File of chunk ``chunk`` in the activation cache ``key``."""
    return cache_dir() / "activations" / key / f"chunk_{chunk:05d}.safetensors"


def compute_chunk(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    cfg: ExtractConfig,
    layers: Sequence[int],
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Hidden states of one chunk of templated prompts: ``[n, len(layers), len(positions), d]`` float32.

    Prompts are sorted by length (longest first) and run ``cfg.batch_size`` at a time; rows come
    back in input order. ``on_batch`` is called with the number of prompts after each forward.
    With ``cfg.reuse_prefix`` the template prefix is run once for the chunk
    (:func:`latentguard.prefix.build_prefix_cache`).

    Raises:
        FloatingPointError: If a hidden state is not finite.
    """
    out = torch.empty((len(prompts), len(layers), len(cfg.positions), lm.d_model), dtype=torch.float32)
    prefix = build_prefix_cache(lm, cfg.system) if cfg.reuse_prefix and prompts else None
    for sub in length_batches([len(p) for p in prompts], cfg.batch_size):
        h = hidden_at(lm, [prompts[i] for i in sub], cfg.positions, layers, cfg.padding_side, prefix)
        if not torch.isfinite(h).all():
            raise FloatingPointError("non-finite hidden states; try dtype=float32")
        for j, i in enumerate(sub):
            out[i] = h[j]
        if on_batch is not None:
            on_batch(len(sub))
    return out


def load_chunk(path: Path, n: int, shape_tail: tuple[int, ...]) -> torch.Tensor | None:
    """A cached chunk of ``n`` rows, or ``None`` (a missing, unreadable or mismatched file is discarded)."""
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))["activations"]
    except (OSError, SafetensorError, KeyError) as exc:
        logger.warning("discarding unreadable cache chunk %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return None
    if tuple(t.shape) != (n, *shape_tail) or not torch.isfinite(t).all():
        logger.warning("discarding mismatched cache chunk %s", path)
        path.unlink(missing_ok=True)
        return None
    return t


def extract(
    lm: LoadedModel,
    instructions: Sequence[Prompt],
    config: ExtractConfig | None = None,
    *,
    on_chunk: Callable[[int], None] | None = None,
) -> ActivationSet:
    """Hidden states of ``instructions`` at ``config.positions`` for every (or the chosen) layer.

    Args:
        lm: A loaded model.
        instructions: User instructions or conversations (each templated with the model's chat
            template; a conversation is read at its last user message, see :mod:`latentguard.positions`).
        config: Extraction options; defaults to ``t_inst`` and ``t_post_inst`` at all layers.
        on_chunk: Called with the chunk index after each chunk is written (for tests/progress).

    Returns:
        An :class:`ActivationSet` with ``[n, n_layers+1, n_positions, d]`` float32 activations.
    """
    cfg = config or ExtractConfig()
    if not instructions:
        raise ValueError("no instructions to extract")
    layers = list(cfg.layers) if cfg.layers is not None else list(range(lm.n_layers + 1))
    prompts = locate_for(lm, instructions, question=cfg.question, system=cfg.system)
    for p in prompts[:1]:
        for name in cfg.positions:
            p.index(name)  # validates names early
    keys = [prompt_key(p) for p in instructions]
    key = _cache_key(lm, keys, cfg, layers)
    chunk_dir = chunk_path(key, 0).parent
    shape_tail = (len(layers), len(cfg.positions), lm.d_model)
    n = len(prompts)
    chunks = [list(range(s, min(n, s + cfg.chunk_size))) for s in range(0, n, cfg.chunk_size)]
    results: list[torch.Tensor] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="extract", unit="prompt", disable=not cfg.progress, leave=False)
    n_cached = 0
    try:
        for ci, idx in enumerate(chunks):
            path = chunk_path(key, ci)
            cached = load_chunk(path, len(idx), shape_tail) if cfg.use_cache else None
            if cached is not None:
                results.append(cached)
                n_cached += len(idx)
                bar.update(len(idx))
                continue
            out = compute_chunk(lm, [prompts[i] for i in idx], cfg, layers, on_batch=bar.update)
            if cfg.use_cache:
                atomic_save_tensors({"activations": out}, path, metadata={"key": key, "chunk": str(ci)})
            results.append(out)
            if on_chunk is not None:
                on_chunk(ci)
    finally:
        bar.close()
    if n_cached:
        logger.info("served %d/%d prompts from the activation cache %s", n_cached, n, chunk_dir)
    acts = torch.cat(results, dim=0)
    return ActivationSet(
        activations=acts,
        positions=tuple(cfg.positions),
        layers=layers,
        instructions=keys,
        fingerprint=lm.fingerprint,
        meta={
            "model": lm.spec,
            "template_hash": lm.template_hash,
            "model_dtype": str(lm.dtype).replace("torch.", ""),
            "question": cfg.question,
            "system": cfg.system,
            "n_layers": lm.n_layers,
            "cache_key": key,
            "n_from_cache": n_cached,
        },
    )
