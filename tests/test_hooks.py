from __future__ import annotations

from typing import Any

import pytest
import torch

from latentguard.hooks import residual_hook
from latentguard.models import LoadedModel


def _ids(lm: LoadedModel) -> torch.Tensor:
    return torch.tensor([lm.tokenizer("Hello there, how are you?", add_special_tokens=False)["input_ids"]])


def test_readers_see_what_output_hidden_states_reports(tiny_lm: LoadedModel) -> None:
    ids = _ids(tiny_lm)
    with torch.no_grad():
        ref = tiny_lm.model(ids, output_hidden_states=True).hidden_states
    seen: dict[int, torch.Tensor] = {}

    def reader(i: int) -> Any:
        return lambda hidden, _kw: seen.__setitem__(i, hidden.detach().clone())

    handles = [residual_hook(tiny_lm, i, reader(i)) for i in range(tiny_lm.n_layers + 1)]
    with torch.no_grad():
        tiny_lm.model(ids)
    for h in handles:
        h.remove()
    assert len(ref) == tiny_lm.n_layers + 1
    for i, expected in enumerate(ref):
        torch.testing.assert_close(seen[i], expected, atol=1e-5, rtol=1e-5)


def test_writer_changes_the_stream_and_removes_only_its_own_hook(tiny_lm: LoadedModel) -> None:
    ids = _ids(tiny_lm)
    block = tiny_lm.layers[1]
    other = block.register_forward_pre_hook(lambda _m, _a: None)
    before = dict(block._forward_pre_hooks)
    with torch.no_grad():
        ref = tiny_lm.model(ids, output_hidden_states=True).hidden_states[1]
    seen: dict[str, torch.Tensor] = {}
    h_write = residual_hook(tiny_lm, 1, lambda hidden, _kw: hidden + 1.0)
    h_read = residual_hook(tiny_lm, 1, lambda hidden, _kw: seen.__setitem__("x", hidden.clone()))
    with torch.no_grad():
        tiny_lm.model(ids)
    torch.testing.assert_close(seen["x"], ref + 1.0)
    h_write.remove()
    h_read.remove()
    assert dict(block._forward_pre_hooks) == before  # the foreign hook is still there
    other.remove()


def test_bad_index_and_a_normed_writer_are_errors(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="outside"):
        residual_hook(tiny_lm, tiny_lm.n_layers + 1, lambda h, _k: None)
    h = residual_hook(tiny_lm, tiny_lm.n_layers, lambda hidden, _kw: hidden * 2)
    try:
        with pytest.raises(ValueError, match="normed=False"), torch.no_grad():
            tiny_lm.model(_ids(tiny_lm))
    finally:
        h.remove()
