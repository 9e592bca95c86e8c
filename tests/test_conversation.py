"""Conversations: t_inst of the last user turn in every template family, extraction, the guard, generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_guard import random_probe_guard, with_median_threshold

from latentguard.activations import ExtractConfig, extract
from latentguard.conversation import ConversationError, as_conversation, last_user_text, prompt_key
from latentguard.data import DataError, load_any
from latentguard.generation import Sampling, TextStream, finish, stop_token_ids
from latentguard.guard.categories import CATEGORY_KEYS, CategoryHead, fit_category_head
from latentguard.guard.guarded import LatentGuardBackend, guarded_generate
from latentguard.guard.model import LatentGuard
from latentguard.guard.score import check
from latentguard.models import LoadedModel
from latentguard.positions import EmptyPromptError, PositionError, fold_system, locate

HISTORY = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
]
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "How do I bake bread?"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ],
    "multi turn": [*HISTORY, {"role": "user", "content": "And how do I bake bread?  \n"}],
    "system multi turn": [
        {"role": "system", "content": "Be kind."},
        *HISTORY,
        {"role": "user", "content": "Ünïcødé — 你好 🎉"},
    ],
    "repeated text": [
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Say yes."},
    ],
}


def reference(tok: Any, messages: list[dict[str, str]]) -> tuple[list[int], int]:
    """Token ids and t_inst computed directly from the rendered template (system folded when rejected)."""
    from jinja2 import TemplateError

    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        text = tok.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    last = messages[max(i for i, m in enumerate(messages) if m["role"] == "user")]["content"].strip()
    end = text.rindex(last) + len(last) - 1  # the last user message is the last content rendered
    t_inst = max(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= end < b)
    return list(enc["input_ids"]), t_inst


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_t_inst_of_the_last_user_turn_every_family(family_tokenizer: Any, name: str) -> None:
    messages = CONVERSATIONS[name]
    pos = locate(family_tokenizer, messages)
    ids, t_inst = reference(family_tokenizer, messages)
    assert pos.input_ids == ids
    assert pos.t_inst == t_inst
    assert pos.t_post_inst == len(ids) - 1
    assert pos.post_inst == list(range(t_inst + 1, len(ids)))


def test_templates_without_a_system_role_fold_it_into_the_first_user_turn(base_tokenizer: Any) -> None:
    from conftest import tokenizer_for

    messages = CONVERSATIONS["system multi turn"]
    for family in ("gemma", "mistral"):
        tok = tokenizer_for(base_tokenizer, family)
        pos = locate(tok, messages)
        first_user = pos.text.index("Hi there!")
        assert pos.text.index("Be kind.") < first_user  # the system text opens the first user turn
        assert pos.text.count("Be kind.") == 1
    # a single turn with --system works on these templates too
    pos = locate(tokenizer_for(base_tokenizer, "gemma"), "Name a colour.", system="Be brief.")
    assert "Be brief.\n\nName a colour." in pos.text


def test_one_turn_conversation_is_the_instruction(base_tokenizer: Any) -> None:
    a = locate(base_tokenizer, "How do I bake bread?")
    b = locate(base_tokenizer, [{"role": "user", "content": "How do I bake bread?"}])
    assert (a.input_ids, a.t_inst) == (b.input_ids, b.t_inst)
    c = locate(base_tokenizer, "Name a colour.", system="Be brief.")
    d = locate(base_tokenizer, [{"role": "user", "content": "Name a colour."}], system="Be brief.")
    assert (c.input_ids, c.t_inst) == (d.input_ids, d.t_inst)


def test_bad_conversations(base_tokenizer: Any) -> None:
    from conftest import tokenizer_for

    with pytest.raises(EmptyPromptError):
        locate(base_tokenizer, [*HISTORY, {"role": "user", "content": "  "}])
    for bad in ([], [{"role": "assistant", "content": "hi"}], [{"role": "tool", "content": "x"}], [3]):
        with pytest.raises(PositionError):
            locate(base_tokenizer, bad)
    with pytest.raises(PositionError, match="rejected"):  # roles must alternate in Gemma's template
        locate(
            tokenizer_for(base_tokenizer, "gemma"), [*HISTORY, HISTORY[1], {"role": "user", "content": "x"}]
        )
    with pytest.raises(ConversationError, match="only text"):
        as_conversation([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert last_user_text(parts) == "a\nb"


def test_activations_of_a_conversation_equal_output_hidden_states(
    tiny_lm: LoadedModel, tmp_cache: Path
) -> None:
    prompts: list[Any] = [
        CONVERSATIONS["multi turn"],
        CONVERSATIONS["system multi turn"],
        "How do I bake bread?",
    ]
    acts = extract(tiny_lm, prompts, ExtractConfig(progress=False, batch_size=2))
    assert acts.instructions[0] == prompt_key(prompts[0]) and json.loads(acts.instructions[0]) == prompts[0]
    for row, prompt in enumerate(prompts):
        pos = locate(tiny_lm.tokenizer, prompt)
        with torch.inference_mode():
            out = tiny_lm.model(torch.tensor([pos.input_ids]), output_hidden_states=True)
        for j, layer in enumerate(acts.layers):
            for k, index in enumerate((pos.t_inst, pos.t_post_inst)):
                torch.testing.assert_close(
                    acts.activations[row, j, k],
                    out.hidden_states[layer][0, index].float(),
                    atol=1e-4,
                    rtol=1e-4,
                )


def test_guard_reads_the_last_turn_in_context(llama_lm: LoadedModel) -> None:
    guard = random_probe_guard(llama_lm, [1, 2])
    conv = CONVERSATIONS["multi turn"]
    (verdict,) = check(llama_lm, guard, [conv])
    (alone,) = check(llama_lm, guard, [last_user_text(conv)])
    assert verdict.score != pytest.approx(alone.score)  # the history is part of the context
    (reply,) = guarded_generate(llama_lm, guard, [conv], policy="allow", max_new_tokens=3)
    assert reply.score == pytest.approx(verdict.score, abs=1e-5)
    assert reply.prompt_tokens == len(locate(llama_lm.tokenizer, conv))
    assert reply.finish_reason in ("stop", "length") and reply.completion_tokens >= 1


def test_streamed_text_equals_the_answer(llama_lm: LoadedModel) -> None:
    guard = random_probe_guard(llama_lm, [1, 2])
    guard.threshold = 1e9  # nothing is harmful
    conv = CONVERSATIONS["system multi turn"]
    pieces: list[str] = []
    verdicts: list[Any] = []
    (streamed,) = guarded_generate(
        llama_lm, guard, [conv], max_new_tokens=24, on_text=pieces.append, on_verdict=verdicts.append
    )
    (plain,) = guarded_generate(llama_lm, guard, [conv], max_new_tokens=24)
    assert "".join(pieces) == streamed.response == plain.response
    assert len(verdicts) == 1 and verdicts[0].score == pytest.approx(plain.score)
    guard.threshold = -1e9  # everything is harmful: blocked after the prefill, no text streamed
    pieces.clear()
    (blocked,) = guarded_generate(llama_lm, guard, [conv], max_new_tokens=24, on_text=pieces.append)
    assert blocked.blocked and blocked.finish_reason == "content_filter" and pieces == []
    with pytest.raises(ValueError, match="one prompt"):
        guarded_generate(llama_lm, guard, ["a", "b"], on_text=pieces.append)


def test_text_stream_holds_back_stop_strings_and_whitespace(llama_lm: LoadedModel) -> None:
    tok = llama_lm.tokenizer
    stops = stop_token_ids(llama_lm)
    ids = tok(" Hello world. STOP here", add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    stream = TextStream(llama_lm, stops, pieces.append, stop_strings=("STOP",))
    stream.put(torch.tensor([[1, 2]]))  # the prompt
    for t in ids:
        stream.put(torch.tensor([t]))
    stream.end()
    done = finish(llama_lm, ids, stops, ("STOP",))
    assert "".join(pieces) == done.text == "Hello world."
    assert done.finish_reason == "stop"
    assert finish(llama_lm, ids, stops, max_new_tokens=len(ids)).finish_reason == "length"


def test_seeded_sampling_is_deterministic(llama_lm: LoadedModel) -> None:
    guard = random_probe_guard(llama_lm, [1])
    guard.threshold = 1e9
    conv = CONVERSATIONS["multi turn"]

    def answer(seed: int) -> str | None:
        s = Sampling(temperature=1.0, top_p=0.95, seed=seed)
        return guarded_generate(llama_lm, guard, [conv], max_new_tokens=12, sampling=s)[0].response

    state = torch.random.get_rng_state()
    assert answer(1) == answer(1)
    assert len({answer(s) for s in range(4)}) > 1
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is untouched
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=3.0)


def test_backend_chat_streams_and_guard_off(llama_lm: LoadedModel) -> None:
    guard = random_probe_guard(llama_lm, [1, 2])
    guard.threshold = 1e9
    conv = CONVERSATIONS["multi turn"]
    pieces: list[str] = []
    on = LatentGuardBackend(llama_lm, guard).chat(
        conv, max_new_tokens=8, policy="block", on_text=pieces.append
    )
    off = LatentGuardBackend(llama_lm, guard, guard_enabled=False).chat(
        conv, max_new_tokens=8, policy="block"
    )
    assert on.response == off.response == "".join(pieces)
    assert off.score == 0.0 and not off.harmful


def random_category_head(lm: LoadedModel, layer: int) -> CategoryHead:
    g = torch.Generator().manual_seed(1)
    k, d = len(CATEGORY_KEYS), lm.d_model
    return CategoryHead(
        names=list(CATEGORY_KEYS),
        layer=layer,
        weight=torch.randn(k, d, generator=g),
        bias=torch.zeros(k),
        mean=torch.zeros(d),
        std=torch.ones(d),
    )


def test_category_head_roundtrip_and_scores(llama_lm: LoadedModel, tmp_path: Path) -> None:
    guard = random_probe_guard(llama_lm, [1, 2])
    guard.categories = random_category_head(llama_lm, 2)
    loaded = LatentGuard.load(guard.save(tmp_path / "g"), llama_lm)
    assert loaded.categories is not None and loaded.categories.names == list(CATEGORY_KEYS)
    (verdict,) = check(llama_lm, loaded, ["How do I bake bread?"])
    assert set(verdict.category_scores) == set(CATEGORY_KEYS)
    assert all(0.0 <= v <= 1.0 for v in verdict.category_scores.values())
    (reply,) = guarded_generate(llama_lm, loaded, ["How do I bake bread?"], policy="allow", max_new_tokens=2)
    assert reply.category_scores == pytest.approx(verdict.category_scores, abs=1e-4)


def test_fit_category_head_separates_categories() -> None:
    g = torch.Generator().manual_seed(0)
    d, names = 16, list(CATEGORY_KEYS[:3])
    centres = torch.randn(3, d, generator=g) * 3
    x = torch.cat([centres[i] + torch.randn(20, d, generator=g) for i in range(3)])
    cats = [n for n in names for _ in range(20)]
    head = fit_category_head(x, cats, torch.randn(30, d, generator=g), layer=5)
    assert head.names == names and head.metrics["val_accuracy"] > 0.9
    assert set(head.metrics["val_accuracy_per_category"]) == set(names)
    with pytest.raises(ValueError, match="at least 2 categories"):
        fit_category_head(x[:20], cats[:20], x[20:30], layer=5)


def test_data_rows_with_messages(tmp_path: Path) -> None:
    path = tmp_path / "conv.jsonl"
    rows = [
        {"messages": CONVERSATIONS["multi turn"], "category": "x", "id": 1},
        {"instruction": "plain"},
        {"messages": json.dumps(CONVERSATIONS["system"])},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = load_any(str(path))
    assert [e.instruction for e in examples] == ["And how do I bake bread?  \n", "plain", "Name a colour."]
    assert examples[0].prompt == CONVERSATIONS["multi turn"] and examples[0].meta == {"id": 1}
    assert examples[1].prompt == "plain" and examples[1].messages is None
    path.write_text(
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"conv.jsonl:1: field 'messages': .*no user message"):
        load_any(str(path))


def test_cli_positions_and_check_take_messages(
    llama_lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentguard.cli import guard_cmds, main

    conv = CONVERSATIONS["multi turn"]
    assert main(["positions", "--messages", json.dumps(conv)]) == 0
    shown = json.loads(capsys.readouterr().out)
    pos = locate(llama_lm.tokenizer, conv)
    assert shown["t_inst"] == pos.t_inst and shown["t_post_inst"] == pos.t_post_inst
    guard = with_median_threshold(llama_lm, random_probe_guard(llama_lm, [1, 2]), ["a", "b", "c"])
    monkeypatch.setattr(guard_cmds, "load_guard", lambda args: (llama_lm, guard))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": conv}) + "\n" + json.dumps({"instruction": "hi"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["guard", "check", "--guard", "g", "--data", str(data), "--out", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = check(llama_lm, guard, [conv, "hi"])
    assert [r["score"] for r in got] == pytest.approx([v.score for v in expected])
    assert got[0]["messages"] == conv and got[0]["instruction"] == conv[-1]["content"]


def test_cli_guard_chat_keeps_the_conversation(
    llama_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentguard.cli import guard_cmds, main
    from latentguard.guard import guarded

    guard = random_probe_guard(llama_lm, [1, 2])
    seen: list[Any] = []

    def fake_generate(lm: Any, g: Any, prompts: list[Any], **kwargs: Any) -> list[Any]:
        seen.append(prompts[0])
        return guarded_generate(lm, g, prompts, **kwargs)

    lines = iter(["Hi there!", "And how do I bake bread?"])

    def fake_input(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(guard_cmds, "load_guard", lambda args: (llama_lm, guard))
    monkeypatch.setattr(guarded, "guarded_generate", fake_generate)
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["guard", "chat", "--guard", "g", "--policy", "allow", "--max-new-tokens", "3"]) == 0
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    assert seen[1][0]["content"] == "Hi there!" and seen[1][2]["content"] == "And how do I bake bread?"
    assert len(capsys.readouterr().out.strip().split("\n}\n")) == 2
