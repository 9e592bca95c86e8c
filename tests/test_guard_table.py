from __future__ import annotations

from latentguard.guard.table import COLUMNS, EvalConfig, format_table, guard_data


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
    from latentguard.analysis.jailbreaks import load_templates, split_templates

    cfg = EvalConfig(quick=True, use_shared=False)
    data = guard_data(cfg)
    train_t, test_t = split_templates(load_templates(False), 0.5, cfg.seed)
    assert not {t for _, t in train_t} & {t for _, t in test_t}

    def fixed_text(template: str) -> str:
        # the template text before the instruction slot identifies the template
        return template.split("[INSERT PROMPT HERE]")[0].split("{instruction}")[0][:40]

    train_heads = {fixed_text(t) for _, t in train_t}
    test_heads = {fixed_text(t) for _, t in test_t}
    assert all(len(h) >= 10 for h in train_heads | test_heads)
    assert not train_heads & test_heads
    assert data["train_harmful_wrapped"] and data["train_harmless_wrapped"]
    for p in data["train_harmful_wrapped"] + data["train_harmless_wrapped"]:
        assert any(p.startswith(h) for h in train_heads)
    templated = [
        p for p, k in zip(data["test_jailbreak"], data["test_jailbreak_kind"], strict=True) if k == "template"
    ]
    assert templated
    for p in templated + data["test_wrapped_everyday"]:
        assert any(p.startswith(h) for h in test_heads)
    # the wrapped training prompts carry training instructions, never test ones
    assert all(any(t in p for t in data["train_harmful"]) for p in data["train_harmful_wrapped"])
    assert not any(t in p for t in data["test_harmful"] for p in data["train_harmful_wrapped"])


def test_split_templates_rejects_degenerate_fractions() -> None:
    import pytest

    from latentguard.analysis.jailbreaks import split_templates

    with pytest.raises(ValueError, match="non-empty"):
        split_templates([("a", "x [INSERT PROMPT HERE]")], 0.5)


def test_guard_fit_cli_has_wrap_templates() -> None:
    from latentguard.cli import build_parser

    args = build_parser().parse_args(["guard", "fit", "--out", "g", "--wrap-templates", "160"])
    assert args.wrap_templates == 160
    assert build_parser().parse_args(["guard", "fit", "--out", "g"]).wrap_templates == 0
