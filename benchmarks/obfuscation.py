"""How obfuscated prompts move the Latent Guard, with and without normalisation.

Takes a guard (``--guard``, e.g. the one ``benchmarks/generalisation.py --out`` saves) or fits one on
the organism with default ``guard fit`` options from the guard evaluation's training sets (all of
``../shared/data`` but the test sets). Checks unseen harmful (HarmBench test) and everyday (Alpaca val)
prompts, plain and obfuscated in each way of :data:`latentguard.obfuscate.EVAL_OBFUSCATIONS`, with
``normalize=False`` and ``normalize=True``. Prints TPR / FPR per obfuscation, and the normaliser's
throughput on plain prompts.

    python benchmarks/obfuscation.py [--n 150] [--guard PATH]
"""

from __future__ import annotations

import argparse
import time

from _common import emit

from latentguard.experiments.guard_eval.fits import default_guard
from latentguard.guard.fit import LatentGuard
from latentguard.guard.normalize import normalize
from latentguard.guard.score import check
from latentguard.models import load
from latentguard.obfuscate import EVAL_OBFUSCATIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=150, help="test prompts per class")
    ap.add_argument("--guard", default=None, help="a saved guard (default: fit one)")
    args = ap.parse_args()
    from latentguard.experiments.guard_eval.config import EvalConfig
    from latentguard.experiments.guard_eval.data import guard_data

    data = guard_data(EvalConfig(n_test=args.n))
    if data["source"] != "shared":
        emit("needs ../shared/data")
        return
    lm = load("organism")
    guard = LatentGuard.load(args.guard, lm) if args.guard else default_guard(lm, data)
    harm, safe = data["test_harmful"], data["test_everyday"]
    emit(
        f"guard: {guard.method} layers {guard.layers}; {len(harm)} harmful / {len(safe)} everyday test prompts"
    )
    t0 = time.perf_counter()
    texts = (harm + safe) * 20
    for t in texts:
        normalize(t)
    emit(f"normaliser: {len(texts) / (time.perf_counter() - t0):.0f} plain prompts/s")
    emit(f"{'obfuscation':<18}{'TPR raw':>10}{'FPR raw':>10}{'TPR norm':>10}{'FPR norm':>10}")
    for name, fn in {"plain": (lambda t: t), **EVAL_OBFUSCATIONS}.items():
        h = [fn(t) for t in harm]
        s = [fn(t) for t in safe]
        row = []
        for norm in (False, True):
            row += [
                sum(v.harmful for v in check(lm, guard, h, normalize=norm)) / len(h),
                sum(v.harmful for v in check(lm, guard, s, normalize=norm)) / len(s),
            ]
        emit(f"{name:<18}" + "".join(f"{x:>10.1%}" for x in row))


if __name__ == "__main__":
    main()
