"""The guard evaluation's driver: fit the guards, score every row, compare them (``guard_eval.json``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from latentguard.activations import ActivationSet
from latentguard.data import load_shared
from latentguard.experiments.guard_eval.config import BAR_COLUMNS, COLUMNS, EvalConfig
from latentguard.experiments.guard_eval.conversations import conversation_sets, conversation_table
from latentguard.experiments.guard_eval.data import add_gcg, guard_data
from latentguard.experiments.guard_eval.fits import (
    ACTIVATION_GUARDS,
    eval_training_set,
    fit_activation_pair,
    fit_at,
    fit_behaviour_guard,
    refusal_direction,
    training_activations,
    training_counts,
)
from latentguard.experiments.guard_eval.repair import repair_effect
from latentguard.experiments.guard_eval.robustness import normalised, robustness_table, small_data_guard
from latentguard.experiments.guard_eval.rows import (
    ATTACKED_MODEL_REFUSAL,
    ATTACKED_ORIGINAL_GUARD,
    ATTACKED_REFITTED_GUARD,
    LATENT_GUARD,
    MODEL_REFUSAL,
    NORMALISED_GUARD,
    REFUSAL_BEHAVIOUR_GUARD,
    REFUSAL_DIRECTION_GUARD,
    ROW_NAMES,
    SMALL_DATA_GUARD,
    TEXT_CLASSIFIER,
)
from latentguard.experiments.guard_eval.scorers import (
    activation_scorer,
    refusal_scorer,
    score_row,
    self_check_scorer,
    text_scorer,
)
from latentguard.experiments.guard_eval.stats import lookalike_auroc_comparison, paired_comparison
from latentguard.guard.training_set import HarmlessRows, prompts_that_fit
from latentguard.models import LoadedModel


def seed_spread(
    lm: LoadedModel,
    tr_h: ActivationSet,
    tr_s: ActivationSet,
    cfg: EvalConfig,
    data: Mapping[str, Any],
    succeeded: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    harmless: HarmlessRows | None = None,
    sources: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Both activation guards refitted with split seeds ``0..cfg.seeds-1``: every column per seed.

    Args:
        lm: The model.
        tr_h: Harmful training activations.
        tr_s: Harmless training activations.
        cfg: ``seeds``, ``method`` and ``batch_size`` are used.
        data: The test sets.
        succeeded: The jailbreak prompts that succeeded against the model.
        groups: The misbehaving test groups.
        harmless: Options of the harmless rows, the same for every seed
            (:meth:`~latentguard.guard.training_set.TrainingSet.harmless_rows`).
        sources: Source of every training row (for the leave-one-source-out layer choice).

    Returns:
        ``{"seeds": [...], "rows": [{"key", "name", "values_by_seed", "layers_by_seed"}, ...]}``.
    """
    out: dict[str, Any] = {"seeds": list(range(cfg.seeds)), "rows": []}
    per: dict[str, list[list[float | None]]] = {k: [] for k in ACTIVATION_GUARDS}
    chosen: dict[str, list[list[int]]] = {k: [] for k in ACTIVATION_GUARDS}
    for seed in range(cfg.seeds):
        guards = fit_activation_pair(lm, tr_h, tr_s, cfg.method, seed, harmless, sources)
        for key, name in ACTIVATION_GUARDS.items():
            sc = activation_scorer(key, name, lm, guards[key], cfg.batch_size)
            per[key].append(score_row(sc, data, succeeded, groups)["values"])
            chosen[key].append(list(guards[key].layers))
    for key, name in ACTIVATION_GUARDS.items():
        out["rows"].append(
            {"key": key, "name": name, "values_by_seed": per[key], "layers_by_seed": chosen[key]}
        )
    return out


def evaluate_guards(
    lm: LoadedModel,
    judge: Any,
    config: EvalConfig | None = None,
    *,
    attacked: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
    guard_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fit the guards on the training sets and fill the comparison table (and its post-attack rows).

    Args:
        lm: The model.
        judge: Judges answers (``judge(responses, instructions)``), for the model's own refusal.
        config: Sizes; defaults to :class:`~.config.EvalConfig` ``()``.
        attacked: A finetuning-attacked copy of ``lm``: adds the ``after_attack`` rows.
        progress: Called with progress messages.
        guard_out: Where to save the fitted Latent Guard (the table's row), for ``guard check``,
            ``serve`` or ``benchmarks/guard.py --guard``.

    Returns:
        The ``guard_eval.json`` content: ``columns``, ``rows`` (each with its machine ``key``),
        comparisons, the seed spread, repair and the post-attack rows.
    """
    cfg = config or EvalConfig()
    t0 = time.perf_counter()
    data = guard_data(cfg)
    bs = cfg.batch_size
    say = progress or (lambda _m: None)
    ts = eval_training_set(data, cfg, lm)
    say(f"guard eval: {len(ts.harmful)}+{len(ts.harmless)} training prompts")
    add_gcg(lm, data, cfg, say)
    tr_h, tr_s = training_activations(lm, ts, bs)
    rows_s = ts.harmless_rows()
    sources = (ts.sources("harmful"), ts.sources("harmless"))
    guards = fit_activation_pair(lm, tr_h, tr_s, cfg.method, cfg.seed, rows_s, sources)
    say("guards fitted; judging the model's own answers")
    cache: dict[str, tuple[str, bool, float]] = {}
    own = refusal_scorer(lm, judge, cfg, cache)
    # jailbreaks that succeeded against the model (by the judge); misbehaving groups from test sets
    _, refused_jb = own.score(data["test_jailbreak"])
    succeeded = [p for p, r in zip(data["test_jailbreak"], refused_jb, strict=True) if not r]
    kinds = {k: data["test_jailbreak_kind"].count(k) for k in set(data["test_jailbreak_kind"])}
    kinds_ok = {
        k: sum(
            1
            for p, kk, r in zip(data["test_jailbreak"], data["test_jailbreak_kind"], refused_jb, strict=True)
            if kk == k and not r
        )
        for k in kinds
    }
    _, ref_h = own.score(data["test_harmful"])
    _, ref_s = own.score(data["test_everyday"] + data["test_xstest"])
    extra = [*ts.harmless_wrapped, *ts.harmless_suffixed]
    judged = list(dict.fromkeys(data["train_harmless_lookalike"] + extra))
    say(
        f"judging the model's answers to {len(judged)} lookalike and wrapped/suffixed harmless training prompts"
    )
    _, judged_refused = own.score(judged)
    guards[REFUSAL_BEHAVIOUR_GUARD] = fit_behaviour_guard(
        lm,
        tr_h,
        tr_s,
        dict(zip(judged, map(bool, judged_refused), strict=True)),
        cfg.method,
        cfg.seed,
        rows_s,
        sources,
    )
    groups = {
        "accepted_harmful": [p for p, r in zip(data["test_harmful"], ref_h, strict=True) if not r],
        "refused_harmless": [
            p for p, r in zip(data["test_everyday"] + data["test_xstest"], ref_s, strict=True) if r
        ],
    }
    scorers = [
        activation_scorer(key, ROW_NAMES[key], lm, guards[key], bs)
        for key in (LATENT_GUARD, REFUSAL_DIRECTION_GUARD, REFUSAL_BEHAVIOUR_GUARD)
    ]
    scorers += [own, self_check_scorer(lm, bs)]
    text = text_scorer(ts.prompts("harmful"), ts.prompts("harmless"))
    if text is not None:
        scorers.append(text)
    small = small_data_guard(lm, cfg.seed) if cfg.small_data and data["source"] == "shared" else None
    if small is not None:
        scorers.insert(1, activation_scorer(SMALL_DATA_GUARD, ROW_NAMES[SMALL_DATA_GUARD], lm, small, bs))
    rows = []
    for sc in scorers:
        say(f"scoring {sc.name}")
        rows.append(score_row(sc, data, succeeded, groups))
    counts = {k: len(v) for k, v in data.items() if isinstance(v, list)} | training_counts(ts)
    result: dict[str, Any] = {
        "columns": list(COLUMNS),
        "rows": rows,
        "config": asdict(cfg),
        "data": counts | {"source": data["source"]},
        "jailbreaks": {"n": kinds, "succeeded": kinds_ok},
        "groups": {k: len(v) for k, v in groups.items()},
        "guard": guards[LATENT_GUARD].summary(),
        "behaviour_labels": guards[REFUSAL_BEHAVIOUR_GUARD].meta.get("refused"),
    }
    if small is not None:
        result["small_data_guard"] = small.summary()
    if cfg.n_robustness > 0:
        n_rob = max(4, int(cfg.n_robustness * (0.25 if cfg.quick else 1.0)))
        latent = scorers[0]
        rob = [latent, normalised(latent, NORMALISED_GUARD, ROW_NAMES[NORMALISED_GUARD])]
        rob += [sc for sc in scorers if sc.key in (TEXT_CLASSIFIER, MODEL_REFUSAL)]
        result["robustness"] = robustness_table(
            rob,
            data["test_harmful"][:n_rob],
            data["test_everyday"][:n_rob],
            progress=say,
            keep=lambda ps: prompts_that_fit(lm, ps),
        )
    if cfg.n_conversations > 0:
        n_conv = max(4, int(cfg.n_conversations * (0.25 if cfg.quick else 1.0)))
        later, follow = conversation_sets(
            data["test_harmful"][:n_conv], data["test_everyday"][:n_conv], cfg.seed
        )
        acts = [sc for sc in scorers if sc.key in (LATENT_GUARD, REFUSAL_DIRECTION_GUARD)]
        result["conversations"] = conversation_table(acts, later, follow)
    catqa = load_shared("harmful_catqa") if cfg.categories and data["source"] == "shared" else None
    if catqa:
        from latentguard.guard.categories import fit_categories

        say("per-category head on CatQA (held-out accuracy per category)")
        g = guards[LATENT_GUARD]
        head = fit_categories(
            lm,
            [(r.instruction, r.category) for r in catqa if r.category],
            data["train_harmless"][:500],
            position=g.position,
            layer=g.layers[len(g.layers) // 2],
            batch_size=bs,
            seed=cfg.seed,
        )
        result["categories"] = {"layer": head.layer, **head.metrics}
    result["comparison"] = paired_comparison(result, ROW_NAMES[LATENT_GUARD], BAR_COLUMNS)
    result["xstest_auroc_comparison"] = lookalike_auroc_comparison(result, ROW_NAMES[LATENT_GUARD])
    if guard_out is not None:
        result["guard_path"] = str(guards[LATENT_GUARD].save(guard_out))
    if cfg.seeds > 1:
        say(f"refitting both activation guards with {cfg.seeds} split seeds")
        result["seed_spread"] = seed_spread(lm, tr_h, tr_s, cfg, data, succeeded, groups, rows_s, sources)
    if cfg.repair:
        say("measuring over-refusal repair")
        refusal = refusal_direction(tr_h, tr_s, lm)
        result["repair"] = repair_effect(
            lm,
            guards[LATENT_GUARD],
            judge,
            refusal,
            {
                "XSTest-style (test)": data["test_xstest"],
                "everyday (test)": data["test_everyday"],
                "harmful (test)": data["test_harmful"],
            },
            max_new_tokens=cfg.max_new_tokens,
            batch_size=bs,
        )
        result["repair_direction"] = refusal.meta
    if attacked is not None:
        say("finetuning attack: applying the original guard to the attacked model, and refitting")
        att_cache: dict[str, tuple[str, bool, float]] = {}
        a_h, a_s = training_activations(attacked, ts, bs)
        refit = fit_at(attacked, a_h, a_s, "t_inst", cfg.method, cfg.seed, harmless=rows_s, sources=sources)
        att_scorers = [
            activation_scorer(
                ATTACKED_ORIGINAL_GUARD,
                ROW_NAMES[ATTACKED_ORIGINAL_GUARD],
                lm,
                guards[LATENT_GUARD],
                bs,
                attacked,
            ),
            activation_scorer(
                ATTACKED_REFITTED_GUARD, ROW_NAMES[ATTACKED_REFITTED_GUARD], attacked, refit, bs
            ),
            refusal_scorer(attacked, judge, cfg, att_cache, key=ATTACKED_MODEL_REFUSAL),
        ]
        att_rows = [score_row(sc, data, succeeded, groups) for sc in att_scorers]
        result["after_attack"] = {"columns": list(COLUMNS), "rows": att_rows}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
