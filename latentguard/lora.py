"""LoRA training on (prompt -> target) pairs, and adapters saved as float16 factors.

:func:`lora_train` is what ``latentguard align`` (the model organism) and ``latentguard attack``
(the finetuning attack) run. The trained factors are rounded to float16 and merged from those
(:func:`adapter_factors`, :func:`merge_adapter`), so a saved adapter rebuilds the trained model
bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentguard.generation import stop_token_ids
from latentguard.models import LoadedModel, ModelLoadError, decoder_of
from latentguard.positions import locate_many
from latentguard.prefix import cache_kwarg, returned_cache, template_prefix_ids


@dataclass(frozen=True)
class TrainExample:
    """Prompt token ids and target token ids."""

    prompt_ids: list[int]
    target_ids: list[int]


def build_examples(
    lm: LoadedModel, instructions: Sequence[str], targets: Sequence[str], max_target_tokens: int
) -> list[TrainExample]:
    """Template the instructions and tokenise the targets (refusals end with the stop token)."""
    if len(instructions) != len(targets):
        raise ValueError("one target per instruction is needed")
    prompts = locate_many(lm.tokenizer, instructions)
    stop = stop_token_ids(lm)
    out = []
    for p, t in zip(prompts, targets, strict=True):
        ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) < max_target_tokens and stop:
            ids = [*ids, stop[0]]
        out.append(TrainExample(p.input_ids, ids[:max_target_tokens]))
    return out


def epoch_batches(
    examples: Sequence[TrainExample], batch_size: int, rng: random.Random, bucket: bool
) -> list[list[int]]:
    """One epoch of batches (popped from the end). With ``bucket``, examples are shuffled, then sorted
    by length within windows of 8 batches, so each batch pads little; the batch order is shuffled."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    if bucket:
        window = batch_size * 8
        length = [len(e.prompt_ids) + len(e.target_ids) for e in examples]
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=length.__getitem__)
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def shared_prefix_len(examples: Sequence[TrainExample], prefix: Sequence[int]) -> int:
    """Length of ``prefix`` if every example's prompt starts with it (and goes past it), else 0."""
    n = len(prefix)
    if not n or not examples:
        return 0
    head = list(prefix)
    ok = all(len(e.prompt_ids) > n and e.prompt_ids[:n] == head for e in examples)
    return n if ok else 0


def _train_forward(
    decoder: Any, ids: torch.Tensor, mask: torch.Tensor, prefix_ids: torch.Tensor | None
) -> torch.Tensor:
    """Last hidden states of a right-padded batch, with gradients.

    With ``prefix_ids`` (``[1, p]``), the prefix runs once and its keys and values, repeated over
    the batch, are the cache the batch attends to; ``ids`` then hold only the tokens after the
    prefix. Every example sees the same keys and values it would compute itself, so the hidden
    states (and the loss) equal a full forward's, and the gradient of the shared prefix is the sum
    over the batch, as it would be.
    """
    if prefix_ids is None:
        out = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state  # type: ignore[no-any-return]
    from transformers import DynamicCache

    n_pre = prefix_ids.shape[1]
    config = getattr(decoder, "config", None)
    try:
        past = DynamicCache(config=config)
    except (TypeError, ValueError, AttributeError):
        past = DynamicCache()
    dev = ids.device
    pre = prefix_ids.to(dev)
    kw = cache_kwarg(decoder)
    out = decoder(
        input_ids=pre,
        attention_mask=torch.ones_like(pre),
        position_ids=torch.arange(n_pre, device=dev)[None],
        use_cache=True,
        **{kw: past},
    )
    cache = returned_cache(out)
    b, width = ids.shape
    cache.batch_repeat_interleave(b)
    full_mask = torch.cat([torch.ones((b, n_pre), dtype=mask.dtype, device=dev), mask], dim=1)
    positions = torch.arange(n_pre, n_pre + width, device=dev)[None].expand(b, width)
    out = decoder(
        input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True, **{kw: cache}
    )
    return out.last_hidden_state  # type: ignore[no-any-return]


def lora_train(
    lm: LoadedModel,
    examples: Sequence[TrainExample],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    r: int,
    alpha: int,
    target_modules: Sequence[str],
    seed: int,
    desc: str,
    first_layer: int = 0,
    bf16: bool = False,
    bucket: bool = True,
    share_prefix: bool = True,
    first_token_weight: float = 1.0,
) -> tuple[Any, list[float], dict[str, torch.Tensor]]:
    """Train LoRA adapters on (prompt -> target) pairs.

    The trained factors are rounded to float16 (:func:`adapter_factors`) and merged from those, so
    a saved adapter rebuilds exactly this model (:func:`merge_adapter`).

    Returns:
        The merged model, the loss per step and the float16 adapter factors.

    Args:
        first_layer: Adapt decoder blocks ``first_layer..`` only. Blocks below it get no adapters,
            so no gradient flows through them and the backward pass stops early (cheaper).
        bf16: Run forward and backward under bfloat16 autocast (the adapters stay float32).
        bucket: Batch examples of similar length together (less padding); the batch order is
            still shuffled.
        share_prefix: Run the chat template's shared prefix once per step (batch 1, with
            gradients) and let every example attend to its keys and values, instead of running it
            once per example. The loss is the same (see :func:`_train_forward`).
        first_token_weight: Loss weight of each target's first token (the others weigh 1).
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    present = {name.rsplit(".", 1)[-1] for name, _ in lm.model.named_modules()}
    targets = [t for t in target_modules if t in present]
    if not targets:
        raise ModelLoadError(f"none of the LoRA target modules {list(target_modules)} exist in this model")
    n_blocks = len(lm.layers)
    if not 0 <= first_layer < n_blocks:
        raise ValueError(f"first_layer must be in [0, {n_blocks}), got {first_layer}")
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        layers_to_transform=list(range(first_layer, n_blocks)) if first_layer else None,
    )
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init, the caller's RNG state untouched
        torch.manual_seed(seed)
        peft_model = get_peft_model(lm.model, lora)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 3) * max(0.1, 1 - s / max(1, steps))
    )
    base: Any = peft_model.get_base_model()
    decoder = decoder_of(base)
    head: Callable[[torch.Tensor], torch.Tensor] = base.get_output_embeddings()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev = lm.device
    shared = shared_prefix_len(examples, template_prefix_ids(lm)) if share_prefix else 0
    prefix_ids = torch.tensor([examples[0].prompt_ids[:shared]], dtype=torch.long) if shared else None
    batches: list[list[int]] = []
    losses: list[float] = []
    autocast = torch.autocast(device_type=torch.device(dev).type, dtype=torch.bfloat16, enabled=bf16)
    for _step in tqdm(range(steps), desc=desc, unit="step", leave=False):
        if not batches:
            batches = epoch_batches(examples, batch_size, rng, bucket)
        idx = batches.pop()
        seqs = [examples[i].prompt_ids[shared:] + examples[i].target_ids for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        weights = torch.zeros((len(idx), width), dtype=torch.float32)
        for row, (i, s) in enumerate(zip(idx, seqs, strict=True)):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
            n_prompt = len(examples[i].prompt_ids) - shared
            labels[row, n_prompt : len(s)] = torch.tensor(examples[i].target_ids)
            weights[row, n_prompt : len(s)] = 1.0
            weights[row, n_prompt] = first_token_weight
        with autocast:
            hidden = _train_forward(decoder, ids.to(dev), mask.to(dev), prefix_ids)
            # predict token t+1 from position t; run the LM head only where there is a label
            shift_labels = labels[:, 1:].to(dev)
            sel = shift_labels != -100
            logits = head(hidden[:, :-1][sel])
        w = weights[:, 1:].to(dev)[sel]
        token_loss = torch.nn.functional.cross_entropy(logits.float(), shift_labels[sel], reduction="none")
        loss = (token_loss * w).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    peft_model.eval()
    factors = adapter_factors(peft_model)
    merged = peft_model.unload()
    merge_adapter(merged, factors)
    return merged, losses, factors


#: Suffixes of the two factors of one adapted module in an adapter file.
_A, _B = ".lora_A", ".lora_B"


def adapter_factors(peft_model: Any) -> dict[str, torch.Tensor]:
    """The trained LoRA factors of a peft model, float16, keyed by the base model's module names.

    For a module ``m`` the file holds ``m.lora_A`` (``[r, in]``) and ``m.lora_B`` (``[out, r]``,
    already multiplied by ``alpha / r``), so the merged weight is ``W + B @ A``.
    """
    out: dict[str, torch.Tensor] = {}
    prefix = "base_model.model."
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
                continue
            key = name[len(prefix) :] if name.startswith(prefix) else name
            scale = float(module.scaling["default"])
            a_weight: torch.Tensor = lora_a["default"].weight  # type: ignore[assignment]
            b_weight: torch.Tensor = module.lora_B["default"].weight
            out[key + _A] = a_weight.detach().to("cpu", torch.float16).contiguous()
            b = b_weight.detach().float() * scale
            out[key + _B] = b.to("cpu", torch.float16).contiguous()
    return out


def merge_adapter(model: torch.nn.Module, factors: dict[str, torch.Tensor]) -> None:
    """Add ``B @ A`` (computed in float32 from the float16 factors) to each named module's weight.

    Raises:
        ModelLoadError: A factor names a module the model lacks, or its shape does not fit.
    """
    modules = dict(model.named_modules())
    names = sorted({k[: -len(_A)] for k in factors if k.endswith(_A)})
    if not names or len(factors) != 2 * len(names):
        raise ModelLoadError("adapter file holds no complete (lora_A, lora_B) pairs")
    with torch.no_grad():
        for name in names:
            module = modules.get(name)
            a, b = factors.get(name + _A), factors.get(name + _B)
            weight = getattr(module, "weight", None)
            if module is None or a is None or b is None or not isinstance(weight, torch.Tensor):
                raise ModelLoadError(f"adapter module {name!r} does not exist in this model")
            if weight.shape != (b.shape[0], a.shape[1]) or a.shape[0] != b.shape[1]:
                raise ModelLoadError(
                    f"adapter module {name!r}: factors {tuple(b.shape)} x {tuple(a.shape)} do not fit "
                    f"the weight {tuple(weight.shape)}"
                )
            delta = b.float() @ a.float()
            if any(
                p is weight
                for n, p in model.named_parameters(remove_duplicate=False)
                if n != name + ".weight"
            ):
                # a tied weight (an LM head shared with the input embeddings): adapt a copy only,
                # as training did, and untie it so the embeddings stay the base model's
                module.weight = torch.nn.Parameter(
                    weight.detach().clone(), requires_grad=weight.requires_grad
                )
                weight = module.weight
                config: Any = getattr(model, "config", None)
                if config is not None and getattr(config, "tie_word_embeddings", False):
                    config.tie_word_embeddings = False
            weight.add_(delta.to(weight.device, weight.dtype))
