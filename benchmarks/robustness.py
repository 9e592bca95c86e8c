"""The guard evaluation's robustness table on its own (without the rest of ``guard eval``).

The same rows and columns ``latentguard guard eval`` writes under ``robustness``
(:func:`latentguard.experiments.guard_eval.robustness.robustness_table`): the Latent Guard with and
without the normaliser, the text classifier (MiniLM + LR on the same training prompts) and the
organism's own refusal (its answer, judged), on the first ``--n`` harmful (HarmBench test) and
everyday (Alpaca val) test prompts, plain and in each obfuscation. The guard is ``--guard`` (e.g. the
one ``benchmarks/generalisation.py --out`` saves) or fitted with default ``guard fit`` options on the
evaluation's training sets. Writes ``--out`` (JSON) and prints the Markdown table.

    python benchmarks/robustness.py --guard /tmp/guard-full [--n 100] [--out robustness.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import emit

from latentguard.experiments.guard_eval.config import EvalConfig
from latentguard.experiments.guard_eval.data import guard_data
from latentguard.experiments.guard_eval.fits import default_guard, eval_training_set
from latentguard.experiments.guard_eval.format import format_robustness
from latentguard.experiments.guard_eval.robustness import normalised, robustness_table
from latentguard.experiments.guard_eval.rows import LATENT_GUARD, NORMALISED_GUARD, ROW_NAMES
from latentguard.experiments.guard_eval.scorers import activation_scorer, refusal_scorer, text_scorer
from latentguard.guard.fit import LatentGuard
from latentguard.guard.training_set import prompts_that_fit
from latentguard.judge import load_judge
from latentguard.models import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--guard", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = EvalConfig()
    data = guard_data(cfg)
    if data["source"] != "shared":
        emit("needs ../shared/data")
        return
    lm = load("organism")
    guard = LatentGuard.load(args.guard, lm) if args.guard else default_guard(lm, data)
    ts = eval_training_set(data, cfg, None if not cfg.n_suffixed else lm)
    latent = activation_scorer(LATENT_GUARD, ROW_NAMES[LATENT_GUARD], lm, guard, cfg.batch_size)
    scorers = [latent, normalised(latent, NORMALISED_GUARD, ROW_NAMES[NORMALISED_GUARD])]
    text = text_scorer(ts.prompts("harmful"), ts.prompts("harmless"))
    if text is not None:
        scorers.append(text)
    scorers.append(refusal_scorer(lm, load_judge(), cfg, {}))
    table = robustness_table(
        scorers,
        data["test_harmful"][: args.n],
        data["test_everyday"][: args.n],
        progress=emit,
        keep=lambda ps: prompts_that_fit(lm, ps),
    )
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1), encoding="utf-8")
    emit(format_robustness(table))


if __name__ == "__main__":
    main()
