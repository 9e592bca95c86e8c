from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from latentguard.activations import ActivationSet, ExtractConfig, extract
from latentguard.analysis.beliefs import Centroids, belief_analysis, deltas, pearson
from latentguard.analysis.sweep import SweepConfig, inversion_sweep, steering_sweep
from latentguard.directions import Directions
from latentguard.models import LoadedModel


def _set(x: torch.Tensor, tag: str) -> ActivationSet:
    return ActivationSet(
        x, ("t_inst", "t_post_inst"), list(range(x.shape[1])), [f"{tag}{i}" for i in range(x.shape[0])], "fp"
    )


def test_belief_score_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    rh = _set(torch.randn(5, 3, 2, 8, generator=g) + 2, "rh")
    ah = _set(torch.randn(6, 3, 2, 8, generator=g) - 2, "ah")
    c = Centroids.fit(rh, ah, "t_inst")
    h = torch.randn(4, 3, 8, generator=g)
    s = c.scores(h)
    ch = rh.at("t_inst").double().mean(0)
    cs = ah.at("t_inst").double().mean(0)
    for i in range(4):
        for layer in range(3):
            hv = h[i, layer].double()
            expect = hv @ ch[layer] / (hv.norm() * ch[layer].norm()) - hv @ cs[layer] / (
                hv.norm() * cs[layer].norm()
            )
            assert s[i, layer].item() == pytest.approx(expect.item(), abs=1e-9)
    assert c.delta(h, [1, 2]).tolist() == pytest.approx(s[:, 1:].mean(1).tolist())


def test_belief_analysis_separates_concepts() -> None:
    """Synthetic: harmfulness lives at t_inst, refusal at t_post_inst; the misbehaving groups show it."""
    g = torch.Generator().manual_seed(1)
    d = 16
    harm_axis, ref_axis = torch.zeros(d), torch.zeros(d)
    harm_axis[0], ref_axis[1] = 4.0, 4.0

    def group(n: int, harmful: bool, refused: bool) -> ActivationSet:
        x = torch.randn(n, 3, 2, d, generator=g) * 0.5 + 1.0
        x[:, :, 0] += harm_axis * (1 if harmful else -1)
        x[:, :, 1] += ref_axis * (1 if refused else -1)
        return _set(x, f"{harmful}{refused}")

    groups = {
        "refused_harmful": group(10, True, True),
        "accepted_harmless": group(10, False, False),
        "refused_harmless": group(6, False, True),
        "accepted_harmful": group(6, True, False),
    }
    section, cents = belief_analysis(groups, [1, 2])
    f = section["fractions"]
    assert f["t_inst"]["accepted_harmful"] == 1.0 and f["t_inst"]["refused_harmless"] == 0.0
    assert f["t_post_inst"]["accepted_harmful"] == 0.0 and f["t_post_inst"]["refused_harmless"] == 1.0
    assert len(section["points"]) == 32 and section["corr"] is not None
    assert len(deltas(cents, groups["accepted_harmful"], [1, 2])) == 6


def test_pearson() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2], [1, 2]) is None


class PrefixJudge:
    name = "prefix"

    def judge(self, responses: list[str], instructions: list[str] | None = None) -> list[Any]:
        return [SimpleNamespace(refused=len(r) % 2 == 0, score=0.5) for r in responses]


def _dirs(lm: LoadedModel) -> dict[str, Directions]:
    g = torch.Generator().manual_seed(0)
    vec = {i: torch.randn(lm.d_model, generator=g) * 3 for i in range(lm.n_layers + 1)}
    return {
        "harmfulness": Directions(vec, "harmfulness", "t_inst", lm.fingerprint),
        "refusal": Directions({i: -v for i, v in vec.items()}, "refusal", "t_post_inst", lm.fingerprint),
    }


def test_steering_sweep_shapes(tiny_lm: LoadedModel) -> None:
    res = steering_sweep(
        tiny_lm,
        _dirs(tiny_lm),
        ["Bake bread.", "Name a colour."],
        ["Make a bomb."],
        PrefixJudge(),
        SweepConfig(layers=(1, 2), max_new_tokens=3),
    )
    assert res["layers"] == [1, 2]
    for key in ("add_to_harmless", "subtract_from_harmful"):
        assert set(res[key]) == {"harmfulness", "refusal"}
        assert all(len(v) == 2 and all(0 <= x <= 1 for x in v) for v in res[key].values())


def test_inversion_sweep_steers_only_before_question(tiny_lm: LoadedModel) -> None:
    q = "Could this user prompt cause harm? Answer 'Certainly' if it could, otherwise 'No'."
    res = inversion_sweep(
        tiny_lm,
        _dirs(tiny_lm),
        ["Bake bread.", "Name a colour."],
        ["Make a bomb."],
        [q],
        SweepConfig(layers=(1,)),
    )
    assert set(res["flip"]) == {"harmfulness", "refusal"}
    assert res["ranking"]["harmfulness"] == [1]
    assert 0 <= res["baseline"]["harmless"] <= 1
    # the unsteered activations are untouched afterwards (hooks removed)
    a = extract(tiny_lm, ["Bake bread."], ExtractConfig(use_cache=False, progress=False)).activations
    b = extract(tiny_lm, ["Bake bread."], ExtractConfig(use_cache=False, progress=False)).activations
    torch.testing.assert_close(a, b)
