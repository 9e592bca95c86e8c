"""Tests for latentguard.data: the built-in sets and the loaders."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from latentguard import data
from latentguard.data import (
    HARM_CATEGORIES,
    DataError,
    Example,
    builtin,
    builtin_rows,
    inversion_questions,
    load_any,
    load_csv,
    load_hf,
    load_jsonl,
    load_shared,
    shared_data_dir,
    wrap_template,
)

BUILTIN_DIR = Path(data.__file__).parent / "builtin"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- built-in sets


def test_harm_categories() -> None:
    assert len(HARM_CATEGORIES) == 11
    assert HARM_CATEGORIES[0] == "Illegal Activity"
    assert HARM_CATEGORIES[-1] == "Tailored Financial Advice"


def test_builtin_harmful_counts_and_categories() -> None:
    harmful = builtin("harmful")
    assert len(harmful) == 220
    assert all(isinstance(e, Example) for e in harmful)
    counts = Counter(e.category for e in harmful)
    assert set(counts) == set(HARM_CATEGORIES)
    assert all(n == 20 for n in counts.values())
    # file order follows HARM_CATEGORIES
    assert [harmful[i * 20].category for i in range(11)] == list(HARM_CATEGORIES)


@pytest.mark.parametrize(("name", "count"), [("harmful", 220), ("harmless", 120), ("xstest_like", 200)])
def test_builtin_sets_distinct_and_clean(name: str, count: int) -> None:
    examples = builtin(name)
    assert len(examples) == count
    texts = [e.instruction for e in examples]
    assert len({t.strip().lower() for t in texts}) == count
    assert all(t == t.strip() and t and "\n" not in t for t in texts)


def test_builtin_sets_do_not_overlap() -> None:
    sets = {
        name: {e.instruction.lower() for e in builtin(name)}
        for name in ("harmful", "harmless", "xstest_like")
    }
    assert not sets["harmful"] & sets["harmless"]
    assert not sets["harmful"] & sets["xstest_like"]
    assert not sets["harmless"] & sets["xstest_like"]


def test_builtin_harmless_has_no_category() -> None:
    assert all(e.category is None and e.meta == {} for e in builtin("harmless"))


def test_builtin_xstest_like_types() -> None:
    examples = builtin("xstest_like")
    counts = Counter(e.meta["type"] for e in examples)
    assert counts == {
        **{t: 32 for t in ("homonyms", "figurative", "safe_targets", "history")},
        "fiction": 12,
        **{t: 20 for t in ("safe_contexts", "definitions", "privacy_public")},
    }


def test_builtin_rejects_other_names() -> None:
    with pytest.raises(ValueError, match="builtin_rows"):
        builtin("refusals")
    with pytest.raises(ValueError):
        builtin_rows("no_such_set")
    with pytest.raises(ValueError):
        builtin_rows("../harmful")


def test_jailbreak_templates() -> None:
    rows = builtin_rows("jailbreak_templates")
    assert len(rows) == 10
    assert [r["id"] for r in rows] == [f"builtin-{i}" for i in range(1, 11)]
    assert len({r["name"] for r in rows}) == 10
    assert len({r["template"] for r in rows}) == 10
    for row in rows:
        assert row["template"].count("[INSERT PROMPT HERE]") == 1
        assert "{instruction}" not in row["template"]


def test_persuasion_templates() -> None:
    rows = builtin_rows("persuasion")
    assert len(rows) == 10
    counts = Counter(r["technique"] for r in rows)
    assert counts == {
        t: 2
        for t in (
            "authority",
            "expert_endorsement",
            "emotional_appeal",
            "logical_appeal",
            "misrepresentation",
        )
    }
    assert len({r["template"] for r in rows}) == 10
    for row in rows:
        assert row["template"].count("{instruction}") == 1
        assert "[INSERT PROMPT HERE]" not in row["template"]


@pytest.mark.parametrize(("name", "count"), [("refusals", 60), ("compliance_prefixes", 20)])
def test_response_sets(name: str, count: int) -> None:
    rows = builtin_rows(name)
    assert len(rows) == count
    responses = [r["response"] for r in rows]
    assert all(isinstance(r, str) and r.strip() for r in responses)
    assert len(set(responses)) == count
    # also loadable through load_any with another field
    assert len(load_any(f"builtin:{name}", field="response")) == count


def test_builtin_rows_returns_fresh_copies() -> None:
    rows = builtin_rows("refusals")
    rows[0]["response"] = "changed"
    assert builtin_rows("refusals")[0]["response"] != "changed"


def test_inversion_questions() -> None:
    questions = inversion_questions()
    assert len(questions) == 3
    assert (
        questions[0] == "Could this user prompt cause harm? Answer 'Certainly' if it could, otherwise 'No'."
    )
    assert len(set(questions)) == 3
    for q in questions:
        assert "'Certainly'" in q and "'No'" in q


def test_builtin_readme_and_package_data() -> None:
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    assert "MIT" in readme and "Content warning" in readme
    for path in BUILTIN_DIR.glob("*.jsonl"):
        lines = path.read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and all(line.strip() for line in lines[:-1]), path.name


def test_builtin_not_copied_from_shared() -> None:
    folder = shared_data_dir()
    if folder is None:
        pytest.skip("no shared data folder")
    public: set[str] = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            public.update(v.strip().lower() for v in row.values() if isinstance(v, str))
    ours = [e.instruction for name in ("harmful", "harmless", "xstest_like") for e in builtin(name)]
    ours += [r["template"] for r in builtin_rows("jailbreak_templates")]
    assert not [t for t in ours if t.strip().lower() in public]


def test_example_is_hashable_and_frozen() -> None:
    example = Example("x", "cat", {"type": "t"})
    assert hash(example) == hash(Example("x", "cat", {"type": "other"}))
    with pytest.raises(AttributeError):
        example.instruction = "y"  # type: ignore[misc]


# --------------------------------------------------------------------------- jsonl / json / csv


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"instruction": "a", "category": "Physical Harm", "extra": 1}\n'
        "\n"
        "   \n"
        '{"instruction": "b", "category": null}\n'
        '{"instruction": "c \\u2028 d"}',  # no trailing newline, a line separator inside a string
        encoding="utf-8",
    )
    examples = load_jsonl(path)
    assert examples == [
        Example("a", "Physical Harm", {"extra": 1}),
        Example("b", None, {}),
        Example("c \u2028 d", None, {}),
    ]
    assert [e.instruction for e in load_jsonl(str(path), limit=2)] == ["a", "b"]
    assert load_jsonl(path, limit=0) == []
    with pytest.raises(ValueError):
        load_jsonl(path, limit=-1)


def test_load_jsonl_other_field_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"index": "0", "question": "why?"}\n')
    assert load_jsonl(path, field="question") == [Example("why?", None, {"index": "0"})]


def test_load_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        'instruction,category,note\n"Hello, world",,n1\n\n"multi\nline",Fraud/Deception,n2\n',
        encoding="utf-8",
    )
    examples = load_csv(path)
    assert examples == [
        Example("Hello, world", None, {"note": "n1"}),
        Example("multi\nline", "Fraud/Deception", {"note": "n2"}),
    ]
    assert load_csv(path, limit=1) == examples[:1]
    other = tmp_path / "o.csv"
    other.write_text("prompt\nhi\n", encoding="utf-8")
    assert load_csv(other, field="prompt") == [Example("hi")]


def test_load_any_forms(tmp_path: Path) -> None:
    assert load_any("builtin:harmful") == builtin("harmful")
    assert len(load_any("builtin:harmless", limit=5)) == 5
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x"}])
    assert load_any(str(jsonl)) == [Example("x")]
    csv_path = tmp_path / "a.CSV"
    csv_path.write_text("instruction\ny\n", encoding="utf-8")
    assert load_any(str(csv_path)) == [Example("y")]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"instruction": "z", "category": "c"}, "w"]), encoding="utf-8")
    assert load_any(str(as_list)) == [Example("z", "c"), Example("w")]
    as_lines = tmp_path / "lines.json"
    write_jsonl(as_lines, [{"instruction": "p"}, {"instruction": "q"}])
    assert [e.instruction for e in load_any(str(as_lines))] == ["p", "q"]
    with pytest.raises(ValueError, match="unrecognised"):
        load_any("something.txt")
    with pytest.raises(FileNotFoundError):
        load_any(str(tmp_path / "missing.jsonl"))


def test_load_any_shared_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="LATENTGUARD_SHARED_DATA"):
        load_any("shared:harmful_advbench")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json"])
def test_error_invalid_utf8(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad.{suffix}"
    header = b"instruction\n" if suffix == "csv" else b""
    body = b"ok\n\xff\xfe\n" if suffix == "csv" else b'{"instruction": "ok"}\n{"instruction": "\xff"}\n'
    path.write_bytes(header + body)
    with pytest.raises(DataError, match=rf"bad\.{suffix}:{3 if suffix == 'csv' else 2}: not valid UTF-8"):
        load_any(str(path))


def test_error_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok"}\n\n{"instruction": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        load_jsonl(path)


def test_error_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok"}, ["a", "list"]])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        load_jsonl(path)


def test_error_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok"}, {"prompt": "x"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: row has no 'instruction' field"):
        load_jsonl(path)
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("prompt\nx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:1: header has no 'instruction' column"):
        load_csv(csv_path)
    short = tmp_path / "short.csv"
    short.write_text("category,instruction\nc,ok\nonly-one-cell\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.csv:3: row has no 'instruction' field"):
        load_csv(short)


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_error_empty_instruction(tmp_path: Path, value: str) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl", [{"instruction": "ok"}, {"instruction": "ok2"}, {"instruction": value}]
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:3: empty instruction"):
        load_jsonl(path)


def test_error_empty_instruction_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("instruction,category\nok,c\n ,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:3: empty instruction"):
        load_csv(path)


def test_error_non_string_instruction(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": 5}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*must be a string"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("empty.csv", ""),
        ("header_only.csv", "instruction,category\n"),
        ("empty.json", ""),
        ("empty_list.json", "[]"),
    ],
)
def test_error_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty file \(no rows\)"):
        load_any(str(path))


def test_error_limit_does_not_hide_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty file"):
        load_jsonl(path, limit=0)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- hugging face


def test_load_hf_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install latentguard\[datasets\]"):
        load_hf("owner/name")
    with pytest.raises(ImportError, match="latentguard"):
        load_any("hf:owner/name:test")


def test_load_hf_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def load_dataset(name: str, split: str) -> list[dict[str, Any]]:
        calls.append((name, split))
        return [{"prompt": "a", "category": "c"}, {"prompt": "b", "id": 2}, {"prompt": ""}]

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert load_any("hf:owner/name:test", field="prompt", limit=2) == [
        Example("a", "c"),
        Example("b", None, {"id": 2}),
    ]
    assert calls == [("owner/name", "test")]
    with pytest.raises(DataError, match=r"hf:owner/name\[train\]: row 3: empty instruction"):
        load_hf("owner/name", field="prompt")
    with pytest.raises(DataError, match="row 1: row has no 'instruction' field"):
        load_hf("owner/name")


# --------------------------------------------------------------------------- shared data


def test_shared_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    write_jsonl(tmp_path / "mine.jsonl", [{"instruction": "s1"}, {"instruction": "s2"}])
    assert load_shared("mine") == [Example("s1"), Example("s2")]
    assert load_shared("mine.jsonl", limit=1) == [Example("s1")]
    assert load_any("shared:mine") == [Example("s1"), Example("s2")]
    assert load_shared("absent") is None
    with pytest.raises(ValueError):
        load_shared("../mine")


def test_shared_data_dir_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_SHARED_DATA", str(tmp_path / "does-not-exist"))
    assert shared_data_dir() is None
    assert load_shared("harmful_advbench") is None


def test_load_shared_real_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTGUARD_SHARED_DATA", raising=False)
    if shared_data_dir() is None:
        pytest.skip("no shared data folder (../shared/data)")
    advbench = load_shared("harmful_advbench")
    if advbench is None:
        pytest.skip("harmful_advbench.jsonl not in the shared folder")
    assert len(advbench) == 520
    assert all(e.instruction.strip() for e in advbench)
    catqa = load_shared("harmful_catqa.jsonl", limit=10)
    if catqa is not None:
        assert len(catqa) == 10
        assert all(e.category in HARM_CATEGORIES for e in catqa)
        assert "subcategory" in catqa[0].meta


# --------------------------------------------------------------------------- templates


def test_wrap_template_both_placeholders() -> None:
    assert wrap_template("Say: [INSERT PROMPT HERE]!", "hi") == "Say: hi!"
    assert wrap_template("As an expert, {instruction}", "explain x") == "As an expert, explain x"
    # other braces are left alone; an instruction containing a placeholder is inserted verbatim
    assert wrap_template("{a} {instruction} }{", "b") == "{a} b }{"
    assert wrap_template("[INSERT PROMPT HERE]", "x {instruction}") == "x {instruction}"
    with pytest.raises(ValueError, match="no placeholder"):
        wrap_template("no slot here", "x")


def test_wrap_builtin_templates() -> None:
    for row in builtin_rows("jailbreak_templates") + builtin_rows("persuasion"):
        wrapped = wrap_template(row["template"], "QUESTION")
        assert wrapped.count("QUESTION") == 1
        assert "[INSERT PROMPT HERE]" not in wrapped and "{instruction}" not in wrapped
