"""The template-prefix key/value cache: same hidden states and logits as a full forward."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from latentguard.activations import hidden_at
from latentguard.generation import first_token_logits
from latentguard.guard.guarded import LatentGuardBackend
from latentguard.guard.score import check
from latentguard.models import LoadedModel, wrap
from latentguard.positions import locate_for
from latentguard.prefix import build_prefix_cache, decoder_hooked, template_prefix_ids, usable
from latentguard.steering import steer
from tests.conftest import tiny_model, tokenizer_for
from tests.test_activations import hook_ids, reference
from tests.test_guard import random_centroid_guard

# the second and fourth prompts run past gemma2's 16-token sliding window after the prefix
PROMPTS = [
    "How do I bake bread?",
    "Write a poem about the sea and the wind over the harbour at night, in the style of a sailor's song.",
    "Hi",
    "Explain photosynthesis to a child in three short sentences, and then give one everyday example of it.",
    "What is 2+2?",
]


def test_prefix_is_the_templates_shared_lead_before_t_inst(tiny_lm: LoadedModel) -> None:
    prefix = build_prefix_cache(tiny_lm)
    assert prefix is not None
    assert prefix.ids == template_prefix_ids(tiny_lm)
    assert prefix.past.get_seq_length() == len(prefix) > 0
    text = tiny_lm.tokenizer.decode(list(prefix.ids))
    assert "system" in text and text.rstrip().endswith("user")  # ChatML: system turn + user header
    for pos in locate_for(tiny_lm, PROMPTS):
        assert prefix.covers(pos, pos.t_inst)
        assert tuple(pos.input_ids[: len(prefix)]) == prefix.ids


@pytest.mark.parametrize("family", ["llama2", "llama3", "qwen2", "gemma", "mistral"])
def test_template_prefix_ids_for_each_family(base_tokenizer: Any, family: str) -> None:
    tok = tokenizer_for(base_tokenizer, family)
    lm = wrap(tiny_model("llama", len(tok)), tok, spec=f"tiny-{family}")
    ids = template_prefix_ids(lm)
    for pos in locate_for(lm, PROMPTS):
        assert tuple(pos.input_ids[: len(ids)]) == ids
        assert len(ids) <= pos.t_inst
        # the first instruction token is not part of it
        assert pos.inst_span[0] >= len(tok.decode(list(ids), skip_special_tokens=False)) - 1


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_hidden_states_with_the_prefix_equal_a_full_forward(tiny_lm: LoadedModel, padding_side: str) -> None:
    prefix = build_prefix_cache(tiny_lm)
    positions = locate_for(tiny_lm, PROMPTS)
    layers = list(range(tiny_lm.n_layers + 1))
    full = hidden_at(tiny_lm, positions, ("t_inst", "t_post_inst"), layers, padding_side)
    cached = hidden_at(tiny_lm, positions, ("t_inst", "t_post_inst"), layers, padding_side, prefix=prefix)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    only_inst = hidden_at(tiny_lm, positions, ("t_inst",), layers, padding_side, prefix=prefix)
    torch.testing.assert_close(only_inst[:, :, 0], full[:, :, 0], atol=1e-5, rtol=1e-5)
    for i, prompt in enumerate(PROMPTS):  # against output_hidden_states, one prompt at a time
        ref = reference(tiny_lm, prompt)
        torch.testing.assert_close(cached[i], ref, atol=1e-4, rtol=1e-4)
    assert prefix is not None and prefix.past.get_seq_length() == len(prefix)  # never modified


def test_first_token_logits_with_the_prefix(tiny_lm: LoadedModel) -> None:
    prefix = build_prefix_cache(tiny_lm)
    positions = locate_for(tiny_lm, PROMPTS, question="Is this harmful?")
    for bs in (1, 2, 5):  # batch 1 uses the prefix; unequal left-padded batches run in full
        torch.testing.assert_close(
            first_token_logits(tiny_lm, positions, bs, prefix=prefix),
            first_token_logits(tiny_lm, positions, bs),
            atol=1e-4,
            rtol=1e-4,
        )


def test_check_with_and_without_the_prefix(tiny_lm: LoadedModel) -> None:
    guard = random_centroid_guard(tiny_lm, [1, 2])
    before = hook_ids(tiny_lm)
    a = check(tiny_lm, guard, PROMPTS, batch_size=2, prefix=False)
    b = check(tiny_lm, guard, PROMPTS, batch_size=2)  # builds one for the call
    c = check(tiny_lm, guard, PROMPTS, batch_size=1, prefix=build_prefix_cache(tiny_lm))
    d = check(tiny_lm, guard, PROMPTS, batch_size=3, prefix=None)  # what a failed build returns
    for x, y, z, w in zip(a, b, c, d, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-5) == pytest.approx(z.score, abs=1e-5)
        assert w.score == pytest.approx(x.score, abs=1e-5)
    assert hook_ids(tiny_lm) == before
    backend = LatentGuardBackend(tiny_lm, guard, batch_size=2)
    assert backend.prefix is not None
    assert [r.score for r in backend.classify(PROMPTS)] == pytest.approx([r.score for r in a], abs=1e-5)


def test_the_prefix_is_not_used_while_steering_hooks_are_active(llama_lm: LoadedModel) -> None:
    prefix = build_prefix_cache(llama_lm)
    positions = locate_for(llama_lm, PROMPTS)
    vec = {1: torch.ones(llama_lm.d_model)}
    with steer(llama_lm, vec, 4.0):
        assert decoder_hooked(llama_lm)
        assert build_prefix_cache(llama_lm) is None  # it would hold the steering's effect
        assert not usable(prefix, llama_lm, positions, [p.t_inst for p in positions])
        steered = hidden_at(llama_lm, positions, ("t_inst",), [2])
        with_prefix = hidden_at(llama_lm, positions, ("t_inst",), [2], prefix=prefix)
    torch.testing.assert_close(with_prefix, steered)
    plain = hidden_at(llama_lm, positions, ("t_inst",), [2], prefix=prefix)
    assert not torch.allclose(plain, steered, atol=1e-3)  # the steering did act


def test_a_prefix_of_another_model_is_refused(llama_lm: LoadedModel, base_tokenizer: Any) -> None:
    prefix = build_prefix_cache(llama_lm)
    other = wrap(tiny_model("qwen2", len(base_tokenizer)), base_tokenizer, spec="tiny-qwen2")
    positions = locate_for(other, PROMPTS)
    with pytest.raises(ValueError, match="build_prefix_cache"):
        hidden_at(other, positions, ("t_inst",), [1], prefix=prefix)
    assert prefix is not None and prefix.fingerprint == llama_lm.fingerprint
    with pytest.raises(ValueError, match="batch_size"):
        prefix.for_batch(0)


def test_extract_reuses_the_prefix_with_the_same_result(tiny_lm: LoadedModel, tmp_cache: Any) -> None:
    from latentguard.activations import ExtractConfig, extract

    base = ExtractConfig(use_cache=False, progress=False, batch_size=2, system="Answer briefly.")
    full = extract(tiny_lm, PROMPTS, replace(base, reuse_prefix=False))
    cached = extract(tiny_lm, PROMPTS, base)
    torch.testing.assert_close(cached.activations, full.activations, atol=1e-5, rtol=1e-5)
    prefix = build_prefix_cache(tiny_lm, "Answer briefly.")
    assert prefix is not None and "Answer briefly." in tiny_lm.tokenizer.decode(list(prefix.ids))
