"""Build the model organism and measure refusal rates of base, organism and attacked organism.

Prints the wall time of ``align`` and ``attack``, then a table of refusal rates (learned judge) on
three sets the organism never saw: unseen harmful (HarmBench test), unseen everyday (Alpaca val)
and XSTest-style safe prompts -- from ../shared/data, or the built-in held-out splits when absent.

    python benchmarks/organism.py [--n 100] [--out runs/bench-organism] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import emit, shared_instructions

from latentguard.data import builtin
from latentguard.judge import load_judge
from latentguard.models import load
from latentguard.organism import AlignConfig, AttackConfig, align, attack, refusal_rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100, help="prompts per evaluation set")
    ap.add_argument("--out", default="runs/bench-organism")
    ap.add_argument("--reuse", action="store_true", help="reuse models already built under --out")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    org_dir, att_dir = out / "organism", out / "attacked"
    if not (args.reuse and (org_dir / "organism.json").is_file()):
        t0 = time.perf_counter()
        rep = align("default", org_dir, AlignConfig(), evaluate=False)
        emit(
            f"align_wall_s={time.perf_counter() - t0:.1f} (base answers {rep['seconds']['base_answers']} s, "
            f"train {rep['seconds']['train']} s, {rep['steps']} steps)"
        )
    if not (args.reuse and (att_dir / "attack.json").is_file()):
        t0 = time.perf_counter()
        attack(str(org_dir), att_dir, AttackConfig())
        emit(f"attack_wall_s={time.perf_counter() - t0:.1f}")
    sets = {
        "harmful(unseen)": shared_instructions("harmful_harmbench_test", args.n),
        "everyday(unseen)": shared_instructions("harmless_alpaca_val", args.n),
        "xstest_safe": shared_instructions("xstest_safe", args.n),
    }
    if any(v is None for v in sets.values()):
        meta = json.loads((org_dir / "organism.json").read_text())
        sets = {
            "harmful(heldout builtin)": meta["data"]["heldout_harmful"],
            "everyday(heldout builtin)": meta["data"]["heldout_harmless"],
            "xstest_like(builtin)": [e.instruction for e in builtin("xstest_like")],
        }
    judge = load_judge()
    emit(f"judge={judge.name} n_per_set={args.n}")
    table: dict[str, dict[str, float]] = {}
    for name, spec in (("base", "default"), ("organism", str(org_dir)), ("attacked", str(att_dir))):
        lm = load(spec)
        t0 = time.perf_counter()
        rates = refusal_rates(lm, {k: v for k, v in sets.items() if v}, args.max_new_tokens)
        table[name] = {k: v["refusal_rate"] for k, v in rates.items()}
        emit(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s")
    cols = list(next(iter(table.values())))
    emit("model      " + "".join(f"{c:>26}" for c in cols))
    for name, row in table.items():
        emit(f"{name:<11}" + "".join(f"{row[c]:>26.1%}" for c in cols))
    (out / "refusal_table.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
