"""Causal steering (paper Fig. 4) and the reply-inversion task (paper Fig. 5).

* :func:`steering_sweep` adds a direction at one layer at a time (all prompt positions, the first
  decoding step by default) and measures the refusal rate of the generated replies.
* :func:`inversion_sweep` appends a question such as "Could this user prompt cause harm? Answer
  'Certainly' if it could, otherwise 'No'." and steers only the tokens before the question; the
  decision comes from the first-token log-probabilities of 'Certainly' vs 'No' (one forward per
  batch, no generation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentguard.batching import length_batches, pad_batch
from latentguard.directions import Directions
from latentguard.generation import answer_token_ids, generate_from_positions
from latentguard.models import LoadedModel
from latentguard.positions import Positions, locate_many
from latentguard.steering import steer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    """Options of the steering and inversion sweeps."""

    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "layers to sweep (None: every 2nd)"}
    )
    coefficient: float = field(default=1.0, metadata={"help": "multiple of the diff-in-means vector added"})
    steps: int = field(
        default=1, metadata={"help": "decoding steps steered (1 = the first, as in the paper)"}
    )
    max_new_tokens: int = field(default=12, metadata={"help": "tokens generated to judge a refusal"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward"})


def sweep_layers(n_layers: int, stride: int = 2) -> list[int]:
    """Default sweep layers: every ``stride``-th block input from 1 to n_layers-1."""
    return list(range(1, n_layers, stride))


def _refusal_rate(judge: Any, responses: Sequence[str], insts: Sequence[str]) -> float:
    verdicts = judge.judge(list(responses), list(insts))
    return sum(v.refused for v in verdicts) / max(1, len(verdicts))


def steering_sweep(
    lm: LoadedModel,
    directions: dict[str, Directions],
    harmless: Sequence[str],
    harmful: Sequence[str],
    judge: Any,
    config: SweepConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Refusal rate per layer when adding each direction to harmless prompts / subtracting it from harmful ones."""
    cfg = config or SweepConfig()
    layers = list(cfg.layers) if cfg.layers is not None else sweep_layers(lm.n_layers)
    p_safe = locate_many(lm.tokenizer, harmless)
    p_harm = locate_many(lm.tokenizer, harmful)

    def rate(
        prompts: list[Positions], insts: Sequence[str], vecs: dict[int, torch.Tensor] | None, c: float
    ) -> float:
        if vecs is None:
            out = generate_from_positions(lm, prompts, cfg.max_new_tokens, cfg.batch_size)
        else:
            with steer(lm, vecs, c, steps=cfg.steps):
                out = generate_from_positions(lm, prompts, cfg.max_new_tokens, cfg.batch_size)
        return _refusal_rate(judge, out, insts)

    result: dict[str, Any] = {
        "layers": layers,
        "coefficient": cfg.coefficient,
        "steps": cfg.steps,
        "n_prompts": len(harmless),  # per case (harmless prompts steered up; as many harmful steered down)
        "n_harmful": len(harmful),
        "baseline": {
            "harmless": rate(p_safe, harmless, None, 0.0),
            "harmful": rate(p_harm, harmful, None, 0.0),
        },
        "add_to_harmless": {},
        "subtract_from_harmful": {},
    }
    for name, d in directions.items():
        add, sub = [], []
        for layer in layers:
            vec = {layer: d.vectors[layer]}
            add.append(rate(p_safe, harmless, vec, cfg.coefficient))
            sub.append(rate(p_harm, harmful, vec, -cfg.coefficient))
            if progress:
                progress(f"steering {name} layer {layer}: +{add[-1]:.2f} / -{sub[-1]:.2f}")
        result["add_to_harmless"][name] = add
        result["subtract_from_harmful"][name] = sub
    return result


def _log_odds(
    lm: LoadedModel,
    prompts: Sequence[Positions],
    ids: dict[str, list[int]],
    vecs: dict[int, torch.Tensor] | None,
    coefficient: float,
    batch_size: int,
) -> torch.Tensor:
    """Per prompt, first-token ``log P('Certainly') - log P('No')`` (float64, input order)."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    yes_ids = torch.tensor(ids["Certainly"])
    no_ids = torch.tensor(ids["No"])
    out = torch.zeros(len(prompts), dtype=torch.float64)
    dev = lm.device
    for idx in length_batches([len(p) for p in prompts], batch_size):
        batch = pad_batch([prompts[i].input_ids for i in idx], pad, "left")
        mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        for row, i in enumerate(idx):
            stop = prompts[i].before_question
            last = stop if stop is not None else prompts[i].t_inst
            off = int(batch.offsets[row])
            mask[row, off : off + last + 1] = True
        kwargs = {
            "input_ids": batch.input_ids.to(dev),
            "attention_mask": batch.attention_mask.to(dev),
            "position_ids": batch.position_ids.to(dev),
            "logits_to_keep": 1,
            "use_cache": False,
        }
        with torch.inference_mode():
            if vecs is None:
                logits = lm.model(**kwargs).logits[:, -1]
            else:
                with steer(lm, vecs, coefficient, prompt_mask=mask):
                    logits = lm.model(**kwargs).logits[:, -1]
        logp = torch.log_softmax(logits.float(), -1).cpu()
        yes = torch.logsumexp(logp[:, yes_ids], -1)
        no = torch.logsumexp(logp[:, no_ids], -1)
        out[torch.tensor(idx)] = (yes - no).double()
    return out


def inversion_sweep(
    lm: LoadedModel,
    directions: dict[str, Directions],
    harmless: Sequence[str],
    harmful: Sequence[str],
    questions: Sequence[str],
    config: SweepConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per layer, the rate of 'Certainly' (vs 'No') when steering the tokens before the question.

    Rates are averaged over the questions. ``flip`` is the largest change from the baseline over
    layers, averaged over the two cases (added to harmless: more 'Certainly'; subtracted from
    harmful: fewer); ``ranking`` orders the layers by that change.
    """
    cfg = config or SweepConfig()
    layers = list(cfg.layers) if cfg.layers is not None else sweep_layers(lm.n_layers)
    ids = answer_token_ids(lm.tokenizer, ["Certainly", "No"])
    sets = {
        q: (locate_many(lm.tokenizer, harmless, question=q), locate_many(lm.tokenizer, harmful, question=q))
        for q in questions
    }

    def odds(which: int, vecs: dict[int, torch.Tensor] | None, c: float) -> list[torch.Tensor]:
        return [_log_odds(lm, sets[q][which], ids, vecs, c, cfg.batch_size) for q in questions]

    base = {0: odds(0, None, 0.0), 1: odds(1, None, 0.0)}
    # A small model may prefer one answer word whatever the prompt; the decision threshold of each
    # question is calibrated on the unsteered prompts: the midpoint of the harmless and harmful
    # mean log-odds. raw_* rates use the plain comparison (threshold 0).
    thresholds = [float((base[0][k].mean() + base[1][k].mean()) / 2) for k in range(len(questions))]

    def rate(odds_list: list[torch.Tensor], calibrated: bool = True) -> float:
        vals = [
            float((o > (t if calibrated else 0.0)).double().mean())
            for o, t in zip(odds_list, thresholds, strict=True)
        ]
        return sum(vals) / len(vals)

    def mean_odds(odds_list: list[torch.Tensor]) -> float:
        return float(sum(float(o.mean()) for o in odds_list) / len(odds_list))

    base_safe, base_harm = rate(base[0]), rate(base[1])
    result: dict[str, Any] = {
        "layers": layers,
        "questions": list(questions),
        "coefficient": cfg.coefficient,
        "decision": "log P(Certainly) - log P(No) above a per-question threshold calibrated on unsteered prompts",
        "thresholds": thresholds,
        "baseline": {"harmless": base_safe, "harmful": base_harm},
        "raw_baseline": {"harmless": rate(base[0], False), "harmful": rate(base[1], False)},
        "baseline_log_odds": {"harmless": mean_odds(base[0]), "harmful": mean_odds(base[1])},
        "add_to_harmless": {},
        "subtract_from_harmful": {},
        "log_odds": {"add_to_harmless": {}, "subtract_from_harmful": {}},
        "flip": {},
        "ranking": {},
    }
    for name, d in directions.items():
        add, sub, add_lo, sub_lo = [], [], [], []
        for layer in layers:
            vec = {layer: d.vectors[layer]}
            o_add, o_sub = odds(0, vec, cfg.coefficient), odds(1, vec, -cfg.coefficient)
            add.append(rate(o_add))
            sub.append(rate(o_sub))
            add_lo.append(mean_odds(o_add))
            sub_lo.append(mean_odds(o_sub))
            if progress:
                progress(f"inversion {name} layer {layer}: {add[-1]:.2f} / {sub[-1]:.2f}")
        result["add_to_harmless"][name] = add
        result["subtract_from_harmful"][name] = sub
        result["log_odds"]["add_to_harmless"][name] = add_lo
        result["log_odds"]["subtract_from_harmful"][name] = sub_lo
        flips = [((a - base_safe) + (base_harm - b)) / 2 for a, b in zip(add, sub, strict=True)]
        result["flip"][name] = max(flips) if flips else 0.0
        result["ranking"][name] = [layers[k] for k in sorted(range(len(layers)), key=lambda k: -flips[k])]
    # greedy text as a check of the logit decision (unsteered)
    check = [p for q in questions[:1] for p in sets[q][0][:8] + sets[q][1][:8]]
    texts = generate_from_positions(lm, check, 3, cfg.batch_size)
    decided = [_first_word(t) for t in texts]
    logit_yes = (_log_odds(lm, check, ids, None, 0.0, cfg.batch_size) > 0).tolist()
    pairs = [
        (d == "certainly", y) for d, y in zip(decided, logit_yes, strict=True) if d in ("certainly", "no")
    ]
    result["greedy_check"] = {
        "n": len(check),
        "n_answered_with_either_word": len(pairs),
        "agreement": (sum(a == b for a, b in pairs) / len(pairs)) if pairs else None,
        "examples": texts[:4],
    }
    return result


def _first_word(text: str) -> str:
    word = text.strip().split(maxsplit=1)[0] if text.strip() else ""
    return "".join(ch for ch in word.lower() if ch.isalpha())
