from __future__ import annotations

import pytest
import torch

from latentguard.batching import length_batches, map_batches, pad_batch


def test_length_batches_cover_every_index_once_sorted_by_length() -> None:
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = length_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))) and [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert flat[:2] == [2, 4]  # stable among equal lengths
    assert [lengths[i] for b in length_batches(lengths, 2, longest_first=False) for i in b] == sorted(lengths)
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0)


def test_map_batches_returns_results_in_input_order() -> None:
    items = ["ccc", "a", "bb", "dddd"]
    seen: list[list[str]] = []

    def fn(xs: list[str]) -> list[int]:
        seen.append(xs)
        return [len(x) for x in xs]

    done: list[int] = []
    assert map_batches(items, [len(x) for x in items], 3, fn, on_batch=done.append) == [3, 1, 2, 4]
    assert seen == [["dddd", "ccc", "bb"], ["a"]] and done == [3, 1]
    with pytest.raises(ValueError, match="results"):
        map_batches(items, [1, 1, 1, 1], 2, lambda xs: [0])


def test_pad_batch_left_and_right() -> None:
    b = pad_batch([[1, 2, 3], [4]], pad_id=0, padding_side="left")
    assert b.input_ids.tolist() == [[1, 2, 3], [0, 0, 4]] and b.offsets.tolist() == [0, 2]
    assert b.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    r = pad_batch([[1, 2, 3], [4]], pad_id=0, padding_side="right")
    assert r.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(r.offsets, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        pad_batch([], 0)
