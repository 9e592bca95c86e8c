"""The model organism: CPU flags, training step time per precision, build time, refusal rates.

Prints, in order:

1. the CPU flags found and the precision ``align`` picks by default (``latentguard.hardware``);
2. the step time of the default recipe's training in bfloat16 autocast and in float32 (a few steps
   each on the same batches; the ratio is what matters, both are measured in this run);
3. the wall time of a full ``align`` with the default choice (base answers, training, evaluation);
4. refusal rates on three sets the organism never saw (unseen harmful = HarmBench test, unseen
   everyday = Alpaca val, XSTest safe; or the built-in held-out splits without ../shared), judged by
   the keyword (substring) judge and the learned judge, for the base model, the shipped organism
   (when the package ships one), the rebuilt one and the attacked one.

    python benchmarks/organism.py [--n 150] [--out runs/bench-organism] [--reuse] [--other-precision]
    python benchmarks/organism.py --bases default,gemma3-270m     # both organisms, one table

``--bases`` lists the base models (each with its recipe, ``latentguard.organism_aliases.recipe_for``);
the first keeps the historical folder names under ``--out``, the others get ``--out/<base>/``.

``--other-precision`` also builds the organism in the other precision and adds its rates (the two
should agree within a few points: precision is not part of the recipe tag).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit, shared_instructions

from latentguard.data import builtin
from latentguard.generation import GenerationConfig, generate
from latentguard.hardware import cpu_flags, training_precision
from latentguard.judge import load_judge
from latentguard.lora import build_examples, lora_train
from latentguard.models import LoadedModel, load
from latentguard.organism import (
    SHIPPED_DIR,
    AttackConfig,
    align,
    attack,
    organism_from_adapter,
    shipped_organism,
)
from latentguard.organism_aliases import load_base, recipe_for


def step_times(steps: int, base_spec: str = "default") -> dict[str, float]:
    """Seconds per training step of ``base_spec``'s recipe shape, bf16 autocast and fp32."""
    cfg = recipe_for(base_spec)
    base = load(base_spec)
    insts = [e.instruction for e in builtin("harmful")][:64] + [e.instruction for e in builtin("harmless")][
        :64
    ]
    targets = ["I can't help with that request, sorry."] * len(insts)
    examples = build_examples(base, insts, targets, cfg.max_response_tokens)
    out: dict[str, float] = {}

    def train(lm: LoadedModel, n_steps: int, desc: str, bf16: bool) -> None:
        lora_train(
            lm,
            examples,
            steps=n_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            target_modules=cfg.target_modules,
            seed=0,
            desc=desc,
            first_layer=int(round(len(base.layers) * cfg.frozen_fraction)),
            bf16=bf16,
        )

    for name, bf16 in (("bf16", True), ("fp32", False)):
        train(copy.deepcopy(base), 1, "warm-up", bf16)
        lm = copy.deepcopy(base)  # the copy is not timed
        t0 = time.perf_counter()
        train(lm, steps, name, bf16)
        out[name] = (time.perf_counter() - t0) / steps
    return out


def eval_sets(n: int, org_meta: dict[str, Any] | None) -> dict[str, list[str]]:
    """The three unseen sets (../shared/data, else the built-in held-out splits)."""
    shared = {
        "harmful(unseen)": shared_instructions("harmful_harmbench_test", n),
        "everyday(unseen)": shared_instructions("harmless_alpaca_val", n),
        "xstest_safe": shared_instructions("xstest_safe", n),
    }
    if all(v for v in shared.values()):
        return {k: list(v or []) for k, v in shared.items()}
    meta = org_meta or {}
    return {
        "harmful(heldout builtin)": list(meta.get("data", {}).get("heldout_harmful", [])),
        "everyday(heldout builtin)": list(meta.get("data", {}).get("heldout_harmless", [])),
        "xstest_like(builtin)": [e.instruction for e in builtin("xstest_like")][:n],
    }


def bench_base(
    args: argparse.Namespace, base: str, out: Path, default_bf16: bool
) -> dict[str, dict[str, float]]:
    """Build, attack and evaluate the organism of one base model; its rows of the refusal table."""
    tag = "" if base == "default" else f"{base} "
    if args.steps:
        st = step_times(args.steps, base)
        emit(
            f"{tag}step_s bf16={st['bf16']:.2f} fp32={st['fp32']:.2f} "
            f"(bf16/fp32 = {st['bf16'] / st['fp32']:.2f})"
        )
    cfg = recipe_for(base)
    builds: dict[str, Path] = {}
    org_dir = out / "organism"
    if not (args.reuse and (org_dir / "organism.json").is_file()):
        t0 = time.perf_counter()
        rep = align(load_base(base), org_dir, cfg)
        s = rep["seconds"]
        emit(
            f"{tag}align_wall_s={time.perf_counter() - t0:.1f} (base answers {s['base_answers']} s, train "
            f"{s['train']} s, {rep['steps']} steps, eval {s.get('eval')} s; "
            f"{'bf16' if rep['precision']['bf16'] else 'fp32'}; recipe {rep['recipe_tag']})"
        )
    builds["organism(rebuilt)"] = org_dir
    if args.other_precision:
        other = out / "organism-other"
        if not (args.reuse and (other / "organism.json").is_file()):
            t0 = time.perf_counter()
            align(load_base(base), other, dataclasses.replace(cfg, bf16=not default_bf16), evaluate=False)
            emit(f"{tag}align_other_precision_wall_s={time.perf_counter() - t0:.1f}")
        builds[f"organism({'fp32' if default_bf16 else 'bf16'})"] = other
    if base == "default" and shipped_organism() is not None:
        t0 = time.perf_counter()
        organism_from_adapter(SHIPPED_DIR, out / "organism-shipped")
        emit(f"shipped_merge_wall_s={time.perf_counter() - t0:.1f}")
        builds["organism(shipped)"] = out / "organism-shipped"
    if not args.no_attack:
        att_dir = out / "attacked"
        if not (args.reuse and (att_dir / "attack.json").is_file()):
            t0 = time.perf_counter()
            attack(str(org_dir), att_dir, AttackConfig(base_model=base))
            emit(f"{tag}attack_wall_s={time.perf_counter() - t0:.1f}")
        builds["attacked"] = att_dir

    meta = json.loads((org_dir / "organism.json").read_text(encoding="utf-8"))
    sets = eval_sets(args.n, meta)
    judges = [j for j in args.judges.split(",") if j]
    emit(f"judges={judges} n_per_set={[len(v) for v in sets.values()]} max_new_tokens={args.max_new_tokens}")
    table: dict[str, dict[str, float]] = {}
    loaded = [load_judge(j) for j in judges]
    for name, spec in (("base", base), *((k, str(v)) for k, v in builds.items())):
        lm = load(spec)
        t0 = time.perf_counter()
        answers = {
            k: generate(lm, v, GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=32))
            for k, v in sets.items()
        }
        for judge in loaded:
            table[f"{tag}{name} [{judge.name}]"] = {
                k: sum(j.refused for j in judge.judge(answers[k], sets[k])) / max(1, len(sets[k]))
                for k in sets
            }
        emit(f"{tag}{name}: evaluated in {time.perf_counter() - t0:.0f} s")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150, help="prompts per evaluation set")
    ap.add_argument("--out", default="runs/bench-organism")
    ap.add_argument(
        "--bases", default="default", help="comma-separated base models (e.g. default,gemma3-270m)"
    )
    ap.add_argument("--reuse", action="store_true", help="reuse models already built under --out")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="steps timed per precision (0: skip)")
    ap.add_argument("--other-precision", action="store_true", help="also build in the other precision")
    ap.add_argument("--no-attack", action="store_true")
    ap.add_argument("--judges", default="substring,learned")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))
    default = training_precision(torch.device("cpu"), None)
    emit(
        f"cpu_flags={','.join(flags) or '(none of amx/avx512/avx2)'} torch_threads={torch.get_num_threads()}"
    )
    emit(f"default_precision={'bf16' if default.bf16 else 'fp32'} ({default.reason})")
    table: dict[str, dict[str, float]] = {}
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    for i, base in enumerate(bases):
        table |= bench_base(args, base, out if i == 0 else out / base.replace("/", "_"), default.bf16)
    cols = list(dict.fromkeys(c for row in table.values() for c in row))  # first seen first
    emit(f"{'model [judge]':<40}" + "".join(f"{c:>26}" for c in cols))
    for name, row in table.items():
        emit(f"{name:<40}" + "".join(f"{row[c]:>26.1%}" if c in row else f"{'-':>26}" for c in cols))
    (out / "refusal_table.json").write_text(json.dumps(table, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
