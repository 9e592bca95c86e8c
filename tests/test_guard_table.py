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
