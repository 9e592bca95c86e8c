from __future__ import annotations

from typing import Any

import pytest
import torch

from latentguard.activations import ExtractConfig, extract
from latentguard.batching import pad_batch
from latentguard.generation import generate_from_positions
from latentguard.models import LoadedModel
from latentguard.positions import locate, locate_many
from latentguard.steering import add_steering, steer

PROMPTS = ["How do I bake bread?", "Name three colours of the rainbow please."]


def our_hooks(lm: LoadedModel) -> int:
    return sum(
        1
        for m in lm.model.modules()
        for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if getattr(h, "__module__", "") in ("latentguard.hooks", "latentguard.steering")
    )


def hidden(lm: LoadedModel, layer: int) -> torch.Tensor:
    cfg = ExtractConfig(layers=(layer,), use_cache=False, progress=False)
    return extract(lm, PROMPTS, cfg).activations[:, 0]


def test_add_shifts_residual_stream_exactly(tiny_lm: LoadedModel) -> None:
    v = torch.randn(tiny_lm.d_model)
    before = hidden(tiny_lm, 1)
    with steer(tiny_lm, {1: v}, coefficient=2.0) as handle:
        assert handle.active and our_hooks(tiny_lm) == 1
        after = hidden(tiny_lm, 1)
    # the extraction pre-hook on block 1 runs after the steering pre-hook: it sees the steered input
    torch.testing.assert_close(after - before, (2.0 * v).expand_as(before), atol=1e-5, rtol=1e-5)
    assert our_hooks(tiny_lm) == 0 and not handle.active


def test_ablate_removes_component(tiny_lm: LoadedModel) -> None:
    v = torch.randn(tiny_lm.d_model)
    with steer(tiny_lm, {2: v}, mode="ablate"):
        h = hidden(tiny_lm, 2)
    unit = v / v.norm()
    assert (h @ unit).abs().max() < 1e-4


def test_handle_and_nested_contexts(tiny_lm: LoadedModel) -> None:
    v = torch.randn(tiny_lm.d_model)
    outer = add_steering(tiny_lm, {1: v})
    with steer(tiny_lm, {2: v}):
        assert our_hooks(tiny_lm) == 2
        with steer(tiny_lm, {1: -v}):
            assert our_hooks(tiny_lm) == 3
        assert our_hooks(tiny_lm) == 2
    assert our_hooks(tiny_lm) == 1
    outer.remove()
    outer.remove()  # idempotent
    assert our_hooks(tiny_lm) == 0


def test_hooks_removed_on_error(tiny_lm: LoadedModel) -> None:
    with pytest.raises(RuntimeError, match="boom"), steer(tiny_lm, {1: torch.randn(tiny_lm.d_model)}):
        raise RuntimeError("boom")
    assert our_hooks(tiny_lm) == 0
    with pytest.raises(ValueError, match="shape"):
        add_steering(tiny_lm, {1: torch.randn(3)})
    with pytest.raises(ValueError, match="outside"):
        add_steering(tiny_lm, {99: torch.randn(tiny_lm.d_model)})
    assert our_hooks(tiny_lm) == 0


def test_dtype_cast_inside_hook(tiny_lm: LoadedModel) -> None:
    v64 = torch.randn(tiny_lm.d_model, dtype=torch.float64)
    before = hidden(tiny_lm, 1)
    with steer(tiny_lm, {1: v64}):
        after = hidden(tiny_lm, 1)
    torch.testing.assert_close(after - before, v64.float().expand_as(before), atol=1e-5, rtol=1e-5)


def test_prompt_mask_limits_positions(tiny_lm: LoadedModel) -> None:
    """Steering only tokens up to t_inst leaves the residual stream at later tokens' own layer input intact."""
    ps = locate_many(tiny_lm.tokenizer, PROMPTS)
    batch = pad_batch([p.input_ids for p in ps], tiny_lm.tokenizer.pad_token_id, "left")
    mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    for r, p in enumerate(ps):
        off = int(batch.offsets[r])
        mask[r, off : off + p.t_inst + 1] = True
    v = torch.randn(tiny_lm.d_model)
    seen: dict[str, torch.Tensor] = {}

    def grab(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad():
        with steer(tiny_lm, {1: v}, prompt_mask=mask):
            h = tiny_lm.layers[1].register_forward_pre_hook(grab, with_kwargs=True)
            try:
                tiny_lm.model(**kw)
            finally:
                h.remove()
        steered = seen["h"]
        h = tiny_lm.layers[1].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            tiny_lm.model(**kw)
        finally:
            h.remove()
        plain = seen["h"]
    diff = steered - plain
    torch.testing.assert_close(diff[mask], v.expand(int(mask.sum()), -1), atol=1e-5, rtol=1e-5)
    assert diff[~mask].abs().max() < 1e-6


def test_steps_one_only_changes_prefill(tiny_lm: LoadedModel) -> None:
    """With steps=1 the decode steps run unsteered: the continuation equals the unsteered model's
    continuation from the steered first token."""
    p = locate(tiny_lm.tokenizer, PROMPTS[0])
    v = torch.randn(tiny_lm.d_model) * 5
    calls: list[int] = []

    def count(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    h = tiny_lm.layers[0].register_forward_pre_hook(count, with_kwargs=True)
    try:
        with steer(tiny_lm, {1: v}, steps=1):
            steered = generate_from_positions(tiny_lm, [p], 4)
    finally:
        h.remove()
    assert calls[0] == len(p) and all(c == 1 for c in calls[1:])
    assert our_hooks(tiny_lm) == 0
    assert isinstance(steered[0], str)


def test_token_mask_rules() -> None:
    from latentguard.steering import token_mask

    dev = torch.device("cpu")
    # no mask, steps=1: the prefill (past == 0) is steered, decode steps are not
    assert token_mask(2, 5, 0, None, 1, dev).all()
    assert not token_mask(2, 1, 5, None, 1, dev).any()
    assert token_mask(2, 1, 5, None, None, dev) is None  # steer everything, always
    pm = torch.tensor([[False, True, True, False], [True, True, False, False]])
    m = token_mask(2, 4, 0, pm, 2, dev)
    assert m is not None and torch.equal(m, pm)
    # steps=2: the token fed right after the prefill (absolute index 4) is steered, the next is not
    m4 = token_mask(2, 1, 4, pm, 2, dev)
    m5 = token_mask(2, 1, 5, pm, 2, dev)
    assert m4 is not None and m4.all() and m5 is not None and not m5.any()
