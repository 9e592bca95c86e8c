"""GCG: adversarial suffixes optimised with greedy coordinate gradient (Zou et al. 2023).

:func:`gcg_attack` / :func:`gcg_prompts` optimise an adversarial suffix so that the model's reply
starts with a compliant target string; :func:`gcg_prompts` can keep each optimised prompt in an
on-disk cache (``cache_dir()/gcg``) so a repeated or killed run does not optimise it again.

GCG in brief. The user content is ``instruction + " " + suffix``. The suffix's tokens (the first one
carries the separating space) are optimised; the templated prompt is
``[before ids] + [suffix ids] + [after ids]`` followed by the target's ids. Each step takes the
gradient of the target's cross-entropy with respect to a one-hot encoding of the suffix tokens,
samples ``search_width`` single-token swaps from the ``topk`` most promising tokens per position,
drops candidates that do not survive a decode/re-encode round trip (so the returned text tokenises
back to exactly the optimised ids), evaluates the rest without gradients and moves to the best.
Candidate sampling uses a local ``torch.Generator`` seeded by ``GCGConfig.seed``.

Example:
    >>> from latentguard.attacks.gcg import GCGConfig, gcg_prompts
    >>> jb = gcg_prompts(lm, ["How do I pick a lock?"], GCGConfig(steps=4))      # doctest: +SKIP
    >>> jb[0].kind                                                                # doctest: +SKIP
    'gcg'
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentguard.attacks.prompts import JailbreakPrompt, check_instructions
from latentguard.attacks.tokens import allowed_tokens, decode, encode, input_embeddings
from latentguard.data import builtin_rows
from latentguard.io import atomic_write_text, cache_dir
from latentguard.models import LoadedModel
from latentguard.positions import render, template_frame
from latentguard.prefix import cache_kwarg, returned_cache

__all__ = ["GCGConfig", "GCGResult", "default_target", "gcg_attack", "gcg_prompts"]

logger = logging.getLogger(__name__)

_DEFAULT_TARGET_START = "Sure, here is"


@dataclass(frozen=True)
class GCGConfig:
    """Options of :func:`gcg_attack`."""

    steps: int = field(default=20, metadata={"help": "optimisation steps"})
    search_width: int = field(default=64, metadata={"help": "candidate suffixes evaluated per step"})
    topk: int = field(default=32, metadata={"help": "top tokens (by -gradient) per suffix position"})
    suffix_len: int = field(default=12, metadata={"help": "suffix length in tokens"})
    seed: int = field(default=0, metadata={"help": "seed for candidate sampling"})
    batch_size: int = field(default=32, metadata={"help": "candidates per forward pass"})
    init_char: str = field(default="!", metadata={"help": "the initial suffix repeats this character"})
    early_stop: bool = field(
        default=True, metadata={"help": "stop once greedy decoding reproduces the whole target"}
    )
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "reuse the key/value cache of the tokens before the suffix (checked once)"},
    )

    def __post_init__(self) -> None:
        for name in ("search_width", "topk", "suffix_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GCGConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"GCGConfig.steps must be >= 0, got {self.steps}")
        if not self.init_char.strip():
            raise ValueError("GCGConfig.init_char must be a visible character")


@dataclass
class GCGResult:
    """Outcome of :func:`gcg_attack`.

    Attributes:
        suffix: The best suffix found (the user content is ``instruction + " " + suffix``).
        loss: Its target cross-entropy (mean over target tokens).
        losses: The best loss so far: the initial loss, then one entry per step (non-increasing).
        prompt: The user content with the suffix.
        steps: Steps run (fewer than configured after an early stop).
        success_by_target: Whether greedy decoding, teacher-forced on the target, reproduces every
            target token after the best suffix.
        suffix_ids: The suffix's token ids (the first carries the separating space).
    """

    suffix: str
    loss: float
    losses: list[float]
    prompt: str
    steps: int
    success_by_target: bool
    suffix_ids: list[int] = field(default_factory=list)


def default_target() -> str:
    """The default GCG target: the built-in compliance prefix that starts with ``"Sure, here is"``."""
    for row in builtin_rows("compliance_prefixes"):
        text = str(row.get("response", ""))
        if text.startswith(_DEFAULT_TARGET_START):
            return text
    return _DEFAULT_TARGET_START


@contextmanager
def _frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter, restoring the original flags afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@dataclass
class _Problem:
    """The fixed parts of one GCG run.

    With ``prefix_cache`` set, the key/value cache of the ``before`` tokens (identical for every
    candidate) is computed once and reused, so each forward pass runs only on suffix + after + target.
    """

    lm: LoadedModel
    text_before: str  # templated text up to the instruction's end
    text_after: str  # templated text after the suffix
    before: torch.Tensor  # [n_before] ids
    after: torch.Tensor  # [n_after] ids
    target: torch.Tensor  # [n_target] ids
    embed_scale: float
    prefix_cache: Any | None = None
    cache_kwarg: str = "past_key_values"  # newer transformers 5.x name it ``cache``

    def _past(self, batch: int) -> Any | None:
        """A fresh copy of the prefix cache for ``batch`` rows (the forward pass appends to it)."""
        if self.prefix_cache is None:
            return None
        cache = copy.deepcopy(self.prefix_cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def input_ids(self, suffixes: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` ids fed to the model for ``[B, L]`` suffixes (``before`` only without the cache)."""
        b = suffixes.shape[0]
        after, target = (p.unsqueeze(0).expand(b, -1) for p in (self.after, self.target))
        parts = [suffixes, after, target]
        if self.prefix_cache is None:
            parts.insert(0, self.before.unsqueeze(0).expand(b, -1))
        return torch.cat(parts, dim=1)

    def input_embeds(self, suffix_embeds: torch.Tensor) -> torch.Tensor:
        """``[1, T, d]`` embeddings fed to the model, given the suffix's ``[L, d]`` embeddings."""
        emb = input_embeddings(self.lm)
        parts = [suffix_embeds, emb(self.after), emb(self.target)]
        if self.prefix_cache is None:
            parts.insert(0, emb(self.before))
        return torch.cat(parts, dim=0).unsqueeze(0)

    def target_logits(self, batch: int, **inputs: Any) -> torch.Tensor:
        """Forward pass returning the logits that predict the target tokens: ``[B, n_target, V]``."""
        n_t = int(self.target.numel())
        past = self._past(batch)
        if past is not None:
            inputs[self.cache_kwarg] = past
        out = self.lm.model(**inputs, use_cache=past is not None, logits_to_keep=n_t + 1)
        return out.logits[:, -(n_t + 1) : -1].float()

    def losses(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row mean target cross-entropy and whether the greedy argmax matches every target token."""
        b = logits.shape[0]
        target = self.target.unsqueeze(0).expand(b, -1)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        ce = ce.view(b, -1).mean(dim=1)
        match = (logits.argmax(dim=-1) == target).all(dim=1)
        return ce, match


def _build_problem(lm: LoadedModel, instruction: str, target: str, init_suffix_text: str) -> _Problem:
    tok = lm.tokenizer
    frame = template_frame(tok)
    content = instruction + init_suffix_text
    rendered = render(tok, content)
    if rendered != frame.prefix + content + frame.suffix:
        raise ValueError("the chat template changes the user content (e.g. trims it); cannot place a suffix")
    dev = lm.device
    target_ids = encode(tok, target)
    if not target_ids:
        raise ValueError("the GCG target tokenises to nothing")
    emb = input_embeddings(lm)
    scale = getattr(emb, "embed_scale", None)
    embed_scale = float(scale) if isinstance(scale, (int, float, torch.Tensor)) else 1.0
    return _Problem(
        lm=lm,
        text_before=frame.prefix + instruction,
        text_after=frame.suffix,
        before=torch.tensor(encode(tok, frame.prefix + instruction), dtype=torch.long, device=dev),
        after=torch.tensor(encode(tok, frame.suffix), dtype=torch.long, device=dev),
        target=torch.tensor(target_ids, dtype=torch.long, device=dev),
        embed_scale=embed_scale,
    )


@torch.no_grad()
def _enable_prefix_cache(problem: _Problem, suffix: torch.Tensor) -> None:
    """Cache the ``before`` tokens' keys/values, keeping the cache only if it reproduces the loss."""
    reference, _ = problem.losses(problem.target_logits(1, input_ids=problem.input_ids(suffix[None])))
    try:
        problem.cache_kwarg = cache_kwarg(problem.lm.model)
        out = problem.lm.model(input_ids=problem.before[None], use_cache=True, logits_to_keep=1)
        cache = returned_cache(out)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise TypeError(f"unsupported cache {type(cache).__name__}")
        problem.prefix_cache = cache
        cached, _ = problem.losses(
            problem.target_logits(2, input_ids=problem.input_ids(suffix[None].repeat(2, 1)))
        )
    except (TypeError, ValueError, AttributeError, RuntimeError, IndexError) as exc:
        logger.warning("GCG: prefix cache unavailable (%s); running full forward passes", exc)
        problem.prefix_cache = None
        return
    logger.debug("GCG: prefix cache of %d tokens on", problem.before.numel())
    tol = 1e-3 if problem.lm.dtype == torch.float32 else 5e-2
    gap = float((cached - reference).abs().max())
    if gap > tol * max(1.0, float(reference.abs().max())):
        logger.warning("GCG: prefix cache changes the loss by %.2g; running full forward passes", gap)
        problem.prefix_cache = None


def _gradient(problem: _Problem, suffix: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
    """Gradient of the target loss w.r.t. the one-hot suffix ``[L, V]``, plus the loss and match."""
    weight = input_embeddings(problem.lm).weight
    with torch.inference_mode(False), torch.enable_grad():
        one_hot = torch.zeros(suffix.numel(), weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot.scatter_(1, suffix.unsqueeze(1), 1.0)
        one_hot.requires_grad_(True)
        embeds = problem.input_embeds((one_hot @ weight) * problem.embed_scale)
        loss, match = problem.losses(problem.target_logits(1, inputs_embeds=embeds))
        loss.sum().backward()
    grad = one_hot.grad
    if grad is None:  # pragma: no cover - backward always fills it
        raise RuntimeError("no gradient reached the one-hot suffix")
    return grad.float(), float(loss.item()), bool(match.item())


@torch.no_grad()
def _evaluate(
    problem: _Problem, candidates: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and target matches of ``[B, L]`` candidate suffixes, in batches."""
    losses: list[torch.Tensor] = []
    matches: list[torch.Tensor] = []
    for s in range(0, candidates.shape[0], batch_size):
        chunk = candidates[s : s + batch_size]
        logits = problem.target_logits(chunk.shape[0], input_ids=problem.input_ids(chunk))
        ce, match = problem.losses(logits)
        losses.append(ce.cpu())
        matches.append(match.cpu())
    return torch.cat(losses), torch.cat(matches)


def _filter(problem: _Problem, candidates: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Keep unique candidates whose text re-tokenises to the same ids, alone and in the full prompt."""
    tok = problem.lm.tokenizer
    cur = current.tolist()
    seen: set[tuple[int, ...]] = {tuple(cur)}
    rows: list[list[int]] = []
    texts: list[str] = []
    for row in candidates.tolist():
        key = tuple(row)
        if key in seen:
            continue
        seen.add(key)
        text = decode(tok, row)
        if not text.startswith(" ") or text[1:] != text[1:].strip() or not text[1:]:
            continue
        if encode(tok, text) != row:
            continue
        rows.append(row)
        texts.append(text)
    if not rows:
        return candidates.new_empty((0, candidates.shape[1]))
    full = tok([problem.text_before + t + problem.text_after for t in texts], add_special_tokens=False)
    before, after = problem.before.tolist(), problem.after.tolist()
    kept = [
        row for row, ids in zip(rows, full["input_ids"], strict=True) if list(ids) == before + row + after
    ]
    if not kept:
        return candidates.new_empty((0, candidates.shape[1]))
    return torch.tensor(kept, dtype=torch.long, device=candidates.device)


def _sample(
    grad: torch.Tensor,
    current: torch.Tensor,
    allowed: torch.Tensor,
    first: torch.Tensor,
    config: GCGConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """``search_width`` candidates, each ``current`` with one position swapped for a top-k token."""
    score = -grad.cpu()
    score[:, ~allowed] = -torch.inf
    score[0, ~first] = -torch.inf
    k = min(config.topk, int(first.sum()), int(allowed.sum()))
    top = score.topk(k, dim=1).indices  # [L, k]
    n_pos = current.numel()
    pos = torch.randint(0, n_pos, (config.search_width,), generator=gen)
    pick = torch.randint(0, k, (config.search_width,), generator=gen)
    cand = current.cpu().unsqueeze(0).repeat(config.search_width, 1)
    cand[torch.arange(config.search_width), pos] = top[pos, pick]
    return cand


def _initial_suffix(tokenizer: Any, config: GCGConfig) -> list[int]:
    ids = encode(tokenizer, " " + config.init_char)
    if len(ids) == 1:
        return ids * config.suffix_len
    ids = encode(tokenizer, " " + " ".join([config.init_char] * config.suffix_len))
    if len(ids) < config.suffix_len:
        raise ValueError(f"init_char {config.init_char!r} does not give {config.suffix_len} suffix tokens")
    return ids[: config.suffix_len]


def _run_gcg(
    lm: LoadedModel,
    instruction: str,
    target: str,
    config: GCGConfig,
    masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> GCGResult:
    tok = lm.tokenizer
    if not instruction.strip():
        raise ValueError("empty instruction")
    init = _initial_suffix(tok, config)
    problem = _build_problem(lm, instruction, target, decode(tok, init))
    vocab = input_embeddings(lm).weight.shape[0]
    allowed, first = masks if masks is not None else allowed_tokens(tok, vocab)
    if not bool(first.any()):
        raise ValueError("no token in the vocabulary can start the suffix (printable ASCII after a space)")
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    current = torch.tensor(init, dtype=torch.long, device=lm.device)
    if not _filter(problem, current.unsqueeze(0), torch.full_like(current, -1)).numel():
        logger.warning("the initial suffix does not re-tokenise identically inside the prompt")

    t0 = time.perf_counter()
    was_training = lm.model.training
    lm.model.eval()
    with _frozen_params(lm.model):
        try:
            if config.prefix_cache:
                _enable_prefix_cache(problem, current)
            grad, loss, match = _gradient(problem, current)
            best_ids, best_loss, best_match = current.clone(), loss, match
            losses = [best_loss]
            steps = 0
            for step in range(config.steps):
                if config.early_stop and best_match:
                    break
                steps = step + 1
                cands = current.new_empty((0, current.numel()))
                for _ in range(4):  # resample when every candidate is filtered out
                    cands = _filter(problem, _sample(grad, current, allowed, first, config, gen), current)
                    if cands.numel():
                        break
                if not cands.numel():
                    logger.debug("GCG step %d: no valid candidate", steps)
                    losses.append(best_loss)
                    continue
                cand_loss, cand_match = _evaluate(problem, cands.to(lm.device), config.batch_size)
                i = int(cand_loss.argmin())
                current = cands[i].to(lm.device)
                if float(cand_loss[i]) < best_loss:
                    best_ids, best_loss, best_match = (
                        current.clone(),
                        float(cand_loss[i]),
                        bool(cand_match[i]),
                    )
                losses.append(best_loss)
                logger.debug(
                    "GCG step %d: %d candidates, step best %.4f, best %.4f",
                    steps,
                    cands.shape[0],
                    float(cand_loss[i]),
                    best_loss,
                )
                if config.early_stop and best_match:
                    break
                if step + 1 < config.steps:
                    grad, _, _ = _gradient(problem, current)
        finally:
            lm.model.train(was_training)
    text = decode(tok, best_ids.tolist())
    suffix = text[1:] if text.startswith(" ") else text
    logger.info(
        "GCG: %d steps in %.1fs, loss %.4f -> %.4f, target matched: %s",
        steps,
        time.perf_counter() - t0,
        losses[0],
        best_loss,
        best_match,
    )
    return GCGResult(
        suffix=suffix,
        loss=best_loss,
        losses=losses,
        prompt=f"{instruction} {suffix}",
        steps=steps,
        success_by_target=best_match,
        suffix_ids=best_ids.tolist(),
    )


def gcg_attack(lm: LoadedModel, instruction: str, target: str, config: GCGConfig | None = None) -> GCGResult:
    """Optimise an adversarial suffix with greedy coordinate gradient (Zou et al. 2023).

    The model's parameters are frozen during the attack and their ``requires_grad`` flags restored
    afterwards. Runs are deterministic for a given ``config.seed`` (on a deterministic backend).

    Args:
        lm: The model.
        instruction: The (harmful) instruction; the user content is ``instruction + " " + suffix``.
        target: The reply the suffix should elicit, e.g. ``"Sure, here is how to do that:"``.
        config: Options; defaults to :class:`GCGConfig`.

    Returns:
        The best suffix found and its loss history.

    Raises:
        ValueError: The instruction or target is empty, or the chat template alters the user content.
    """
    return _run_gcg(lm, instruction, target, config or GCGConfig())


def gcg_prompts(
    lm: LoadedModel,
    instructions: Sequence[str],
    config: GCGConfig | None = None,
    targets: Sequence[str] | None = None,
    *,
    cache: bool = False,
) -> list[JailbreakPrompt]:
    """Run :func:`gcg_attack` on each instruction and return the suffixed prompts.

    Args:
        lm: The model.
        instructions: The instructions to attack.
        config: Options; defaults to :class:`GCGConfig`.
        targets: One target per instruction; defaults to :func:`default_target` for all.
        cache: Keep each optimised prompt on disk (``cache_dir()/gcg``, one JSON file per instruction,
            keyed by the model fingerprint, instruction, target and config, written atomically), so a
            repeated or killed run does not optimise it again.

    Returns:
        One ``kind="gcg"`` prompt per instruction, in input order.

    Raises:
        ValueError: An instruction is empty, or ``targets`` has the wrong length.
    """
    check_instructions(instructions)
    cfg = config or GCGConfig()
    if targets is None:
        targets = [default_target()] * len(instructions)
    if isinstance(targets, str) or len(targets) != len(instructions):
        raise ValueError("targets must be a sequence with one target per instruction")
    if not instructions:
        return []
    vocab = input_embeddings(lm).weight.shape[0]
    masks = allowed_tokens(lm.tokenizer, vocab)
    out: list[JailbreakPrompt] = []
    for i, (inst, target) in enumerate(zip(instructions, targets, strict=True)):
        path = _gcg_cache_path(lm, inst, target, cfg) if cache else None
        cached = _read_gcg_cache(path)
        if cached is not None:
            out.append(JailbreakPrompt("gcg", "gcg", inst, cached))
            continue
        result = _run_gcg(lm, inst, target, cfg, masks)
        logger.info(
            "GCG %d/%d: loss %.4f, success %s",
            i + 1,
            len(instructions),
            result.loss,
            result.success_by_target,
        )
        out.append(JailbreakPrompt("gcg", "gcg", inst, result.prompt))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "instruction": inst,
                "prompt": result.prompt,
                "loss": result.loss,
                "success": result.success_by_target,
            }
            atomic_write_text(path, json.dumps(record))
    return out


def _gcg_cache_path(lm: LoadedModel, instruction: str, target: str, config: GCGConfig) -> Path:
    payload = json.dumps([lm.fingerprint, instruction, target, asdict(config)], sort_keys=True)
    return cache_dir() / "gcg" / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"


def _read_gcg_cache(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        prompt = record["prompt"]
    except (json.JSONDecodeError, KeyError, TypeError):
        logger.warning("ignoring corrupt GCG cache %s", path)
        return None
    return prompt if isinstance(prompt, str) and prompt else None
