from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentguard.activations import ActivationSet
from latentguard.directions import (
    Directions,
    category_directions,
    cosine_matrix,
    cosine_per_layer,
    harmfulness_direction,
    mean_difference,
    refusal_direction,
)
from latentguard.io import ArtifactError


def make_set(x: torch.Tensor, fp: str = "fp") -> ActivationSet:
    n = x.shape[0]
    return ActivationSet(
        x, ("t_inst", "t_post_inst"), list(range(x.shape[1])), [f"p{i}" for i in range(n)], fp
    )


def test_diff_in_means_float64_exact() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(7, 3, 2, 8, generator=g) + 1e4  # large offset: float32 means would lose digits
    neg = torch.randn(5, 3, 2, 8, generator=g) + 1e4
    d = harmfulness_direction(make_set(pos), make_set(neg))
    expect = pos[:, :, 0].double().mean(0) - neg[:, :, 0].double().mean(0)
    for layer in range(3):
        torch.testing.assert_close(d[layer].double(), expect[layer], atol=1e-3, rtol=0)
    r = refusal_direction(make_set(pos), make_set(neg))
    assert r.position == "t_post_inst" and r.kind == "refusal" and (d.n_pos, d.n_neg) == (7, 5)


def test_cosine_per_layer() -> None:
    a = Directions({0: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0])}, "a", "t_inst", "fp")
    b = Directions({0: torch.tensor([0.0, 2.0]), 1: torch.tensor([3.0, 3.0])}, "b", "t_post_inst", "fp")
    cos = cosine_per_layer(a, b)
    assert cos[0] == pytest.approx(0.0) and cos[1] == pytest.approx(1.0)
    assert cosine_per_layer(a, a.negated())[1] == pytest.approx(-1.0)


def test_checks() -> None:
    with pytest.raises(ValueError, match="empty"):
        mean_difference(torch.zeros(0, 2, 3), torch.zeros(1, 2, 3))
    bad = torch.zeros(2, 2, 3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mean_difference(bad, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        mean_difference(torch.zeros(2, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ArtifactError, match="different models"):
        harmfulness_direction(make_set(torch.zeros(2, 2, 2, 3), "a"), make_set(torch.zeros(2, 2, 2, 3), "b"))


def test_save_load_and_mismatch(tmp_path: Path) -> None:
    d = Directions(
        {3: torch.randn(6), 4: torch.randn(6)}, "harmfulness", "t_inst", "abc", 3, 4, {"note": "x"}
    )
    d.save(tmp_path / "h")
    back = Directions.load(tmp_path / "h.safetensors", expect_fingerprint="abc")
    assert back.layers == [3, 4] and back.meta == {"note": "x"}
    torch.testing.assert_close(back.stack(), d.stack())
    with pytest.raises(ArtifactError, match="not the loaded model"):
        Directions.load(tmp_path / "h", expect_fingerprint="other")
    (tmp_path / "h.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        Directions.load(tmp_path / "h")
    moved = d.to(dtype=torch.float64)
    assert moved[3].dtype == torch.float64 and d[3].dtype == torch.float32


def test_category_directions() -> None:
    x = torch.randn(6, 2, 2, 4)
    dirs = category_directions(make_set(x), ["a", "a", "b", "b", "b", "c"], make_set(torch.randn(3, 2, 2, 4)))
    assert set(dirs) == {"a", "b"}  # "c" has a single row
    names, m = cosine_matrix(dirs, 1)
    assert names == ["a", "b"] and torch.allclose(m.diag(), torch.ones(2, dtype=torch.float64))
