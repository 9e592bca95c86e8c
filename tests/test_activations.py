from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from latentguard.activations import ActivationSet, ExtractConfig, extract, hidden_at
from latentguard.io import ArtifactError
from latentguard.models import LoadedModel
from latentguard.positions import PromptTooLongError, locate

PROMPTS = [
    "How do I bake bread?",
    "Write a long poem about the sea, the sky and everything in between them, please.",
    "Hi",
    "Ünïcødé 你好\nmulti-line",
    "Explain recursion to a five year old in two sentences.",
]


def reference(
    lm: LoadedModel, prompt: str, names: tuple[str, ...] = ("t_inst", "t_post_inst")
) -> torch.Tensor:
    """Unbatched output_hidden_states at the named positions: [layers+1, positions, d]."""
    pos = locate(lm.tokenizer, prompt)
    with torch.no_grad():
        out = lm.model(torch.tensor([pos.input_ids]), output_hidden_states=True)
    hs = torch.stack(out.hidden_states)[:, 0]
    return hs[:, [pos.index(n) for n in names]].float()


def hook_ids(lm: LoadedModel) -> set[int]:
    """Ids of every forward (pre-)hook on the model (transformers registers some of its own)."""
    out: set[int] = set()
    for m in lm.model.modules():
        out |= set(m._forward_hooks) | set(m._forward_pre_hooks)
    return out


def no_hooks(lm: LoadedModel, before: set[int] | None = None) -> bool:
    """True when no hook other than those present ``before`` remains (and none of ours)."""
    return hook_ids(lm) <= (before if before is not None else hook_ids(lm)) and not any(
        "latentguard" in getattr(h, "__module__", "")
        for m in lm.model.modules()
        for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
    )


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_matches_output_hidden_states(tiny_lm: LoadedModel, padding_side: str) -> None:
    cfg = ExtractConfig(padding_side=padding_side, batch_size=len(PROMPTS), use_cache=False, progress=False)
    acts = extract(tiny_lm, PROMPTS, cfg)
    assert acts.activations.shape == (len(PROMPTS), tiny_lm.n_layers + 1, 2, tiny_lm.d_model)
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(acts.activations[i], reference(tiny_lm, p), atol=1e-5, rtol=1e-5)
    assert no_hooks(tiny_lm)


def test_batched_equals_unbatched(tiny_lm: LoadedModel) -> None:
    prompts = [locate(tiny_lm.tokenizer, p) for p in PROMPTS]
    names, layers = ("t_inst", "t_post_inst"), list(range(tiny_lm.n_layers + 1))
    batched = hidden_at(tiny_lm, prompts, names, layers, "left")
    for i, p in enumerate(prompts):
        single = hidden_at(tiny_lm, [p], names, layers, "right")
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)


def test_subset_of_layers_stops_early(tiny_lm: LoadedModel) -> None:
    calls: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, _a, i=i: calls.append(i))
        for i, layer in enumerate(tiny_lm.layers)
    ]
    try:
        acts = extract(tiny_lm, PROMPTS[:2], ExtractConfig(layers=(1,), use_cache=False, progress=False))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]  # block 1 and later never ran
    for i, p in enumerate(PROMPTS[:2]):
        torch.testing.assert_close(acts.activations[i, 0], reference(tiny_lm, p)[1], atol=1e-5, rtol=1e-5)


def test_cache_and_resume(tiny_lm: LoadedModel, tmp_cache: Path) -> None:
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(7)]
    cfg = ExtractConfig(chunk_size=2, batch_size=2, progress=False)

    def die_after_first(ci: int) -> None:
        if ci == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        extract(tiny_lm, prompts, cfg, on_chunk=die_after_first)
    assert no_hooks(tiny_lm)
    done: list[int] = []
    resumed = extract(tiny_lm, prompts, cfg, on_chunk=done.append)
    assert done == [2, 3]  # chunks 0 and 1 came from the cache
    assert resumed.meta["n_from_cache"] == 4
    again = extract(tiny_lm, prompts, cfg, on_chunk=done.append)
    assert done == [2, 3] and again.meta["n_from_cache"] == 7
    fresh = extract(tiny_lm, prompts, ExtractConfig(chunk_size=2, use_cache=False, progress=False))
    torch.testing.assert_close(again.activations, fresh.activations, atol=1e-5, rtol=1e-5)
    # a corrupt chunk is recomputed, not trusted
    chunk = next(tmp_cache.glob("activations/*/chunk_00000.safetensors"))
    chunk.write_bytes(b"garbage")
    healed = extract(tiny_lm, prompts, cfg)
    assert healed.meta["n_from_cache"] == 5
    torch.testing.assert_close(healed.activations, fresh.activations, atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    acts = extract(tiny_lm, PROMPTS[:3], ExtractConfig(use_cache=False, progress=False))
    acts.save(tmp_path / "a")
    back = ActivationSet.load(tmp_path / "a", expect_fingerprint=tiny_lm.fingerprint)
    torch.testing.assert_close(back.activations, acts.activations)
    assert back.instructions == acts.instructions and back.positions == ("t_inst", "t_post_inst")
    with pytest.raises(ArtifactError, match="not the loaded model"):
        ActivationSet.load(tmp_path / "a", expect_fingerprint="0" * 16)
    (tmp_path / "a" / "activations.safetensors").write_bytes(b"broken")
    with pytest.raises(ArtifactError):
        ActivationSet.load(tmp_path / "a")


def test_bad_inputs(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="empty instruction"):
        extract(tiny_lm, ["fine", "  "], ExtractConfig(use_cache=False, progress=False))
    with pytest.raises(PromptTooLongError):
        extract(tiny_lm, ["word " * 400], ExtractConfig(use_cache=False, progress=False))
    with pytest.raises(ValueError, match="no instructions"):
        extract(tiny_lm, [], ExtractConfig(use_cache=False, progress=False))
    assert no_hooks(tiny_lm)


@pytest.mark.embedded
def test_embedded_matches_reference(default_lm: Any) -> None:
    prompts = PROMPTS[:3]
    for side in ("left", "right"):
        acts = extract(default_lm, prompts, ExtractConfig(padding_side=side, use_cache=False, progress=False))
        for i, p in enumerate(prompts):
            err = (acts.activations[i] - reference(default_lm, p)).abs().max().item()
            assert err < 1e-3, (side, p, err)
