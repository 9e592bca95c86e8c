"""Run report: figures, claims and the self-contained HTML, on a synthetic summary."""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from latentguard.report.claims import VERDICTS, evaluate_claims
from latentguard.report.figures import Figure, make_figures
from latentguard.report.html import build_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_KEYS = (
    "beliefs_per_layer",
    "beliefs_scatter",
    "directions",
    "steering_sweep",
    "inversion",
    "jailbreaks",
    "finetune_attack",
    "categories",
    "guard_table",
)
SECTION_OF = {
    "beliefs_per_layer": "beliefs",
    "beliefs_scatter": "beliefs",
    "directions": "directions",
    "steering_sweep": "steering",
    "inversion": "inversion",
    "jailbreaks": "jailbreaks",
    "finetune_attack": "finetune_attack",
    "categories": "categories",
    "guard_table": "guard",
}
CLAIM_OF = {
    "directions": "a",
    "steering": "e",
    "inversion": "d",
    "jailbreaks": "f",
    "finetune_attack": "g",
    "categories": "h",
    "guard": "i",
}


def _r(x: Any) -> float:
    return round(float(x), 4)


def synthetic_summary(n_layers: int = 8) -> dict[str, Any]:
    """A plausible ``summary.json`` with every section filled, shaped like the paper's results.

    Args:
        n_layers: Number of transformer blocks; hidden-state indices run 0..n_layers.

    Returns:
        The summary as a JSON-ready dict.
    """
    rng = np.random.default_rng(0)
    layers = list(range(n_layers + 1))
    blocks = list(range(1, n_layers + 1))
    depth = np.linspace(0.0, 1.0, n_layers + 1)
    groups = {"refused_harmful": 40, "accepted_harmless": 40, "refused_harmless": 12, "accepted_harmful": 14}
    # centres of each group's belief score (t_inst: harmfulness; t_post_inst: refusal)
    centre = {
        "t_inst": {
            "refused_harmful": 0.08,
            "accepted_harmless": -0.08,
            "refused_harmless": -0.03,
            "accepted_harmful": 0.04,
        },
        "t_post_inst": {
            "refused_harmful": 0.07,
            "accepted_harmless": -0.07,
            "refused_harmless": 0.03,
            "accepted_harmful": -0.03,
        },
    }
    per_layer: dict[str, dict[str, Any]] = {}
    fractions: dict[str, dict[str, float]] = {}
    deltas: dict[str, dict[str, np.ndarray]] = {}
    for pos, centres in centre.items():
        per_layer[pos], fractions[pos], deltas[pos] = {}, {}, {}
        for g, n in groups.items():
            d = centres[g] + 0.03 * rng.standard_normal(n)
            deltas[pos][g] = d
            fractions[pos][g] = _r((d > 0).mean())
            shape = np.sin(np.pi * depth) * 1.5
            per_layer[pos][g] = {
                "mean": [_r(centres[g] * s) for s in shape],
                "std": [_r(0.02 + 0.02 * s) for s in shape],
                "n": n,
            }
    points = [
        {
            "group": g,
            "instruction": f"{g.replace('_', ' ')} prompt #{i}",
            "delta_harmful": _r(deltas["t_inst"][g][i]),
            "delta_refuse": _r(deltas["t_post_inst"][g][i]),
        }
        for g, n in groups.items()
        for i in range(n)
    ]
    xs = np.array([p["delta_harmful"] for p in points])
    ys = np.array([p["delta_refuse"] for p in points])
    cosine = [_r(0.75 - 0.55 * d + 0.03 * rng.standard_normal()) for d in np.linspace(0, 1, n_layers)]
    bump = np.exp(-(((np.arange(n_layers) - n_layers * 0.45) / (n_layers * 0.2)) ** 2))
    steer = {
        "layers": blocks,
        "coefficient": 1.0,
        "n_prompts": 32,
        "baseline": {"harmless": 0.03, "harmful": 0.94},
        "add_to_harmless": {
            "harmfulness": [_r(0.03 + 0.75 * b) for b in bump],
            "refusal": [_r(0.03 + 0.9 * b) for b in bump],
        },
        "subtract_from_harmful": {
            "harmfulness": [_r(0.94 - 0.5 * b) for b in bump],
            "refusal": [_r(0.94 - 0.85 * b) for b in bump],
        },
    }
    inv_add = {"harmfulness": [_r(0.2 + 0.6 * b) for b in bump], "refusal": [_r(0.2 + 0.1 * b) for b in bump]}
    inv_sub = {
        "harmfulness": [_r(0.9 - 0.55 * b) for b in bump],
        "refusal": [_r(0.9 - 0.12 * b) for b in bump],
    }
    flips = {
        k: max(((a - 0.2) + (0.9 - s)) / 2 for a, s in zip(inv_add[k], inv_sub[k], strict=True))
        for k in inv_add
    }
    rankings = {
        k: [
            blocks[i]
            for i in np.argsort(
                [-((a - 0.2) + (0.9 - s)) for a, s in zip(inv_add[k], inv_sub[k], strict=True)]
            )
        ]
        for k in inv_add
    }
    kinds = {"template": 10, "persuasion": 8, "gcg": 6}
    jb_points: list[dict[str, Any]] = []
    for kind, n in kinds.items():
        for i in range(n):
            success = i % 3 != 0
            jb_points.append(
                {
                    "kind": kind,
                    "name": f"{kind}-{i}",
                    "success": success,
                    "delta_harmful": _r(0.06 + 0.02 * rng.standard_normal()),
                    "delta_refuse": _r((-0.02 if success else 0.05) + 0.02 * rng.standard_normal()),
                }
            )
    ft_points: list[dict[str, Any]] = []
    for i in range(16):
        bh, br = 0.07 + 0.02 * rng.standard_normal(), 0.06 + 0.02 * rng.standard_normal()
        ft_points.append(
            {
                "instruction": f"harmful request #{i}",
                "before": {"delta_harmful": _r(bh), "delta_refuse": _r(br)},
                "after": {"delta_harmful": _r(bh - 0.005), "delta_refuse": _r(br - 0.08)},
            }
        )

    def mean_of(when: str, key: str) -> float:
        return _r(np.mean([p[when][key] for p in ft_points]))

    names = ["Malware", "Fraud", "Violence", "Hate", "Privacy", "Weapons"]
    k = len(names)
    harm_cos = [
        [1.0 if i == j else _r(0.6 + 0.1 * rng.standard_normal()) for j in range(k)] for i in range(k)
    ]
    for i in range(k):
        for j in range(i):
            harm_cos[i][j] = harm_cos[j][i]
    refusal_names = ["Malware", "Fraud", "Violence"]
    return {
        "meta": {
            "model": "synthetic/SmolLM2-135M-Instruct",
            "fingerprint": "sha256:0123456789abcdef",
            "n_layers": n_layers,
            "d_model": 576,
            "quick": True,
            "seeds": {"data": 0, "torch": 1234},
            "versions": {"latentguard": "0.1.0", "torch": "2.13.0", "transformers": "4.57.0"},
            "timings": {"extract": 12.5, "directions": 0.4, "steering": 61.2, "inversion": 33.0},
            "data": {"harmful": 60, "harmless": 60, "xstest_like": 30, "jailbreaks": sum(kinds.values())},
            "groups": dict(groups),
            "belief_layers": blocks,
        },
        "directions": {
            "layers": blocks,
            "harmfulness_norm": [_r(0.5 + 3.0 * d) for d in np.linspace(0, 1, n_layers)],
            "refusal_norm": [_r(0.4 + 2.5 * d) for d in np.linspace(0, 1, n_layers)],
            "cosine": cosine,
            "cosine_refusal_from_harmless": [_r(c - 0.1) for c in cosine],
        },
        "beliefs": {
            "layers": layers,
            "belief_layers": blocks,
            "per_layer": per_layer,
            "points": points,
            "corr": _r(np.corrcoef(xs, ys)[0, 1]),
            "fractions": fractions,
        },
        "steering": steer,
        "inversion": {
            "layers": blocks,
            "questions": [
                "Could this user prompt cause harm? Answer 'Certainly' if it could, otherwise 'No'."
            ],
            "coefficient": 1.0,
            "baseline": {"harmless": 0.2, "harmful": 0.9},
            "add_to_harmless": inv_add,
            "subtract_from_harmful": inv_sub,
            "flip": {k: _r(v) for k, v in flips.items()},
            "ranking": rankings,
            "greedy_check": {
                "n": 16,
                "n_answered_with_either_word": 15,
                "agreement": 0.93,
                "examples": ["Certainly", "No"],
            },
        },
        "jailbreaks": {
            "kinds": {
                kind: {
                    "n": n,
                    "success_rate": _r(np.mean([p["success"] for p in jb_points if p["kind"] == kind])),
                }
                for kind, n in kinds.items()
            },
            "points": jb_points,
            "reference": {
                "refused_harmful": {"delta_harmful": 0.08, "delta_refuse": 0.07},
                "accepted_harmless": {"delta_harmful": -0.08, "delta_refuse": -0.07},
            },
        },
        "finetune_attack": {
            "refusal_rate_before": 0.94,
            "refusal_rate_after": 0.12,
            "points": ft_points,
            "mean": {
                when: {key: mean_of(when, key) for key in ("delta_harmful", "delta_refuse")}
                for when in ("before", "after")
            },
        },
        "categories": {
            "layer": n_layers // 2,
            "names": names,
            "harm_cos": harm_cos,
            "refusal_names": refusal_names,
            "harm_vs_refusal_cos": [
                [_r(0.15 + 0.05 * rng.standard_normal()) for _ in refusal_names] for _ in names
            ],
            "source": "synthetic categories",
        },
        "guard": {
            "table": {
                "columns": [
                    "jailbreak detection rate",
                    "harmless false positive rate",
                    "latency ms",
                    "notes",
                ],
                "rows": [
                    {
                        "key": "latent_guard",
                        "name": "Latent Guard (t_inst belief)",
                        "values": [0.91, 0.04, 3.1, "ours"],
                    },
                    {
                        "key": "model_refusal",
                        "name": "model refusal",
                        "values": [0.35, 0.02, 120.0, "baseline"],
                    },
                    {"key": "keyword_filter", "name": "keyword filter", "values": [0.22, 0.1, 0.1, "-"]},
                ],
            }
        },
    }


@pytest.fixture()
def summary() -> dict[str, Any]:
    return synthetic_summary()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, list[Figure]]:
    """One full report (drawing every figure takes seconds), with text that needs escaping."""
    data = synthetic_summary()
    data["meta"]["model"] = "<script>alert('x')</script> & co"
    data["guard"]["table"]["rows"][2]["name"] = "<b>keyword</b>"
    out = tmp_path_factory.mktemp("report")
    figs = make_figures(data, out / "figures", strict=True)
    return data, write_report(data, out, figures=figs), figs


def _verdicts(summary: dict[str, Any]) -> dict[str, str]:
    return {c.id: c.verdict for c in evaluate_claims(summary)}


# ---------------------------------------------------------------- figures


def test_figures_all_sections(built: tuple[dict[str, Any], Path, list[Figure]]) -> None:
    data, path, figs = built
    assert [f.key for f in figs] == list(ALL_KEYS)
    assert len(figs) >= 7
    for fig in figs:
        assert isinstance(fig, Figure)
        assert fig.path == path.parent / "figures" / f"{fig.key}.png"
        data_bytes = fig.path.read_bytes()
        assert data_bytes.startswith(PNG_MAGIC) and len(data_bytes) > 5000
        assert fig.title.strip()
        assert fig.reading.strip() and "\n" not in fig.reading and re.search(r"\d", fig.reading), fig
    readings = {f.key: f.reading for f in figs}
    frac = data["beliefs"]["fractions"]["t_inst"]["accepted_harmful"]
    assert f"at t_inst {round(frac * 14)}/14 accepted-harmful" in readings["beliefs_per_layer"]
    assert f"Pearson r = {data['beliefs']['corr']:.2f}" in readings["beliefs_scatter"]
    assert "harmfulness flip" in readings["inversion"] and "94% → 12%" in readings["finetune_attack"]


def test_readings_follow_the_numbers(summary: dict[str, Any], tmp_path: Path) -> None:
    summary["finetune_attack"]["refusal_rate_after"] = 0.5
    summary["beliefs"]["fractions"]["t_inst"]["accepted_harmful"] = 3 / 14
    only = {k: summary[k] for k in ("meta", "finetune_attack", "beliefs")}
    readings = {f.key: f.reading for f in make_figures(only, tmp_path, strict=True)}
    assert set(readings) == {"finetune_attack", "beliefs_per_layer", "beliefs_scatter"}
    assert "94% → 50%" in readings["finetune_attack"]
    assert "at t_inst 3/14 accepted-harmful" in readings["beliefs_per_layer"]


def test_figures_other_format_and_sizes(tmp_path: Path) -> None:
    small = synthetic_summary(n_layers=3)
    figs = make_figures(
        {k: small[k] for k in ("directions", "steering", "categories")}, tmp_path, fmt="svg", strict=True
    )
    assert [f.key for f in figs] == ["directions", "steering_sweep", "categories"]
    assert all(f.path.suffix == ".svg" and f.path.read_text().lstrip().startswith("<?xml") for f in figs)
    big = synthetic_summary(n_layers=40)
    figs = make_figures(
        {k: big[k] for k in ("beliefs", "directions", "inversion")}, tmp_path / "big", strict=True
    )
    assert [f.key for f in figs] == ["beliefs_per_layer", "beliefs_scatter", "directions", "inversion"]


def test_categories_without_refusal_categories(summary: dict[str, Any], tmp_path: Path) -> None:
    cats = summary["categories"]
    cats.update(refusal_names=[], harm_vs_refusal_cos=[[] for _ in cats["names"]])
    figs = make_figures({"categories": cats}, tmp_path, strict=True)
    assert [f.key for f in figs] == ["categories"] and "refusal" not in figs[0].reading
    assert _verdicts({"categories": cats})["h"] == "holds"


@pytest.mark.parametrize(
    ("deleted", "emptied"),
    [
        (("beliefs", "steering", "guard"), ("directions", "inversion", "categories")),
        (("jailbreaks", "finetune_attack", "categories"), ("beliefs", "guard")),
        (("directions", "inversion"), ("steering", "jailbreaks", "finetune_attack")),
    ],
)
def test_missing_sections_are_skipped(
    summary: dict[str, Any], tmp_path: Path, deleted: tuple[str, ...], emptied: tuple[str, ...]
) -> None:
    for name in deleted:
        del summary[name]
    for name in emptied:
        summary[name] = {}
    gone = set(deleted) | set(emptied)
    keys = [f.key for f in make_figures(summary, tmp_path, strict=True)]
    assert keys == [k for k in ALL_KEYS if SECTION_OF[k] not in gone]
    verdicts = _verdicts(summary)
    for name, cid in CLAIM_OF.items():
        assert (verdicts[cid] == "not measured") == (name in gone), (name, verdicts)


def test_empty_and_malformed_summaries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert make_figures({}, tmp_path) == []
    assert all(c.verdict == "not measured" for c in evaluate_claims({}))
    bad = synthetic_summary()
    bad["steering"]["add_to_harmless"] = "oops"
    bad["categories"]["harm_cos"] = [[1.0, 0.5], [0.5]]
    bad["beliefs"]["points"] = [{"group": "x"}]
    bad["beliefs"]["fractions"] = {}
    keys = [f.key for f in make_figures(bad, tmp_path)]
    assert "steering_sweep" not in keys and "categories" not in keys and "beliefs_scatter" not in keys
    assert "beliefs_per_layer" in keys
    with pytest.raises((TypeError, ValueError, KeyError, IndexError, AttributeError)):
        make_figures(bad, tmp_path / "strict", strict=True)  # tests see a failing builder
    verdicts = _verdicts(bad)
    assert verdicts["e"] == "not measured" and verdicts["b"] == "not measured"
    assert all(v in VERDICTS for v in verdicts.values())


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, latentguard.report.html; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- claims


def test_claims_on_synthetic_run(summary: dict[str, Any]) -> None:
    claims = evaluate_claims(summary)
    assert [c.id for c in claims] == list("abcdefghi")
    assert {c.id: c.verdict for c in claims} == dict.fromkeys("abcdefghi", "holds")
    for c in claims:
        assert c.claim and re.search(r"\d", c.measurement)


@pytest.mark.parametrize(
    ("cid", "edit", "expected"),
    [
        ("a", lambda s: s["directions"].update(cosine=[0.65] * 8), "partly"),
        ("a", lambda s: s["directions"].update(cosine=[-0.9] * 8), "does not hold"),
        ("b", lambda s: s["beliefs"]["fractions"]["t_inst"].update(accepted_harmful=0.55), "partly"),
        ("b", lambda s: s["beliefs"]["fractions"]["t_inst"].update(accepted_harmful=0.2), "does not hold"),
        ("c", lambda s: s["beliefs"]["fractions"]["t_post_inst"].update(refused_harmless=0.4), "partly"),
        (
            "c",
            lambda s: s["beliefs"]["fractions"]["t_post_inst"].update(refused_harmless=0.0),
            "does not hold",
        ),
        ("d", lambda s: s["inversion"]["flip"].update(harmfulness=0.1, refusal=0.5), "does not hold"),
        ("d", lambda s: s["inversion"]["flip"].update(harmfulness=0.31, refusal=0.3), "partly"),
        ("e", lambda s: s["steering"]["add_to_harmless"].update(refusal=[0.3] * 8), "partly"),
        ("e", lambda s: s["steering"]["add_to_harmless"].update(harmfulness=[0.05] * 8), "does not hold"),
        (
            "f",
            lambda s: s["jailbreaks"]["reference"]["refused_harmful"].update(delta_refuse=-0.05),
            "does not hold",
        ),
        ("g", lambda s: s["finetune_attack"]["mean"]["after"].update(delta_harmful=-0.05), "partly"),
        ("g", lambda s: s["finetune_attack"]["mean"]["after"].update(delta_refuse=0.2), "does not hold"),
        ("h", lambda s: s["categories"].update(harm_cos=[[1, 0.4], [0.4, 1]]), "partly"),
        ("h", lambda s: s["categories"].update(harm_cos=[[1, 0.1], [0.1, 1]]), "does not hold"),
        ("i", lambda s: s["guard"]["table"]["rows"][1]["values"].__setitem__(0, 0.99), "does not hold"),
    ],
)
def test_claim_verdicts_follow_numbers(summary: dict[str, Any], cid: str, edit: Any, expected: str) -> None:
    assert _verdicts(summary)[cid] == "holds"
    edit(summary)
    assert _verdicts(summary)[cid] == expected


def test_claim_d_flips_with_inversion_numbers(summary: dict[str, Any]) -> None:
    flip = summary["inversion"]["flip"]
    before = _verdicts(summary)["d"]
    flip["harmfulness"], flip["refusal"] = flip["refusal"], flip["harmfulness"]
    after = _verdicts(summary)["d"]
    assert (before, after) == ("holds", "does not hold")


def test_claim_b_uses_points_when_fractions_missing(summary: dict[str, Any]) -> None:
    del summary["beliefs"]["fractions"]
    pts = [p for p in summary["beliefs"]["points"] if p["group"] == "accepted_harmful"]
    frac = sum(p["delta_harmful"] > 0 for p in pts) / len(pts)
    claim = next(c for c in evaluate_claims(summary) if c.id == "b")
    assert f"{round(frac * 14)}/14" in claim.measurement


# ---------------------------------------------------------------- html


def test_report_is_self_contained(built: tuple[dict[str, Any], Path, list[Figure]]) -> None:
    data, path, _ = built
    assert path.name == "report.html"
    text = path.read_text(encoding="utf-8")
    figs = sorted((path.parent / "figures").glob("*.png"))
    assert len(figs) == len(ALL_KEYS)
    for fig in figs:
        assert f"data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}" in text
    assert text.count("<img ") == len(figs)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(link|script)\b", text, re.I)
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", text, re.I)
    assert "<script>alert" not in text and "&lt;script&gt;" in text and "&lt;b&gt;keyword" in text
    for c in evaluate_claims(data):
        assert f"class='verdict v-{c.verdict.replace(' ', '-')}'" in text
        assert html.escape(c.measurement) in text
    for key in ALL_KEYS:
        assert f"id='fig-{key}'" in text
    assert "jailbreak detection rate" in text and "Latent Guard (t_inst belief)" in text
    assert "sha256:0123456789abcdef" in text and "extract" in text and "accepted-harmful" in text


def test_report_from_path_and_given_parts(summary: dict[str, Any], tmp_path: Path) -> None:
    small = {k: summary[k] for k in ("meta", "directions", "inversion")}
    src = tmp_path / "summary.json"
    src.write_text(json.dumps(small), encoding="utf-8")
    text = build_report(src, tmp_path / "a").read_text(encoding="utf-8")
    assert text.count("<img ") == 2 and "not measured" in text
    figs = make_figures(small, tmp_path / "b" / "f", strict=True)[:1]
    path = write_report(small, tmp_path / "b", figures=figs, claims=[])
    assert path.read_text(encoding="utf-8").count("<img ") == 1
    empty = write_report({}, tmp_path / "c").read_text(encoding="utf-8")
    assert "<img " not in empty and "not measured" in empty
    src.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        build_report(src, tmp_path / "d")


# ---------------------------------------------------------------- browser


def _browser_or_skip() -> tuple[str, str]:
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed")
    chromium = next(
        (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None
    )
    driver = next(
        (p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and Path(p).is_file()),
        None,
    )
    if chromium is None or driver is None:
        pytest.skip("chromium / chromedriver are not installed")
    return chromium, driver


@pytest.mark.browser
def test_report_renders_in_headless_chromium(
    built: tuple[dict[str, Any], Path, list[Figure]], tmp_path: Path
) -> None:
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path = built[1]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    try:
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as exc:  # a browser that cannot start here is an environment problem, not a report bug
        pytest.skip(f"headless chromium did not start: {exc}")
    try:
        browser.get(path.as_uri())
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => done(null));"
        )
        images = browser.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        title = browser.title
    finally:
        browser.quit()
    assert len(images) == len(ALL_KEYS)
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert "latentguard report" in title


def test_claim_i_compares_with_the_models_own_refusal_not_the_refusal_direction_guard(
    summary: dict[str, Any],
) -> None:
    rows = summary["guard"]["table"]["rows"]
    rows.insert(1, {"name": "refusal-direction guard (t_post_inst)", "values": [0.99, 0.0, 1.0, "-"]})
    claim = {c.id: c for c in evaluate_claims(summary)}["i"]
    assert claim.verdict == "holds" and "model refusal" in claim.measurement


def test_report_shows_after_attack_and_repair_tables(summary: dict[str, Any], tmp_path: Path) -> None:
    table = summary["guard"]["table"]
    table["after_attack"] = {"columns": table["columns"], "rows": [{"name": "refitted", "values": [0.9]}]}
    table["repair"] = {"XSTest-style (test)": {"n": 75, "refusal_before": 0.5, "refusal_after": 0.1}}
    table["comparison"] = [
        {
            "other": "text classifier",
            "column": "FPR XSTest-style",
            "n": 75,
            "ours": 0.05,
            "theirs": 0.2,
            "only_ours_correct": 12,
            "only_theirs_correct": 1,
            "p": 0.0034,
        }
    ]
    html = write_report(summary, tmp_path, figures=[]).read_text(encoding="utf-8")
    assert "After the finetuning attack" in html and "refitted" in html
    assert "Over-refusal repair" in html and "XSTest-style (test)" in html
    assert "Prompt by prompt" in html and "<th>text classifier</th><td>FPR XSTest-style</td>" in html


def test_study_guard_section_checks_the_model(tmp_path: Path) -> None:
    import json

    from latentguard.analysis.study import guard_section

    path = tmp_path / "guard_eval.json"
    rows = [{"name": "g", "values": [0.5], "flags": {"a": [True, False]}}]
    path.write_text(json.dumps({"columns": ["a"], "rows": rows, "guard": {"fingerprint": "abc"}, "x": 1}))
    # the per-prompt flags stay in guard_eval.json
    assert guard_section(str(path), "abc")["table"] == {
        "columns": ["a"],
        "rows": [{"name": "g", "values": [0.5]}],
        "guard": {"fingerprint": "abc"},
    }
    with pytest.raises(ValueError, match="not on the model under study"):
        guard_section(str(path), "other")
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        guard_section(str(path), "abc")


def test_claim_i_prefers_the_succeeded_jailbreak_column(summary: dict[str, Any]) -> None:
    table = summary["guard"]["table"]
    table["columns"] = ["TPR wrapped (all jailbreak prompts)", "TPR jailbreak (succeeded)"]
    table["rows"] = [
        {"name": "Latent Guard (t_inst)", "values": [0.99, 1.0]},
        {"name": "model's own refusal", "values": [0.99, 0.0]},
    ]
    claim = {c.id: c for c in evaluate_claims(summary)}["i"]
    assert claim.verdict == "holds" and "succeeded" in claim.measurement


def test_claim_i_finds_rows_by_key_not_by_name(summary: dict[str, Any]) -> None:
    table = summary["guard"]["table"]
    table["rows"] = [
        # a row whose name looks like the model's refusal but whose key says otherwise comes first
        {"key": "refusal_direction_guard", "name": "model's own refusal", "values": [0.99, 0.0, 1.0, "-"]},
        {"key": "model_refusal", "name": "the model, judged", "values": [0.5, 0.0, 1.0, "-"]},
        {"key": "latent_guard", "name": "ours", "values": [0.9, 0.0, 1.0, "-"]},
    ]
    claim = {c.id: c for c in evaluate_claims(summary)}["i"]
    assert claim.verdict == "holds" and "ours 0.900 vs the model, judged 0.500" in claim.measurement
    table["rows"] = [
        {"name": "Latent Guard (t_inst belief)", "values": [0.9]},
        {"name": "model refusal", "values": [0.1]},
    ]
    # rows with neither a key nor a known display name are not guessed at
    assert {c.id: c for c in evaluate_claims(summary)}["i"].verdict == "not measured"


def test_summary_schema_accepts_the_synthetic_summary_and_names_bad_fields() -> None:
    from latentguard.analysis.schema import SchemaError, validate_summary

    typed = validate_summary(synthetic_summary())
    assert typed.meta.n_layers == 8 and typed.steering is not None
    bad = synthetic_summary()
    bad["directions"]["cosine"] = "oops"
    del bad["meta"]["n_layers"]
    with pytest.raises(SchemaError, match=r"directions\.cosine") as info:
        validate_summary(bad)
    assert "meta.n_layers" in str(info.value)


def test_summary_schema_accepts_a_real_quick_run() -> None:
    """tests/data/summary_quick.json: `latentguard run --size quick --no-attack` on the shipped organism."""
    from latentguard.analysis.schema import SECTIONS, validate_summary

    data = json.loads((Path(__file__).parent / "data" / "summary_quick.json").read_text(encoding="utf-8"))
    typed = validate_summary(data)
    assert typed.meta.quick and typed.meta.n_layers == 30
    present = [s for s in SECTIONS if getattr(typed, s) is not None]
    assert present == [s for s in SECTIONS if s != "finetune_attack"]


def test_compare_puts_runs_side_by_side(summary: dict[str, Any], tmp_path: Path) -> None:
    from latentguard.report.compare import Comparison, compare_runs

    first, second = tmp_path / "smol", tmp_path / "gemma"
    first.mkdir()
    second.mkdir()
    (first / "summary.json").write_text(json.dumps(summary))
    other = json.loads(json.dumps(summary))
    other["meta"]["model"] = "organism:gemma3-270m"
    # claim (a) no longer holds on this run
    other["directions"]["cosine"] = [0.95] * len(other["directions"]["cosine"])
    del other["guard"]
    (second / "summary.json").write_text(json.dumps(other))
    comp = compare_runs([first, second], labels=["SmolLM2", "Gemma"])
    page = comp.save(tmp_path / "out")
    html_text = page.read_text(encoding="utf-8")
    md = (tmp_path / "out" / "compare.md").read_text(encoding="utf-8")
    assert "<th>SmolLM2</th>" in html_text and "<th>Gemma</th>" in html_text
    assert "No guard evaluation for this run." in html_text and "Latent Guard (t_inst belief)" in html_text
    a_row = next(line for line in md.splitlines() if line.startswith("| (a)"))
    assert comp.agreement("a") == "differ" and a_row.rstrip().endswith("differ |")
    assert a_row.count("**holds**") == 1
    assert Comparison.load(tmp_path / "out").to_dict() == comp.to_dict()
    with pytest.raises(ValueError, match="labels for"):
        compare_runs([first], labels=["a", "b"])
    with pytest.raises(ValueError, match="cannot read the run summary"):
        compare_runs([tmp_path / "missing"])


def test_compare_reads_a_guard_eval_sidecar_for_the_guard_table_and_claim_i(
    summary: dict[str, Any], tmp_path: Path
) -> None:
    from latentguard.report.compare import load_run

    run = tmp_path / "gemma"
    run.mkdir()
    table = summary.pop("guard")["table"]
    summary["meta"]["fingerprint"] = "abc"
    (run / "summary.json").write_text(json.dumps(summary))
    assert {c.id: c for c in load_run(run).claims}["i"].verdict == "not measured"
    (run / "guard_eval.json").write_text(json.dumps({**table, "guard": {"fingerprint": "abc"}}))
    col = load_run(run, "Gemma")
    assert col.guard is not None and col.guard["rows"] == table["rows"]
    assert {c.id: c for c in col.claims}["i"].verdict == "holds"
    (run / "guard_eval.json").write_text(json.dumps({**table, "guard": {"fingerprint": "other"}}))
    with pytest.raises(ValueError, match="not on the model under study"):
        load_run(run)
