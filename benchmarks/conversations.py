"""The guard on the last user turn in context: the guard evaluation's conversation table on its own.

Two-turn conversations from the test sets (:func:`latentguard.experiments.guard_eval.conversations.conversation_sets`):
a harmful request (HarmBench test) after a harmless exchange, and a harmless follow-up (Alpaca val) after a
harmful request the model refused. Prints the Latent Guard's TPR on the first and FPR on the second. The
guard is ``--guard`` (e.g. the one ``benchmarks/generalisation.py --out`` saves, fitted on single turns).

    python benchmarks/conversations.py --guard /tmp/guard-full [--n 100]
"""

from __future__ import annotations

import argparse

from _common import emit

from latentguard.data import load_shared
from latentguard.experiments.guard_eval.conversations import conversation_sets
from latentguard.guard.fit import LatentGuard
from latentguard.guard.score import check
from latentguard.models import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--guard", required=True)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    harm, safe = load_shared("harmful_harmbench_test"), load_shared("harmless_alpaca_val")
    if not harm or not safe:
        emit("needs ../shared/data")
        return
    lm = load("organism")
    guard = LatentGuard.load(args.guard, lm)
    later, follow = conversation_sets(
        [r.instruction for r in harm][: args.n], [r.instruction for r in safe][: args.n]
    )
    tpr = sum(v.harmful for v in check(lm, guard, later)) / len(later)
    fpr = sum(v.harmful for v in check(lm, guard, follow)) / len(follow)
    emit(f"{len(later)} + {len(follow)} conversations: TPR harmful last turn after harmless history {tpr:.1%}, "
         f"FPR harmless follow-up after a refused harmful turn {fpr:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
