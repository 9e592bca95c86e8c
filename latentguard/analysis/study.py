"""``latentguard run``: every analysis of the paper on one chat model, with a report.

Stages (each writes its artifacts under the run folder and a section of ``summary.json``):
label -> extract -> directions -> beliefs -> steering -> inversion -> jailbreaks -> finetune_attack
-> categories (then `latentguard run` builds the report from the summary).

Example:
    >>> from latentguard.analysis.study import run_study, StudyConfig
    >>> summary = run_study("organism", "runs/demo", StudyConfig(size="quick"))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentguard.activations import ActivationSet, ExtractConfig, extract
from latentguard.analysis.beliefs import belief_analysis, default_belief_layers, deltas
from latentguard.analysis.schema import SECTIONS
from latentguard.analysis.sweep import SweepConfig, inversion_sweep, steering_sweep, sweep_layers
from latentguard.behaviour import GROUPS, BehaviourGroups, label
from latentguard.data import HARM_CATEGORIES, Example, builtin, inversion_questions, load_shared
from latentguard.directions import (
    Directions,
    cosine_matrix,
    cosine_per_layer,
    diff_in_means,
    harmfulness_direction,
    refusal_direction,
)
from latentguard.io import atomic_write_text
from latentguard.models import LoadedModel, load

logger = logging.getLogger(__name__)


#: The study's size presets, smallest first.
SIZES = ("quick", "demo", "full")


@dataclass(frozen=True)
class StudyConfig:
    """Sizes and switches of a study run.

    ``size`` picks one of three presets for every set and sweep: ``quick`` (CI, a few minutes),
    ``demo`` (``make demo``: every section and figure within a 15-minute budget on 2 CPU cores,
    setup included) and ``full`` (the study as reported). Explicit fields override the preset.
    """

    size: str = field(
        default="full",
        metadata={"help": "preset sizes: quick (CI), demo (make demo) or full", "choices": SIZES},
    )
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    use_shared: bool = field(default=True, metadata={"help": "use ../shared/data sets when present"})
    max_new_tokens: int = field(default=24, metadata={"help": "tokens generated to judge refusals"})
    sweep_stride: int | None = field(default=None, metadata={"help": "layer stride of the sweeps"})
    n_sweep_prompts: int | None = field(default=None, metadata={"help": "prompts per sweep condition"})
    coefficient: float = field(default=1.0, metadata={"help": "steering coefficient (x diff-in-means)"})
    n_jailbreak_instructions: int | None = field(
        default=None, metadata={"help": "harmful instructions wrapped"}
    )
    gcg_prompts: int | None = field(default=None, metadata={"help": "instructions attacked with GCG"})
    gcg_steps: int | None = field(default=None, metadata={"help": "GCG steps per instruction"})
    attack: bool = field(default=True, metadata={"help": "run the finetuning attack stage"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward"})
    guard_eval: str | None = field(
        default=None,
        metadata={
            "help": "guard_eval.json written by `latentguard guard eval` on the same model, shown in the "
            "summary, the claims and the report"
        },
    )

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")

    @property
    def quick(self) -> bool:
        """The CI preset."""
        return self.size == "quick"

    def pick(self, quick: Any, demo: Any, full: Any, override: Any = None) -> Any:
        """``override`` if set, else the value of this run's size preset."""
        if override is not None:
            return override
        return {"quick": quick, "demo": demo, "full": full}[self.size]


def _sample(rows: Sequence[Example], n: int, seed: int, per_category: bool = False) -> list[Example]:
    rng = random.Random(seed)
    if per_category:
        by: dict[str, list[Example]] = {}
        for r in rows:
            by.setdefault(r.category or "", []).append(r)
        k = max(1, n // max(1, len(by)))
        out: list[Example] = []
        for cat in sorted(by):
            items = list(by[cat])
            rng.shuffle(items)
            out += items[:k]
        return out
    items = list(rows)
    rng.shuffle(items)
    return items[:n]


def study_data(cfg: StudyConfig) -> dict[str, Any]:
    """Harmful and harmless instructions for the run, from ../shared/data when present."""
    shared = cfg.use_shared and load_shared("harmful_catqa") is not None
    n_harm = cfg.pick(44, 110, 220)
    if shared:
        catqa = load_shared("harmful_catqa") or []
        hb = load_shared("harmful_harmbench_test") or []
        alp = load_shared("harmless_alpaca_val") or []
        xs = load_shared("xstest_safe") or []
        harmful = _sample(catqa, n_harm, cfg.seed, per_category=True)
        harmful += _sample(hb, cfg.pick(0, 40, 120), cfg.seed)
        harmless = _sample(alp, cfg.pick(24, 60, 160), cfg.seed) + _sample(
            xs, cfg.pick(24, 50, 150), cfg.seed
        )
        source = "shared: CatQA + HarmBench test (harmful), Alpaca val + XSTest safe (harmless)"
    else:
        harmful = _sample(builtin("harmful"), n_harm, cfg.seed, per_category=True)
        harmless = _sample(builtin("harmless"), cfg.pick(24, 60, 120), cfg.seed)
        harmless += _sample(builtin("xstest_like"), cfg.pick(24, 40, 60), cfg.seed)
        source = "builtin: harmful, harmless + xstest_like"
    return {"harmful": harmful, "harmless": harmless, "source": source}


#: What each stage of :func:`run_study` does (logged when it starts).
STAGE_DESCRIPTIONS: dict[str, str] = {
    "load": "load the model",
    "label": "generate answers and judge them: the four behaviour groups",
    "extract": "hidden states at t_inst and t_post_inst, every layer",
    "directions": "harmfulness and refusal directions (difference of means) and their cosine",
    "beliefs": "belief clusters: where each group sits between the harmful and harmless centroids",
    "steering": "steering sweep: add each direction at each layer, judge the answers",
    "inversion": "reply inversion: steer and ask the model what the request was",
    "jailbreaks": "jailbreaks (templates, persuasion, GCG suffixes) and their beliefs",
    "finetune_attack": "finetuning attack: load or build the attacked model, compare beliefs",
    "categories": "per-category harmfulness directions",
    "report": "figures and report.html",
}

#: Seconds each stage took per size preset on the reference machine (2 CPU cores with AMX, the
#: shipped organism, an empty cache, ../shared/data present); the "about" in each stage's log line.
#: ``finetune_attack`` includes building the attacked model (45 s). Other machines differ.
REFERENCE_SECONDS: dict[str, dict[str, float]] = {
    "quick": {
        "load": 3,
        "label": 14,
        "extract": 2,
        "steering": 13,
        "inversion": 7,
        "jailbreaks": 11,
        "finetune_attack": 50,
        "report": 2,
    },
    "demo": {
        "load": 20,
        "label": 34,
        "extract": 7,
        "steering": 37,
        "inversion": 39,
        "jailbreaks": 36,
        "finetune_attack": 59,
        "report": 2,
    },
    "full": {
        "load": 4,
        "label": 87,
        "extract": 16,
        "beliefs": 2,
        "steering": 75,
        "inversion": 141,
        "jailbreaks": 239,
        "finetune_attack": 70,
        "categories": 2,
        "report": 2,
    },
}


class Stages:
    """Times each stage and logs what it does and about how long it takes."""

    def __init__(self, size: str = "full") -> None:
        self.timings: dict[str, float] = {}
        self.expected = REFERENCE_SECONDS.get(size, {})

    def expected_seconds(self) -> float:
        """The reference machine's total for this size (0 where unmeasured)."""
        return float(sum(self.expected.values()))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage."""
        about = self.expected.get(name)
        eta = f" (about {_human(about)} on the reference machine)" if about else ""
        logger.info("stage %s: %s%s ...", name, STAGE_DESCRIPTIONS.get(name, name), eta)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 1)
            logger.info("stage %s done in %.1f s", name, self.timings[name])


def _human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _cached_label(
    lm: LoadedModel, harmful: Sequence[Example], harmless: Sequence[Example], judge: Any, max_new_tokens: int
) -> BehaviourGroups:
    """:func:`label`, cached by model, judge, prompts and generation length (greedy, so deterministic)."""
    from latentguard.activations import prompt_hash
    from latentguard.io import cache_dir

    key = "-".join(
        [
            lm.fingerprint,
            str(getattr(judge, "fingerprint", judge.name)),  # a retrained judge labels afresh
            prompt_hash([e.instruction for e in harmful]),
            prompt_hash([e.instruction for e in harmless]),
            str(max_new_tokens),
        ]
    )
    path = cache_dir() / "labels" / key
    if (path / "groups.json").is_file():
        try:
            return BehaviourGroups.load(path)
        except ValueError as exc:
            logger.warning("recomputing labels: %s", exc)
    groups = label(lm, harmful, harmless, judge=judge, max_new_tokens=max_new_tokens, progress=False)
    groups.save(path)
    return groups


def _acts(lm: LoadedModel, insts: Sequence[str], cfg: StudyConfig) -> ActivationSet:
    return extract(lm, list(insts), ExtractConfig(batch_size=cfg.batch_size, progress=False))


def _group_acts(lm: LoadedModel, groups: BehaviourGroups, cfg: StudyConfig) -> dict[str, ActivationSet]:
    all_insts = [i for g in GROUPS for i in groups.instructions(g)]
    acts = _acts(lm, all_insts, cfg)
    out: dict[str, ActivationSet] = {}
    start = 0
    for g in GROUPS:
        n = len(groups.rows[g])
        out[g] = acts.subset(list(range(start, start + n)))
        start += n
    return out


def _concat(sets: Sequence[ActivationSet]) -> ActivationSet:
    nonempty = [s for s in sets if len(s)]
    return ActivationSet(
        activations=torch.cat([s.activations for s in nonempty]),
        positions=nonempty[0].positions,
        layers=list(nonempty[0].layers),
        instructions=[i for s in nonempty for i in s.instructions],
        fingerprint=nonempty[0].fingerprint,
        meta=dict(nonempty[0].meta),
    )


def _directions_section(
    acts: dict[str, ActivationSet], out: Path
) -> tuple[dict[str, Any], dict[str, Directions]]:
    harmful = _concat([acts["refused_harmful"], acts["accepted_harmful"]])
    harmless = _concat([acts["accepted_harmless"], acts["refused_harmless"]])
    refused = _concat([acts["refused_harmful"], acts["refused_harmless"]])
    accepted = _concat([acts["accepted_harmless"], acts["accepted_harmful"]])
    harm = harmfulness_direction(harmful, harmless)
    ref = refusal_direction(refused, accepted)
    harm.save(out / "directions" / "harmfulness")
    ref.save(out / "directions" / "refusal")
    cos = cosine_per_layer(harm, ref)
    section: dict[str, Any] = {
        "layers": harm.layers,
        "harmfulness_norm": [harm.norms()[i] for i in harm.layers],
        "refusal_norm": [ref.norms()[i] for i in harm.layers],
        "cosine": [cos[i] for i in harm.layers],
        "cosine_refusal_from_harmless": None,
    }
    dirs = {"harmfulness": harm, "refusal": ref}
    if len(acts["refused_harmless"]) >= 5 and len(acts["accepted_harmless"]) >= 5:
        ref_h = diff_in_means(
            acts["refused_harmless"], acts["accepted_harmless"], "t_post_inst", "refusal:harmless"
        )
        ref_h.save(out / "directions" / "refusal_from_harmless")
        c2 = cosine_per_layer(harm, ref_h)
        section["cosine_refusal_from_harmless"] = [c2[i] for i in harm.layers]
        dirs["refusal_from_harmless"] = ref_h
    return section, dirs


def _versions() -> dict[str, str]:
    import transformers

    import latentguard

    return {
        "latentguard": getattr(latentguard, "__version__", "unknown"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def guard_section(path: str, fingerprint: str) -> dict[str, Any]:
    """The guard comparison of a ``guard_eval.json``, checked to come from the model under study."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the guard evaluation {path}: {exc}") from exc
    if not isinstance(table, dict) or not {"columns", "rows"} <= set(table):
        raise ValueError(f"{path} is not a guard_eval.json (no 'columns'/'rows')")
    fitted_on = (table.get("guard") or {}).get("fingerprint")
    if fitted_on and fitted_on != fingerprint:
        raise ValueError(
            f"{path} was measured on model {fitted_on}, not on the model under study ({fingerprint}); "
            "rerun `latentguard guard eval` on this model"
        )
    keep = (
        "columns",
        "rows",
        "after_attack",
        "repair",
        "seed_spread",
        "jailbreaks",
        "groups",
        "data",
        "guard",
        "comparison",
        "robustness",
        "small_data_guard",
        "conversations",
        "categories",
    )
    kept = {k: table[k] for k in keep if k in table}
    # per-prompt decisions stay in guard_eval.json; the summary keeps the numbers
    for part in (kept, kept.get("after_attack")):
        if isinstance(part, dict) and isinstance(part.get("rows"), list):
            part["rows"] = [
                {k: v for k, v in r.items() if k != "flags"} if isinstance(r, dict) else r
                for r in part["rows"]
            ]
    return {"table": kept, "source": str(path)}


def run_study(
    model: str | LoadedModel = "organism",
    out_dir: str | os.PathLike[str] = "runs/study",
    config: StudyConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every analysis and write ``summary.json`` and the group files into ``out_dir``.

    The figures and ``report.html`` are built from the summary by :func:`latentguard.report.html.build_report`
    (``latentguard run`` does both). Torch's global random state is seeded with ``config.seed``
    for the run and restored afterwards (the caller's state is untouched).
    """
    cfg = config or StudyConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _study(model, out_dir, cfg, progress)


def _study(
    model: str | LoadedModel,
    out_dir: str | os.PathLike[str],
    cfg: StudyConfig,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = Stages(cfg.size)
    if st.expected_seconds():
        logger.info(
            "study (%s size): about %s on the reference machine", cfg.size, _human(st.expected_seconds())
        )
    t_start = time.perf_counter()
    summary: dict[str, Any] = {}
    with st.stage("load"):
        lm = load(model) if isinstance(model, str) else model
    from latentguard.judge import load_judge

    judge = load_judge()
    data = study_data(cfg)

    with st.stage("label"):
        groups = label(
            lm,
            data["harmful"],
            data["harmless"],
            judge=judge,
            max_new_tokens=cfg.max_new_tokens,
            progress=False,
        )
        groups.save(out / "groups")
    with st.stage("extract"):
        acts = _group_acts(lm, groups, cfg)
    with st.stage("directions"):
        summary["directions"], dirs = _directions_section(acts, out)
    belief_layers = default_belief_layers(lm.n_layers)
    with st.stage("beliefs"):
        summary["beliefs"], cents = belief_analysis(acts, belief_layers)

    stride = cfg.pick(10, 5, 3, cfg.sweep_stride)
    n_sweep = cfg.pick(6, 10, 16, cfg.n_sweep_prompts)
    sweep_cfg = SweepConfig(
        layers=tuple(sweep_layers(lm.n_layers, stride)),
        coefficient=cfg.coefficient,
        batch_size=cfg.batch_size,
    )
    safe_pool = groups.instructions("accepted_harmless")[:n_sweep]
    harm_pool = groups.instructions("refused_harmful")[:n_sweep]
    main_dirs = {"harmfulness": dirs["harmfulness"], "refusal": dirs["refusal"]}
    with st.stage("steering"):
        summary["steering"] = steering_sweep(lm, main_dirs, safe_pool, harm_pool, judge, sweep_cfg, progress)
    with st.stage("inversion"):
        questions = inversion_questions()[: cfg.pick(1, 2, 3)]
        summary["inversion"] = inversion_sweep(
            lm, main_dirs, safe_pool, harm_pool, questions, sweep_cfg, progress
        )
    with st.stage("jailbreaks"):
        summary["jailbreaks"] = _jailbreaks(lm, groups, cents, belief_layers, judge, cfg)
    if cfg.attack:
        with st.stage("finetune_attack"):
            summary["finetune_attack"] = _finetune(lm, model, groups, cents, belief_layers, judge, cfg, out)
    with st.stage("categories"):
        summary["categories"] = _categories(lm, groups, acts, cfg)

    summary["meta"] = {
        "model": lm.spec,
        "fingerprint": lm.fingerprint,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "quick": cfg.quick,
        "size": cfg.size,
        "config": asdict(cfg),
        "seeds": {"study": cfg.seed},
        "versions": _versions(),
        "data": {
            "source": data["source"],
            "harmful": len(data["harmful"]),
            "harmless": len(data["harmless"]),
        },
        "groups": groups.counts(),
        "judge": groups.judge,
        "belief_layers": belief_layers,
        "timings": st.timings,
    }
    if cfg.guard_eval:
        summary["guard"] = guard_section(cfg.guard_eval, lm.fingerprint)
    summary["meta"]["timings"]["total"] = round(time.perf_counter() - t_start, 1)
    ordered: dict[str, Any] = {k: summary[k] for k in ("meta", *SECTIONS, "guard") if k in summary}
    atomic_write_text(out / "summary.json", json.dumps(ordered, indent=1, ensure_ascii=False))
    return ordered


def _jailbreaks(
    lm: LoadedModel,
    groups: BehaviourGroups,
    cents: dict[str, Any],
    belief_layers: Sequence[int],
    judge: Any,
    cfg: StudyConfig,
) -> dict[str, Any]:
    from latentguard.attacks import (
        GCGConfig,
        gcg_prompts,
        persuasion_prompts,
        template_prompts,
    )
    from latentguard.generation import GenerationConfig, generate

    refused = groups.instructions("refused_harmful")
    n = cfg.pick(3, 6, 12, cfg.n_jailbreak_instructions)
    base = refused[:n]
    # the shared GPTFuzzer templates are long (hundreds of tokens): the quick run uses the built-in ones
    prompts = template_prompts(
        base, use_shared=cfg.use_shared and cfg.size == "full", max_templates=cfg.pick(2, 4, 6)
    )
    prompts += persuasion_prompts(base[: max(1, n // 2)])
    n_gcg = cfg.pick(1, 1, 2, cfg.gcg_prompts)
    if n_gcg:
        gcfg = GCGConfig(
            steps=cfg.pick(4, 10, 20, cfg.gcg_steps), search_width=cfg.pick(16, 32, 48), seed=cfg.seed
        )
        prompts += gcg_prompts(lm, base[:n_gcg], gcfg, cache=True)
    texts = [p.prompt for p in prompts]
    responses = generate(lm, texts, GenerationConfig(max_new_tokens=cfg.max_new_tokens, progress=False))
    # was the request refused? The request is the original instruction, not the attack text around it
    verdicts = judge.judge(responses, [p.instruction for p in prompts])
    acts = _acts(lm, texts, cfg)
    ds = deltas(cents, acts, belief_layers)
    points = []
    kinds: dict[str, dict[str, Any]] = {}
    for p, r, v, d in zip(prompts, responses, verdicts, ds, strict=True):
        points.append({"kind": p.kind, "name": p.name, "success": not v.refused, "response": r[:200], **d})
        k = kinds.setdefault(p.kind, {"n": 0, "n_success": 0})
        k["n"] += 1
        k["n_success"] += int(not v.refused)
    for k in kinds.values():
        k["success_rate"] = k["n_success"] / max(1, k["n"])
    ref = {}
    for g in ("refused_harmful", "accepted_harmless"):
        pts = [p for p in groups_points(groups, g, cents, belief_layers, lm, cfg)]
        ref[g] = {
            "delta_harmful": sum(p["delta_harmful"] for p in pts) / max(1, len(pts)),
            "delta_refuse": sum(p["delta_refuse"] for p in pts) / max(1, len(pts)),
        }
    return {"kinds": kinds, "points": points, "reference": ref}


def groups_points(
    groups: BehaviourGroups,
    group: str,
    cents: dict[str, Any],
    belief_layers: Sequence[int],
    lm: LoadedModel,
    cfg: StudyConfig,
) -> list[dict[str, float]]:
    """Δ scores of one behaviour group (served from the activation cache)."""
    insts = groups.instructions(group)
    if not insts:
        return []
    return deltas(cents, _acts(lm, insts, cfg), belief_layers)


def _finetune(
    lm: LoadedModel,
    model: str | LoadedModel,
    groups: BehaviourGroups,
    cents: dict[str, Any],
    belief_layers: Sequence[int],
    judge: Any,
    cfg: StudyConfig,
    out: Path,
) -> dict[str, Any]:
    from latentguard.generation import GenerationConfig, generate
    from latentguard.models import split_alias
    from latentguard.organism import attack
    from latentguard.organism_aliases import attacked_alias

    alias, base = split_alias(model) if isinstance(model, str) else ("", None)
    if alias == "organism":  # organism[:SPEC] -> the cached attacked[:SPEC]
        attacked_path = attacked_alias(base or "default")
    else:
        attacked_path = out / "attacked_model"
        if not (attacked_path / "attack.json").is_file():
            # attack a fresh copy: LoRA merging changes the weights of the model object it is given
            attack(str(lm.extra.get("path") or lm.spec), attacked_path)
    # the attack merges LoRA into the weights of the model object it is given; reload the original
    attacked = load(str(attacked_path))
    insts = (groups.instructions("refused_harmful") + groups.instructions("accepted_harmful"))[
        : cfg.pick(16, 30, 60)
    ]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, progress=False)
    before_rate = sum(v.refused for v in judge.judge(generate(lm, insts, gen), insts)) / max(1, len(insts))
    after_resp = generate(attacked, insts, gen)
    after_rate = sum(v.refused for v in judge.judge(after_resp, insts)) / max(1, len(insts))
    before = deltas(cents, _acts(lm, insts, cfg), belief_layers)
    after = deltas(cents, _acts(attacked, insts, cfg), belief_layers)
    points = [
        {"instruction": i, "before": b, "after": a} for i, b, a in zip(insts, before, after, strict=True)
    ]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / max(1, len(rows))

    return {
        "attacked_model": str(attacked_path),
        "n": len(insts),
        "refusal_rate_before": before_rate,
        "refusal_rate_after": after_rate,
        "points": points,
        "mean": {
            "before": {
                "delta_harmful": mean(before, "delta_harmful"),
                "delta_refuse": mean(before, "delta_refuse"),
            },
            "after": {
                "delta_harmful": mean(after, "delta_harmful"),
                "delta_refuse": mean(after, "delta_refuse"),
            },
        },
    }


def _categories(
    lm: LoadedModel, groups: BehaviourGroups, acts: dict[str, ActivationSet], cfg: StudyConfig
) -> dict[str, Any]:
    harm_rows = groups.rows["refused_harmful"] + groups.rows["accepted_harmful"]
    harm_acts = _concat([acts["refused_harmful"], acts["accepted_harmful"]])
    cats = [r.get("category") or "" for r in harm_rows]
    keep = [i for i, c in enumerate(cats) if c in HARM_CATEGORIES]
    if len({cats[i] for i in keep}) < 2:
        return {}
    sub = harm_acts.subset(keep)
    sub_cats = [cats[i] for i in keep]
    harmless = _concat([acts["accepted_harmless"], acts["refused_harmless"]])
    layer = int(round(lm.n_layers * 0.6))
    from latentguard.directions import category_directions

    harm_dirs = category_directions(sub, sub_cats, harmless, "t_inst", "harmfulness")
    names, mat = cosine_matrix(harm_dirs, layer)
    refused_rows = [i for i in keep if harm_rows[i]["refused"]]
    ref_dirs = (
        category_directions(
            harm_acts.subset(refused_rows),
            [cats[i] for i in refused_rows],
            acts["accepted_harmless"],
            "t_post_inst",
            "refusal",
        )
        if refused_rows and len(acts["accepted_harmless"])
        else {}
    )
    ref_names = list(ref_dirs)
    cross = [[cosine_per_layer(harm_dirs[h], ref_dirs[r])[layer] for r in ref_names] for h in names]
    return {
        "layer": layer,
        "names": names,
        "harm_cos": mat.tolist(),
        "refusal_names": ref_names,
        "harm_vs_refusal_cos": cross,
        "n_per_category": {c: sub_cats.count(c) for c in names},
        "source": "labelled harmful prompts with CatQA categories",
    }
