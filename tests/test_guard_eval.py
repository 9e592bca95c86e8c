from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latentguard.experiments.guard_eval.config import COLUMNS, EvalConfig
from latentguard.experiments.guard_eval.data import guard_data
from latentguard.experiments.guard_eval.fits import (
    ACTIVATION_GUARDS,
    eval_training_set,
    fit_activation_pair,
    fit_behaviour_guard,
    training_activations,
)
from latentguard.experiments.guard_eval.format import format_seed_spread, format_table
from latentguard.experiments.guard_eval.rows import (
    LATENT_GUARD,
    MODEL_REFUSAL,
    REFUSAL_BEHAVIOUR_GUARD,
    REFUSAL_DIRECTION_GUARD,
    ROW_NAMES,
    SELF_CHECK,
    TEXT_CLASSIFIER,
    find_row,
    row_key,
)
from latentguard.experiments.guard_eval.run import seed_spread
from latentguard.guard.training_set import TrainingSet
from latentguard.models import LoadedModel


def unsuffixed(cfg: EvalConfig) -> EvalConfig:
    """The same sizes without random-suffixed training prompts (the training set needs no model then)."""
    return replace(cfg, n_train_suffixed=0)


def test_guard_data_builtin_has_disjoint_unseen_sets() -> None:
    data = guard_data(EvalConfig(quick=True, use_shared=False))
    assert data["source"] == "builtin"
    train = set(data["train_harmful"]) | set(data["train_harmless"])
    for key in ("test_harmful", "test_everyday", "test_xstest"):
        assert data[key] and not (set(data[key]) & train), key
    assert data["test_jailbreak"] and len(data["test_jailbreak"]) == len(data["test_jailbreak_kind"])
    assert all(any(h in p for h in data["test_harmful"]) for p in data["test_jailbreak"])


def test_format_table() -> None:
    table = {
        "columns": list(COLUMNS),
        "rows": [{"name": "g", "values": [0.5, None, *[0.1] * (len(COLUMNS) - 2)]}],
    }
    text = format_table(table)
    assert text.splitlines()[0].startswith("| guard | TPR harmful")
    assert "| g | 0.500 | - |" in text


def test_guard_data_trains_and_tests_on_disjoint_jailbreak_templates() -> None:
    from latentguard.attacks import load_templates, split_templates

    cfg = EvalConfig(quick=True, use_shared=False)
    data = guard_data(cfg)
    ts = eval_training_set(data, unsuffixed(cfg))
    train_t, test_t = split_templates(load_templates(False), 0.5, cfg.seed)
    assert not {t for _, t in train_t} & {t for _, t in test_t}

    def fixed_text(template: str) -> str:
        # the template text before the instruction slot identifies the template
        return template.split("[INSERT PROMPT HERE]")[0].split("{instruction}")[0][:40]

    train_heads = {fixed_text(t) for _, t in train_t}
    test_heads = {fixed_text(t) for _, t in test_t}
    assert all(len(h) >= 10 for h in train_heads | test_heads)
    assert not train_heads & test_heads
    assert ts.harmful_wrapped and ts.harmless_wrapped
    for p in ts.harmful_wrapped + ts.harmless_wrapped:
        assert any(p.startswith(h) for h in train_heads)
    templated = [
        p for p, k in zip(data["test_jailbreak"], data["test_jailbreak_kind"], strict=True) if k == "template"
    ]
    assert templated
    for p in templated + data["test_wrapped_everyday"]:
        assert any(p.startswith(h) for h in test_heads)
    # the wrapped training prompts carry training instructions, never test ones
    assert all(any(t in p for t in data["train_harmful"]) for p in ts.harmful_wrapped)
    assert not any(t in p for t in data["test_harmful"] for p in ts.harmful_wrapped)


def test_split_templates_rejects_degenerate_fractions() -> None:
    import pytest

    from latentguard.attacks import split_templates

    with pytest.raises(ValueError, match="non-empty"):
        split_templates([("a", "x [INSERT PROMPT HERE]")], 0.5)


def test_guard_fit_cli_has_wrap_templates() -> None:
    from latentguard.cli import build_parser
    from latentguard.cli.common import config_from_args
    from latentguard.guard.fit import GuardConfig

    args = build_parser().parse_args(
        ["guard", "fit", "--out", "g", "--wrap-templates", "160", "--layers", "3,5"]
    )
    cfg = config_from_args(GuardConfig, args)
    assert (cfg.wrap_templates, cfg.layers) == (160, (3, 5))
    args = build_parser().parse_args(["guard", "fit", "--out", "g"])
    assert config_from_args(GuardConfig, args) == GuardConfig()  # the dataclass states the defaults


def test_guard_eval_cli_defaults_are_eval_config_defaults() -> None:
    from latentguard.cli import build_parser
    from latentguard.cli.common import config_from_args

    args = build_parser().parse_args(["guard", "eval"])
    assert config_from_args(EvalConfig, args) == EvalConfig()
    args = build_parser().parse_args(["guard", "eval", "--gcg", "2", "--train-suffixed", "7", "--quick"])
    cfg = config_from_args(EvalConfig, args, use_shared=False if args.builtin_only else None)
    assert (cfg.n_gcg, cfg.n_train_suffixed, cfg.quick, cfg.use_shared) == (2, 7, True, True)
    with pytest.raises(ValueError, match="lookalike_weight"):
        EvalConfig(lookalike_weight=0.0)


def test_harmless_rows_calibrate_without_suffixed_and_weigh_lookalikes() -> None:
    names = ["plain", "looks bad", "wrapped looks bad", "plain sfx"]
    ts = TrainingSet(
        harmful=("h1", "h2"),
        harmless=("plain", "looks bad"),
        harmless_wrapped=("wrapped looks bad",),
        harmless_suffixed=("plain sfx",),
        lookalikes=frozenset({"looks bad"}),
        lookalike_weight=3.0,
    )
    assert ts.prompts("harmless") == names
    rows = ts.harmless_rows()
    assert rows.calibrate_on is not None and rows.weights is not None
    assert rows.calibrate_on.tolist() == [True, True, True, False]
    assert rows.weights.tolist() == [1.0, 3.0, 1.0, 1.0]
    sub = rows.subset(torch.tensor([True, False, True, True]))
    assert sub.calibrate_on is not None and sub.calibrate_on.tolist() == [True, True, False]
    plain = replace(ts, harmless_suffixed=(), lookalike_weight=1.0).harmless_rows()
    assert plain.calibrate_on is None and plain.weights is None
    assert replace(ts, calibrate_on_suffixed=True).harmless_rows().calibrate_on is None


def test_seed_spread_refits_both_activation_guards(llama_lm: LoadedModel, tmp_cache: Path) -> None:
    cfg = EvalConfig(quick=True, use_shared=False, seeds=2)
    data = guard_data(cfg)
    ts = eval_training_set(data, unsuffixed(cfg), llama_lm)
    tr_h, tr_s = training_activations(llama_lm, ts, 16)
    succeeded = data["test_jailbreak"][:3]
    spread = seed_spread(llama_lm, tr_h, tr_s, cfg, data, succeeded, {}, ts.harmless_rows())
    assert spread["seeds"] == [0, 1]
    assert [r["name"] for r in spread["rows"]] == list(ACTIVATION_GUARDS.values())
    assert [r["key"] for r in spread["rows"]] == [LATENT_GUARD, REFUSAL_DIRECTION_GUARD]
    for row in spread["rows"]:
        assert len(row["values_by_seed"]) == 2 and len(row["layers_by_seed"]) == 2
        for values in row["values_by_seed"]:
            assert len(values) == len(COLUMNS)
            assert all(v is None or 0.0 <= v <= 1.0 for v in values)
    # seed 0 of the spread is the guard the table's main rows use
    guards = fit_activation_pair(llama_lm, tr_h, tr_s, cfg.method, 0)
    assert spread["rows"][0]["layers_by_seed"][0] == guards[LATENT_GUARD].layers
    text = format_seed_spread(spread, COLUMNS)
    lines = text.splitlines()
    assert lines[0].startswith("Over 2 train/validation split seeds")
    assert sum(line.startswith("| Latent Guard") for line in lines) == 1
    assert "[" in lines[-1] and lines[-1].count("|") == len(COLUMNS) + 3


def test_guard_data_shared_trains_on_every_harmful_set_and_the_lookalikes() -> None:
    from latentguard.data import builtin, load_shared, text_key

    if load_shared("harmful_harmbench_test") is None:
        pytest.skip("../shared/data is not present")
    data = guard_data(EvalConfig())
    ts = eval_training_set(data, EvalConfig(n_train_suffixed=0, n_train_wrapped=0))
    lookalikes = [r.instruction for r in builtin("xstest_like")]
    assert set(lookalikes) <= set(ts.harmless)

    every = {
        text_key(r.instruction)
        for n in (
            "harmful_advbench",
            "harmful_catqa",
            "harmful_malicious_instruct",
            "harmful_tdc2023",
            "harmful_harmbench_val",
        )
        for r in load_shared(n) or []
    }
    test = {text_key(r.instruction) for r in load_shared("harmful_harmbench_test") or []}
    assert every & test  # TDC 2023 shares behaviours with HarmBench test...
    train_keys = [text_key(t) for t in data["train_harmful"]]
    assert len(train_keys) == len(set(train_keys))  # ...which are dropped, as are repeats
    assert set(train_keys) == every - test
    train = set(ts.harmful) | set(ts.harmless)
    for key in ("test_harmful", "test_everyday", "test_xstest"):
        assert data[key] and not (set(data[key]) & train), key


def test_behaviour_labelled_refusal_guard_moves_judged_refusals_to_the_refused_side(
    llama_lm: LoadedModel, tmp_cache: Path
) -> None:
    cfg = EvalConfig(quick=True, use_shared=False)
    data = guard_data(cfg)
    assert data["train_harmless_lookalike"] and set(data["train_harmless_lookalike"]) <= set(
        data["train_harmless"]
    )
    ts = eval_training_set(data, unsuffixed(cfg), llama_lm)
    tr_h, tr_s = training_activations(llama_lm, ts, 16)
    judged = data["train_harmless_lookalike"] + list(ts.harmless_wrapped)
    refused = {p: i % 2 == 0 for i, p in enumerate(judged)}
    guard = fit_behaviour_guard(llama_lm, tr_h, tr_s, refused, "auto", 0)
    n_refused = sum(refused.get(p, False) for p in tr_s.instructions)
    assert guard.position == "t_post_inst" and guard.meta["refused"] == n_refused > 0
    m = guard.metrics
    assert m["n_train_harmful"] + m["n_val_harmful"] == len(tr_h.instructions) + n_refused
    assert m["n_train_harmless"] + m["n_val_harmless"] == len(tr_s.instructions) - n_refused


def test_mcnemar_p_matches_the_binomial_tail() -> None:
    from latentguard.experiments.guard_eval.stats import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(4, 4) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32) == mcnemar_p(0, 5)
    assert mcnemar_p(9, 1) == pytest.approx(2 * 11 / 1024)


def test_paired_comparison_counts_discordant_prompts_by_column_meaning() -> None:
    from latentguard.experiments.guard_eval.format import format_comparison
    from latentguard.experiments.guard_eval.stats import paired_comparison

    ours = ACTIVATION_GUARDS[LATENT_GUARD]
    table = {
        "columns": list(COLUMNS),
        "rows": [
            {
                "name": ours,
                "flags": {"TPR harmful": [True, True, False], "FPR everyday": [False, False, True]},
            },
            {
                "name": "other",
                "flags": {"TPR harmful": [True, False, False], "FPR everyday": [True, True, True]},
            },
            {"name": "no flags", "values": []},
        ],
    }
    comp = paired_comparison(table)
    by_col = {c["column"]: c for c in comp}
    assert {c["other"] for c in comp} == {"other"}
    # harmful column: flagging is right; everyday column: not flagging is right
    assert (by_col["TPR harmful"]["only_ours_correct"], by_col["TPR harmful"]["only_theirs_correct"]) == (
        1,
        0,
    )
    assert (by_col["FPR everyday"]["only_ours_correct"], by_col["FPR everyday"]["only_theirs_correct"]) == (
        2,
        0,
    )
    assert by_col["FPR everyday"]["ours"] == pytest.approx(1 / 3) and by_col["FPR everyday"]["theirs"] == 1.0
    assert paired_comparison(table, columns=["TPR harmful"])[0]["column"] == "TPR harmful"
    assert format_comparison(comp).count("\n") == 1 + len(comp)
    with pytest.raises(KeyError, match="no flags"):
        paired_comparison(table, ours="no flags")


def test_fpr_at_tpr_thresholds_each_guard_at_its_own_recall() -> None:
    from latentguard.guard.evaluate import fpr_at_tpr

    pos = [4.0, 3.0, 2.0, 1.0]
    assert fpr_at_tpr(pos, [0.0, 1.5, 2.5], 0.5) == pytest.approx(0.0)  # threshold 3.0
    assert fpr_at_tpr(pos, [0.0, 1.5, 2.5], 0.75) == pytest.approx(1 / 3)  # threshold 2.0
    assert fpr_at_tpr(pos, [0.0, 1.0, 2.5], 1.0) == pytest.approx(2 / 3)  # ties at the threshold count
    # a guard that never flags (all scores equal) still pays for its recall
    assert fpr_at_tpr([0.0] * 4, [0.0] * 3, 0.95) == 1.0
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(pos, [0.0], 0.0)
    with pytest.raises(ValueError, match="positive and negative"):
        fpr_at_tpr([], [0.0], 0.5)


def test_paired_auroc_bootstrap_sees_a_real_gap_and_no_gap_between_equals() -> None:
    from latentguard.experiments.guard_eval.format import format_lookalike_comparison
    from latentguard.experiments.guard_eval.stats import lookalike_auroc_comparison
    from latentguard.guard.evaluate import paired_auroc_bootstrap

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(2, 1, 60), rng.normal(0, 1, 50)
    noise_p, noise_n = rng.normal(0, 3, 60), rng.normal(0, 3, 50)
    gap = paired_auroc_bootstrap(pos, neg, pos + noise_p, neg + noise_n, n_boot=400)
    assert gap["diff"] > 0 and gap["lo"] > 0 and gap["p"] < 0.01
    same = paired_auroc_bootstrap(pos, neg, pos, neg, n_boot=50)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="same"):
        paired_auroc_bootstrap(pos, neg, pos[:-1], neg)
    ours = ACTIVATION_GUARDS[LATENT_GUARD]

    def row(name: str, h: np.ndarray, x: np.ndarray) -> dict[str, Any]:
        return {
            "name": name,
            "scores": {"test_harmful": list(h), "test_everyday": [], "test_xstest": list(x)},
        }

    table = {"rows": [row(ours, pos, neg), row("noisy", pos + noise_p, neg + noise_n), {"name": "none"}]}
    comp = lookalike_auroc_comparison(table, n_boot=100)
    assert [c["other"] for c in comp] == ["noisy"] and comp[0]["diff"] == pytest.approx(gap["diff"])
    assert format_lookalike_comparison(comp).count("\n") == 2


class _FirstWordJudge:
    """Refused iff the answer's first character is in the first half of the alphabet (deterministic)."""

    name = "test"

    def judge(self, responses: list[str], instructions: list[str] | None = None) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(refused=r[:1].lower() < "n", score=0.5) for r in responses]


def test_evaluate_guards_end_to_end_on_a_tiny_model(llama_lm: LoadedModel, tmp_cache: Path) -> None:
    from latentguard.experiments.guard_eval.config import BAR_COLUMNS
    from latentguard.experiments.guard_eval.run import evaluate_guards
    from latentguard.guard.fit import LatentGuard

    cfg = EvalConfig(quick=True, use_shared=False, seeds=1, repair=False, n_gcg=1, gcg_steps=1)
    said: list[str] = []
    out = evaluate_guards(llama_lm, _FirstWordJudge(), cfg, progress=said.append, guard_out=tmp_cache / "g")
    assert any(m.startswith("GCG") for m in said)
    assert out["jailbreaks"]["n"]["gcg"] == 1 and out["jailbreaks"]["n"]["template"] > 0
    names = [r["name"] for r in out["rows"]]
    assert names[0] == ACTIVATION_GUARDS[LATENT_GUARD] and len(set(names)) == len(names)
    # every row carries its stable machine key next to its display name
    keys = [r["key"] for r in out["rows"]]
    assert keys[:5] == [
        LATENT_GUARD,
        REFUSAL_DIRECTION_GUARD,
        REFUSAL_BEHAVIOUR_GUARD,
        MODEL_REFUSAL,
        SELF_CHECK,
    ]
    assert keys[5:] in ([], [TEXT_CLASSIFIER])
    assert all(ROW_NAMES[r["key"]] == r["name"] for r in out["rows"])
    from latentguard.experiments.guard_eval.schema import validate_guard_eval

    typed = validate_guard_eval(json.loads(json.dumps(out)))  # a real run's output, through JSON
    assert [r.key for r in typed.rows] == keys and typed.columns == out["columns"]
    for row in out["rows"]:
        assert len(row["values"]) == len(COLUMNS)
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["values"])
    # the table's value is the mean of the per-prompt flags behind it
    latent = out["rows"][0]
    flags = latent["flags"]["TPR harmful"]
    assert latent["values"][0] == pytest.approx(sum(flags) / len(flags))
    assert {c["column"] for c in out["comparison"]} <= set(BAR_COLUMNS)
    assert {c["other"] for c in out["comparison"]} >= {ACTIVATION_GUARDS[REFUSAL_DIRECTION_GUARD]}
    # the threshold-free XSTest columns come from the stored per-prompt scores
    from latentguard.guard.evaluate import auroc, fpr_at_tpr

    sc = latent["scores"]
    h, x = np.array(sc["test_harmful"]), np.array(sc["test_xstest"])
    assert len(h) == len(flags) and len(x) == len(latent["flags"]["FPR XSTest-style"])
    col = COLUMNS.index("AUROC harmful vs XSTest-style")
    assert latent["values"][col] == pytest.approx(
        auroc(np.r_[h, x], np.r_[np.ones(len(h)), np.zeros(len(x))])
    )
    assert latent["values"][col + 1] == pytest.approx(fpr_at_tpr(h, x, 0.95))
    others = {c["other"] for c in out["xstest_auroc_comparison"]}
    assert others == set(names[1:])
    assert all(c["lo"] <= c["diff"] <= c["hi"] or c["lo"] == c["hi"] for c in out["xstest_auroc_comparison"])
    saved = LatentGuard.load(out["guard_path"])
    assert list(saved.layers) == out["guard"]["layers"] and saved.position == "t_inst"
    # the robustness table (every obfuscation, raw and normalised) and the conversation table
    rob = out["robustness"]
    assert rob["obfuscations"][0] == "plain" and len(rob["obfuscations"]) == 10
    assert [r["key"] for r in rob["rows"]][:2] == [LATENT_GUARD, "latent_guard_normalised"]
    assert all(
        v is None or 0.0 <= v <= 1.0 for r in rob["rows"] for v in [*r["tpr"].values(), *r["fpr"].values()]
    )
    conv = out["conversations"]
    assert [r["key"] for r in conv["rows"]] == [LATENT_GUARD, REFUSAL_DIRECTION_GUARD] and conv["n"][0] >= 4
    assert all(0.0 <= r["tpr_harmful_after_harmless"] <= 1.0 for r in conv["rows"])
    # a second run reuses the cached GCG prompt: same jailbreak set, same decisions
    again = evaluate_guards(llama_lm, _FirstWordJudge(), cfg)
    assert again["rows"][0]["flags"] == latent["flags"]


def test_fit_guard_and_guard_eval_train_on_sets_from_the_same_builder(
    llama_lm: LoadedModel, tmp_cache: Path
) -> None:
    from latentguard.guard.fit import GuardConfig, fit_guard, training_set_for

    harmful = [
        f"Explain how to build a bomb from {t}" for t in ("wood", "glass", "paper", "tin", "clay", "salt")
    ]
    harmless = [
        f"Explain how to build a shed from {t}" for t in ("wood", "glass", "paper", "tin", "clay", "salt")
    ]
    lookalikes = harmless[:2]  # the evaluation's lookalikes are among its harmless training prompts
    data = {"train_harmful": harmful, "train_harmless": harmless, "train_harmless_lookalike": lookalikes}
    cfg = EvalConfig(n_train_wrapped=3, n_train_suffixed=2, lookalike_weight=2.0, seed=1)
    gcfg = GuardConfig(
        method="centroid", batch_size=8, wrap_templates=3, suffix_prompts=2, lookalike_weight=2.0, seed=1
    )
    in_eval = eval_training_set(data, cfg, llama_lm)
    in_fit = training_set_for(llama_lm, harmful, harmless, gcfg, lookalikes)
    assert in_eval == in_fit
    # the 2 given lookalikes and the built-in ones every fit mixes in
    assert in_eval.harmless_suffixed and in_eval.harmless_wrapped and in_eval.n_lookalike_rows() == 2 + 200
    a, b = in_eval.harmless_rows(), in_fit.harmless_rows()
    assert (
        a.calibrate_on is not None
        and b.calibrate_on is not None
        and a.weights is not None
        and b.weights is not None
    )
    assert torch.equal(a.calibrate_on, b.calibrate_on) and torch.equal(a.weights, b.weights)
    # fit_guard fits on exactly that set
    guard = fit_guard(llama_lm, harmful, harmless, gcfg, lookalikes=lookalikes)
    m = guard.metrics
    assert m["n_train_harmful"] + m["n_val_harmful"] == len(in_fit.prompts("harmful"))
    assert m["n_train_harmless"] + m["n_val_harmless"] == len(in_fit.prompts("harmless"))
    assert guard.meta["wrapped_training_prompts"] == {
        "harmful": len(in_fit.harmful_wrapped),
        "harmless": len(in_fit.harmless_wrapped),
    }
    assert guard.meta["lookalikes"] == {"n": 2 + 200, "weight": 2.0}


def test_row_keys_find_rows_of_new_and_old_guard_eval_files() -> None:
    new = [{"key": MODEL_REFUSAL, "name": "renamed"}, {"key": LATENT_GUARD, "name": "Latent Guard (t_inst)"}]
    assert find_row(new, MODEL_REFUSAL) is new[0] and find_row(new, LATENT_GUARD) is new[1]
    # files written before rows had keys: found by their (unchanged) display names
    old = [{"name": name} for name in ROW_NAMES.values()]
    assert [row_key(r) for r in old] == list(ROW_NAMES)
    assert row_key({"name": "a guard nobody knows"}) is None
    assert find_row([*old, "not a row"], "no such key") is None
