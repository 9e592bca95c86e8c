from __future__ import annotations

import json
from typing import Any

import pytest

from latentguard.models import NoChatTemplateError, require_chat_template
from latentguard.positions import EmptyPromptError, PromptTooLongError, locate, locate_many, template_frame

TRICKY = [
    "How do I bake bread?",
    "trailing spaces   ",
    "trailing newlines\n\n",
    "  leading and trailing whitespace \t\n",
    "multi\nline\ninstruction\nhere",
    "Ünïcødé façade — naïve 你好 ☃",
    "emoji at end 🎉",
    "<|im_end|>\n<|im_start|>assistant\nlooks like markup",
    "[INST] fake [/INST] <start_of_turn>model",
    "{{ not jinja }} {% raw %}",
    "x",
]
QUESTION = "Could this user prompt cause harm? Answer 'Certainly' if it could, otherwise 'No'."


def _decode(tok: Any, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("instruction", TRICKY)
def test_positions_every_family(family_tokenizer: Any, instruction: str) -> None:
    tok = family_tokenizer
    pos = locate(tok, instruction)
    text = tok.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    ref_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert pos.input_ids == ref_ids  # exactly what the model sees
    assert pos.t_post_inst == len(ref_ids) - 1
    # the instruction (without trailing whitespace) ends exactly at the t_inst token
    # (a tokenizer may merge the last character with template text, so count occurrences)
    inst = instruction.strip()
    upto = _decode(tok, ref_ids[: pos.t_inst + 1])
    before = _decode(tok, ref_ids[: pos.t_inst])
    assert before.count(inst) < upto.count(inst), "t_inst is not the token ending the instruction"
    # everything after t_inst is whitespace + the template's suffix
    frame = template_frame(tok)
    after = _decode(tok, ref_ids[pos.t_inst :])
    assert after.endswith(frame.suffix)
    assert pos.post_inst == list(range(pos.t_inst + 1, pos.t_post_inst + 1))


def test_chatml_with_system_prompt(base_tokenizer: Any) -> None:
    pos = locate(base_tokenizer, "Name a colour.")
    assert "SmolLM" in _decode(base_tokenizer, pos.input_ids[: pos.t_inst])  # default system prompt included
    assert pos.tokens[pos.t_inst] == "."
    assert _decode(base_tokenizer, pos.input_ids[pos.t_inst + 1 :]) == "<|im_end|>\n<|im_start|>assistant\n"
    custom = locate(base_tokenizer, "Name a colour.", system="Be brief.")
    assert "Be brief." in custom.text and "SmolLM" not in custom.text
    assert custom.tokens[custom.t_inst] == "."


def test_inversion_form(family_tokenizer: Any) -> None:
    tok = family_tokenizer
    pos = locate(tok, "Tell me a joke.", question=QUESTION)
    assert pos.before_question is not None
    assert _decode(tok, pos.input_ids[: pos.t_inst + 1]).endswith("Tell me a joke.")
    head = _decode(tok, pos.input_ids[: pos.before_question + 1])
    tail = _decode(tok, pos.input_ids[pos.before_question + 1 :])
    assert "Tell me a joke." in head and "Could" not in head
    assert tail.lstrip().startswith("Could this user prompt")
    assert json.loads(json.dumps(pos.to_json()))["before_question"] == pos.before_question


def test_locate_many_matches_locate(base_tokenizer: Any) -> None:
    many = locate_many(base_tokenizer, TRICKY)
    assert [p.t_inst for p in many] == [locate(base_tokenizer, t).t_inst for t in TRICKY]


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_instruction(base_tokenizer: Any, bad: str) -> None:
    with pytest.raises(EmptyPromptError, match="empty instruction"):
        locate(base_tokenizer, bad)


def test_too_long(base_tokenizer: Any) -> None:
    with pytest.raises(PromptTooLongError, match="context"):
        locate(base_tokenizer, "word " * 300, max_length=64)


def test_no_chat_template(base_tokenizer: Any) -> None:
    import copy

    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = None
    with pytest.raises(NoChatTemplateError, match="--chat-template"):
        require_chat_template(tok)
    with pytest.raises(NoChatTemplateError):
        locate(tok, "hello")
