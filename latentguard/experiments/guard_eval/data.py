"""The guard evaluation's prompt sets: training prompts and unseen test sets (plain and jailbreak).

:func:`guard_data` returns the plain training prompts (the activation guards' full training set,
wrapped and suffixed prompts included, is built from them by :func:`.fits.eval_training_set`) and the
test sets; :func:`add_gcg` appends GCG jailbreaks optimised against the model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from latentguard.data import Example, builtin, load_shared, without
from latentguard.experiments.guard_eval.config import EvalConfig
from latentguard.models import LoadedModel

#: Shared harmful sets the guards train on (HarmBench test is the harmful test set).
SHARED_HARMFUL_TRAIN = (
    "harmful_advbench",
    "harmful_catqa",
    "harmful_malicious_instruct",
    "harmful_tdc2023",
    "harmful_harmbench_val",
)


def _take(rows: Sequence[Example] | None, n: int, rng: random.Random) -> list[str]:
    items = [r.instruction for r in rows or []]
    rng.shuffle(items)
    return items[:n]


def guard_data(cfg: EvalConfig) -> dict[str, Any]:
    """Training and unseen test sets for the guard evaluation.

    Args:
        cfg: Sizes and sources.

    Returns:
        A dict of prompt lists: ``train_harmful``, ``train_harmless`` (the plain harmless training
        prompts, XSTest's training half included), ``train_harmless_lookalike`` (the harmless ones that
        look unsafe: XSTest's training half and, from shared data, the built-in lookalikes, which
        :func:`.fits.eval_training_set` appends to the harmless training prompts),
        ``train_harmful_sources`` and ``train_harmless_sources`` (the data set of each training prompt,
        with shared data), ``test_harmful``,
        ``test_everyday``, ``test_xstest``, ``test_wrapped_everyday``, ``test_jailbreak`` and
        ``test_jailbreak_kind`` (one kind per jailbreak prompt); and ``source`` (``"shared"`` or
        ``"builtin"``).
    """
    rng = random.Random(cfg.seed)
    scale = cfg.train_scale
    n_tr_h = int(cfg.n_train_harmful * scale) if cfg.n_train_harmful is not None else None
    n_tr_s = int(cfg.n_train_harmless * scale)
    n_test = max(12, int(cfg.n_test * (0.25 if cfg.quick else 1.0)))
    data: dict[str, Any]
    if cfg.use_shared and load_shared("harmful_harmbench_test") is not None:
        train_h: list[str] = []
        source_of: dict[str, str] = {}
        for name in SHARED_HARMFUL_TRAIN:
            for r in load_shared(name) or []:
                train_h.append(r.instruction)
                source_of.setdefault(r.instruction, name)
        rng.shuffle(train_h)
        # TDC 2023 shares 30 behaviours with HarmBench test: drop every test prompt (and repeats) from
        # training, after the shuffle so the samples drawn below stay the same
        train_h = without(train_h, [r.instruction for r in load_shared("harmful_harmbench_test") or []])
        xs = _take(load_shared("xstest_safe"), 10**6, rng)
        lookalikes: list[str] = [r.instruction for r in builtin("xstest_like")]  # no rng draw
        half = len(xs) // 2
        train_s = _take(load_shared("harmless_alpaca_train"), n_tr_s - half, rng) + xs[:half]
        if n_tr_h is None and cfg.quick:
            n_tr_h = int(len(train_h) * scale)
        data = {
            "train_harmful": train_h[:n_tr_h],
            "train_harmful_sources": [source_of[p] for p in train_h[:n_tr_h]],
            "train_harmless": train_s,
            "train_harmless_sources": ["harmless_alpaca_train"] * (len(train_s) - len(xs[:half]))
            + ["xstest_safe"] * len(xs[:half]),
            "test_harmful": _take(load_shared("harmful_harmbench_test"), n_test, rng),
            "test_everyday": _take(load_shared("harmless_alpaca_val"), n_test, rng),
            "test_xstest": xs[half:][:n_test],
            "train_harmless_lookalike": xs[:half] + lookalikes,
            "source": "shared",
        }
    else:
        harmful = _take(builtin("harmful"), 10**6, rng)
        safe = _take(builtin("harmless"), 10**6, rng)
        xs = _take(builtin("xstest_like"), 10**6, rng)
        cut_h, cut_s, cut_x = int(len(harmful) * 0.6), int(len(safe) * 0.6), len(xs) // 2
        data = {
            "train_harmful": harmful[:cut_h],
            "train_harmless": safe[:cut_s] + xs[:cut_x],
            "test_harmful": harmful[cut_h:][:n_test],
            "test_everyday": safe[cut_s:][:n_test],
            "test_xstest": xs[cut_x:][:n_test],
            "train_harmless_lookalike": xs[:cut_x],
            "source": "builtin",
        }
    from latentguard.attacks import (
        load_templates,
        persuasion_prompts,
        split_templates,
        template_prompts,
    )

    _, test_templates = split_templates(load_templates(cfg.use_shared), 0.5, cfg.seed)
    base = data["test_harmful"][: max(6, n_test // (4 if cfg.quick else 3))]
    jb = template_prompts(base, max_templates=cfg.n_templates, seed=cfg.seed, templates=test_templates)
    everyday = data["test_everyday"][: len(base)]
    data["test_wrapped_everyday"] = [
        p.prompt for p in template_prompts(everyday, max_templates=1, seed=cfg.seed, templates=test_templates)
    ]
    jb += persuasion_prompts(base[: max(2, len(base) // 2)])
    data["test_jailbreak"] = [p.prompt for p in jb]
    data["test_jailbreak_kind"] = [p.kind for p in jb]
    return data


def add_gcg(lm: LoadedModel, data: dict[str, Any], cfg: EvalConfig, say: Callable[[str], None]) -> None:
    """Append GCG-suffixed test prompts (optimised against ``lm``, cached) to the jailbreak test set.

    Args:
        lm: The model attacked.
        data: The sets of :func:`guard_data`; ``test_jailbreak`` and ``test_jailbreak_kind`` are extended.
        cfg: ``n_gcg`` prompts (1 in quick mode), ``gcg_steps`` steps each (at most 4 in quick mode).
        say: Progress messages.
    """
    n = min(cfg.n_gcg, 1) if cfg.quick else cfg.n_gcg
    if n <= 0:
        return
    from latentguard.attacks import GCGConfig, gcg_prompts

    steps = min(cfg.gcg_steps, 4) if cfg.quick else cfg.gcg_steps
    gcfg = GCGConfig(steps=steps, search_width=16 if cfg.quick else 48, seed=cfg.seed)
    say(f"GCG: optimising adversarial suffixes for {n} harmful test prompts ({steps} steps each)")
    jb = gcg_prompts(lm, data["test_harmful"][:n], gcfg, cache=True)
    data["test_jailbreak"] = data["test_jailbreak"] + [p.prompt for p in jb]
    data["test_jailbreak_kind"] = data["test_jailbreak_kind"] + [p.kind for p in jb]
